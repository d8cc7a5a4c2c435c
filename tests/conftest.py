"""Shared fixtures: real SQLite and PostgreSQL databases, a real Redis, the app and its client.

PostgreSQL comes from NIGHTSHIFT_TEST_DATABASE_URL or the local server; off CI a missing server
skips its tests with a message, under CI=true it fails them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from nightshift.stack import EmbeddedRedis
from db.base import Base
from db.migrate import upgrade
from db.session import make_engine, make_session_factory
from db.services.tenants import get_or_create_tenant, issue_token

pytest_plugins = ["tests.process_guard"]

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("NIGHTSHIFT_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _unavailable(message: str):
    if IN_CI:
        pytest.fail(f"{message} (required under CI=true)")
    pytest.skip(message)


def create_postgres_database() -> str:
    """Create an empty, migrated PostgreSQL database; return its URL (skip or fail if no server)."""
    import psycopg

    plain = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"nightshift_test_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(plain, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _unavailable(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    url = f"{PG_ADMIN_URL.rpartition('/')[0]}/{name}"
    upgrade(url)
    return url


def drop_postgres_database(url: str) -> None:
    """Drop a database made by `create_postgres_database`."""
    import psycopg

    plain = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL database for this test session."""
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'nightshift.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request):
    """A migrated database; every test runs once on SQLite and once on PostgreSQL."""
    url = request.getfixturevalue(f"{request.param}_url")
    yield url
    _truncate(url)


@pytest.fixture
def sqlite_only_url(sqlite_url):
    """A migrated SQLite database (for tests whose subject does not depend on the backend)."""
    yield sqlite_url
    _truncate(sqlite_url)


def _truncate(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        # Deleting queued jobs writes their lines' changes (triggers): those rows go last.
        for table in sorted(reversed(Base.metadata.sorted_tables), key=lambda t: t.name == "queue_line_changes"):
            conn.execute(text(f"DELETE FROM {table.name}"))
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server (the embedded one `nightshift up` runs), AOF on."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def session_factory(database_url):
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def job_id(session_factory):
    """A queued evaluate job (two attempts allowed) of tenant "acme"."""
    from db.services.jobs import create_job

    with session_factory() as session, session.begin():
        tenant = get_or_create_tenant(session, "acme")
        job, _ = create_job(session, tenant_id=tenant.id, kind="evaluate", task="text-classification",
                            params={"model": "m", "dataset_id": 1}, queue="cpu", max_attempts=2)
        return job.id


@pytest.fixture
def app(database_url, redis_url, tmp_path):
    from api import create_app

    app = create_app({"database_url": database_url, "redis_url": redis_url, "data_dir": str(tmp_path / "data"),
                      "max_upload_bytes": 5_000_000, "TESTING": True})
    yield app
    app.extensions["nightshift"].engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


def make_token(app, tenant: str, role: str = "member") -> dict[str, str]:
    """Create a tenant (if new) with a token of `role`; return the Authorization header for it."""
    factory = app.extensions["nightshift"].session_factory
    with factory() as session, session.begin():
        raw = issue_token(session, get_or_create_tenant(session, tenant), role=role)
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def auth(app):
    return make_token(app, "acme")


@pytest.fixture
def other_auth(app):
    return make_token(app, "globex")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto's standalone S3 server in its own process: the bucket of a cluster's workers."""
    import subprocess
    import sys

    import requests

    from nightshift.stack import free_port
    from tests.helpers import wait_until

    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as exc:
        _unavailable(f"moto[server] and s3fs are needed for the bucket tests: {exc}")
    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            assert server.poll() is None, f"moto's server exited: {log.read_text()[-2000:]}"
            try:
                return requests.get(endpoint, timeout=2).status_code < 500
            except requests.ConnectionError:
                return False

        wait_until(answers, timeout=60, message="moto's S3 server answers")
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def make_bucket(endpoint: str) -> tuple[str, str]:
    """Create a new, empty bucket on `endpoint`; return (storage URL, storage options as JSON)."""
    import json

    import s3fs

    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    name = f"nightshift-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options, skip_instance_cache=True).mkdir(name)
    return f"s3://{name}/data", json.dumps(options)


@pytest.fixture
def bucket(s3_endpoint) -> tuple[str, str]:
    """A new, empty bucket: (storage URL, storage options as JSON)."""
    return make_bucket(s3_endpoint)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny BERT classifier and tokenizer built from a config, saved to disk."""
    from tests.tiny_models import build_tiny_classifier

    return build_tiny_classifier(tmp_path_factory.mktemp("tiny-model"))
