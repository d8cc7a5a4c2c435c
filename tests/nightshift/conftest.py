"""The API served over real HTTP (werkzeug in a thread, on SQLite) for the SDK and CLI tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import update
from werkzeug.serving import make_server

from db.models import Job
from db.services.jobs import add_event
from db.services.registry import record_evaluation, register_model
from db.services.tenants import get_or_create_tenant
from nightshift.cli import main
from nightshift.client import Client
from tests.conftest import make_token

LABELLED_CSV = "review,sentiment\nI loved it,pos\n\"Dull, and far too long\",neg\nFine show,pos\n"


@pytest.fixture
def database_url(sqlite_only_url):
    """SQLite only (the shared `app` fixture then serves it): these tests are about the client side."""
    return sqlite_only_url


@pytest.fixture
def server(app):
    """Serve the app on a free port; yield its base URL."""
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def token(app) -> str:
    return make_token(app, "acme")["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def sdk(server, token) -> Client:
    return Client(server, token, timeout=30)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        import json

        return json.loads(self.out)


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    """An environment with no CLI settings of the developer's own (home, config, URL, token)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "cli-data"))
    for name in ("NIGHTSHIFT_API_URL", "NIGHTSHIFT_TOKEN", "NIGHTSHIFT_CONFIG", "NIGHTSHIFT_API_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def run(server, token, cli_env, capsys):
    """Run `nightshift ARGS` in this process against the server; return its exit code and output."""
    cli_env.setenv("NIGHTSHIFT_API_URL", server)
    cli_env.setenv("NIGHTSHIFT_TOKEN", token)

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    run.server = server
    return run


class Database:
    """The tests' direct view of the app's database: make state the workers would make."""

    def __init__(self, app) -> None:
        self.factory = app.extensions["nightshift"].session_factory
        with self.factory.begin() as session:
            self.tenant_id = get_or_create_tenant(session, "acme").id

    def set_job(self, job_id: int, **values: Any) -> None:
        with self.factory.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values))

    def event(self, job_id: int, type_: str, message: str = "", **fields: Any) -> None:
        with self.factory.begin() as session:
            add_event(session, job_id, type_, message, **fields)

    def model(self, name: str, **fields: Any) -> int:
        with self.factory.begin() as session:
            fields = {"task": "text-classification", "base_model": "tiny-bert", "label_names": ["neg", "pos"],
                      "path": "/nowhere", **fields}
            return register_model(session, tenant_id=self.tenant_id, name=name, **fields).id

    def evaluation(self, model_id: int, dataset_id: int, metrics: dict[str, Any], ref: str) -> int:
        with self.factory.begin() as session:
            return record_evaluation(session, tenant_id=self.tenant_id, model_artifact_id=model_id, model_ref=ref,
                                     dataset_id=dataset_id, split="test", metrics=metrics).id


@pytest.fixture
def database(app) -> Database:
    return Database(app)


@pytest.fixture
def labelled(sdk, tmp_path) -> dict:
    """An uploaded labelled text-classification dataset of three rows."""
    path = tmp_path / "reviews.csv"
    path.write_text(LABELLED_CSV)
    return sdk.upload_dataset(path, text_column="review", label_column="sentiment")
