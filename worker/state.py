"""Per-process resources of a worker, built lazily after fork."""

from __future__ import annotations

import os
import signal
import threading
from functools import cache

from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, make_session_factory
from worker.config import Settings


# Set in a job process when its worker begins a warm shutdown (SIGTERM on the main process).
shutdown_requested = threading.Event()
SHUTDOWN_SIGNAL = signal.SIGUSR2  # billiard keeps SIGUSR1 for Celery's soft time limit


def install_shutdown_handler() -> None:
    """Make SHUTDOWN_SIGNAL ask the running job to checkpoint and hand itself back."""
    signal.signal(SHUTDOWN_SIGNAL, lambda _signum, _frame: shutdown_requested.set())


@cache
def settings() -> Settings:
    """Return this process's settings (read from the environment once)."""
    return Settings.from_env()


@cache
def session_factory() -> sessionmaker[Session]:
    """Return this process's session factory."""
    return make_session_factory(make_engine(settings().database_url))


def reset() -> None:
    """Forget per-process resources (after fork)."""
    session_factory.cache_clear()


def configure_offline() -> None:
    """Keep Hugging Face libraries off the network unless hub downloads are enabled."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # progress goes to job events instead
    if not settings().hub_enabled:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.setdefault(name, "1")
