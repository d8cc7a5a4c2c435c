"""The API process as the stack starts it: gunicorn with api/gunicorn_config.py."""

from __future__ import annotations

import gc

from api.gunicorn_config import post_worker_init
from db.migrate import upgrade
from nightshift.stack import Stack, free_port
from worker.config import Settings


def test_the_stack_serves_the_api_with_its_gunicorn_config(tmp_path, redis_url):
    settings = Settings.from_env(data_dir=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                                 redis_url=redis_url, api_port=free_port(), api_workers=1)
    upgrade(settings.database_url)
    stack = Stack(settings, log_dir=tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    stack.start_process("api")
    try:
        stack.wait_for_api(timeout=60)
    finally:
        stack.stop()


def test_a_worker_keeps_the_loaded_app_out_of_full_collections():
    try:
        post_worker_init(worker=None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
