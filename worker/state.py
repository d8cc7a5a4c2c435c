"""Per-process resources of a worker, built lazily after fork."""

from __future__ import annotations

import os
from functools import cache

from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, make_session_factory
from worker.config import Settings


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
