"""The Celery application: Redis as a transport only, configured per RELIABILITY.md."""

from __future__ import annotations

import gc

from celery import Celery
from celery.signals import beat_init, worker_init, worker_process_init, worker_ready, worker_shutting_down

from worker.config import JOB_KINDS, Settings


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for `settings`; nothing connects until it is used."""
    from worker.storage import Storage

    Storage.from_settings(settings).check()  # a bad storage setting stops the process now, saying what to fix
    app = Celery("nightshift", broker=settings.redis_url, include=["worker.tasks"])
    transport = {"visibility_timeout": settings.visibility_timeout_seconds}
    if settings.unacked_restore_seconds:
        transport |= {"unacked_restore_interval": settings.unacked_restore_seconds, "unacked_restore_throttle": 1}
    app.conf.update(
        task_acks_late=True,
        # When a job's process dies, the worker's main process hands the job back in SQL at once
        # (worker.recovery.JobRequest) and the outbox wakes a worker; the message itself is done.
        task_reject_on_worker_lost=False,
        # The job row, not a result, tells whether a dead process finished: report the death
        # after 1 s instead of Celery's 10 s wait for a late result.
        worker_lost_wait=1.0,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,  # every job in a fresh process: frees GPU memory
        worker_pool="worker.pool:TaskPool",  # prefork, replacing a finished job's process at once
        # Jobs stop themselves at their soft limit (checkpoint first); Celery's own soft limit is a
        # backstop for code stuck outside Python, and its hard limit kills the process.
        task_annotations={
            f"jobs.{kind}": {
                "soft_time_limit": settings.time_limit_for(kind) + settings.time_limit_grace_seconds // 2,
                "time_limit": settings.hard_time_limit_for(kind),
            }
            for kind in JOB_KINDS
        },
        task_ignore_result=True,
        task_default_queue="cpu",
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        # Flower's task view; the job rows, not these events, are the record (RELIABILITY.md).
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        timezone="UTC",
    )
    app.conf.nightshift_settings = settings
    return app


app = make_celery(Settings.from_env())


@worker_init.connect
def _preload_ml(**_kwargs) -> None:
    # In the main process, before the pool forks: every job process starts with torch imported.
    from worker import state

    if state.settings().preload_ml:
        from worker.ml.preload import preload

        preload()
    # Celery collects garbage before each fork of a job process: over the half a million objects the
    # imports leave, 0.26 s of every dispatch on a 2-core machine. Frozen, they are never scanned again,
    # here or in the job processes that inherit them (gc.freeze's own purpose: before forking).
    gc.freeze()


@worker_process_init.connect
def _init_process(**_kwargs) -> None:
    from worker import allocator, gpus, state
    from worker.ml import tuning

    allocator.keep_freed_memory()  # activations reuse freed memory instead of page-faulting it in per batch
    state.reset()  # a forked child must not share the parent's database connections
    tuning.configure(state.settings().data_dir / "tuning")  # speed measurements, shared by later jobs
    state.configure_offline()
    state.install_shutdown_handler()
    gpus.pin_pool_process()  # one GPU per pool process, before any job imports torch


@worker_ready.connect
def _start_heartbeat(sender=None, **_kwargs) -> None:
    # In the main process, once the consumer runs: the workers page shows this worker from now on.
    from worker import state
    from worker.heartbeat import start_heartbeat

    start_heartbeat(sender.hostname, sorted(sender.app.amqp.queues.consume_from), state.settings())


@worker_shutting_down.connect
def _ask_jobs_to_hand_back(**_kwargs) -> None:
    # A warm shutdown would wait for a many-hour fine-tune; ask each job process to checkpoint
    # and give its job back instead (it exits right after).
    import psutil

    from worker import state

    for child in psutil.Process().children():
        try:
            child.send_signal(state.SHUTDOWN_SIGNAL)
        except psutil.NoSuchProcess:
            pass


@beat_init.connect
def _start_maintenance(sender=None, **_kwargs) -> None:
    from worker.maintenance import start_maintenance_thread

    start_maintenance_thread(app)
