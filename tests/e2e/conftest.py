"""The whole system as `nightshift up` runs it: embedded Redis, gunicorn, a Celery worker, beat."""

from __future__ import annotations

import os

import pytest

from api.cli import ensure_local_token
from api.client import Client
from api.stack import Stack, free_port
from tests.conftest import create_postgres_database, drop_postgres_database
from worker.config import Settings


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def system(request, tmp_path_factory, tiny_model):
    """Start the stack on SQLite or PostgreSQL; yield (client, settings, stack)."""
    data_dir = tmp_path_factory.mktemp(f"system-{request.param}")
    database_url = (
        create_postgres_database() if request.param == "postgres" else f"sqlite:///{data_dir / 'nightshift.db'}"
    )
    settings = Settings.from_env(
        data_dir=str(data_dir), database_url=database_url, api_port=free_port(), api_workers=1,
        heartbeat_seconds=0.5, lease_seconds=15.0, relay_seconds=0.5, sweep_seconds=2.0,
    )
    stack = Stack(settings)
    try:
        settings = stack.start(redis_url=None)  # stops whatever it started if it fails
        client = Client(settings.base_url, ensure_local_token(settings), timeout=60)
        yield client, settings, stack
    finally:
        stack.stop()
        if request.param == "postgres":
            drop_postgres_database(database_url)
        if os.environ.get("NIGHTSHIFT_TEST_SHOW_LOGS"):
            for log in sorted(stack.log_dir.glob("*.log")):
                print(f"==== {log.name}\n{log.read_text()[-5000:]}")
