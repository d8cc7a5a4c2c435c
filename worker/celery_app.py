"""The Celery application: Redis as a transport only, configured per RELIABILITY.md."""

from __future__ import annotations

from celery import Celery
from celery.signals import beat_init, worker_process_init

from worker.config import Settings


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for `settings`; nothing connects until it is used."""
    app = Celery("nightshift", broker=settings.redis_url, include=["worker.tasks"])
    transport = {"visibility_timeout": settings.visibility_timeout_seconds}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # safe: attempts are capped on the job row
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,  # every job in a fresh process: frees GPU memory
        task_soft_time_limit=settings.soft_time_limit_seconds,
        task_time_limit=settings.hard_time_limit_seconds,
        task_ignore_result=True,
        task_default_queue="cpu",
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone="UTC",
    )
    app.conf.nightshift_settings = settings
    return app


app = make_celery(Settings.from_env())


@worker_process_init.connect
def _init_process(**_kwargs) -> None:
    from worker import state

    state.reset()  # a forked child must not share the parent's database connections
    state.configure_offline()


@beat_init.connect
def _start_maintenance(sender=None, **_kwargs) -> None:
    from worker.maintenance import start_maintenance_thread

    start_maintenance_thread(app)
