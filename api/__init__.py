"""Nightshift's HTTP service: the JSON API under /api/v1 and the dashboard under /; no work at import time."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from flask import Flask, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from worker.config import Settings
from worker.outbox import SentMarks
from worker.storage import Storage

API_PREFIX = "/api/v1"


@dataclass
class Services:
    """What every request may use, built once per app."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    celery: Celery
    sent_marks: SentMarks  # marks the messages this process sent, in batches


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app; `config` overrides settings (lower-case keys) and Flask config (upper-case)."""
    from flask_wtf.csrf import CSRFProtect

    from api import auth, dashboard, datasets, errors, health, jobs, metrics, models, pipelines, workers
    from db.session import make_engine, make_session_factory
    from worker.celery_app import make_celery

    config = config or {}
    settings = Settings.from_env(**{k: v for k, v in config.items() if k.islower()})
    app = Flask(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        SECRET_KEY=settings.secret_key or _local_secret_key(Path(settings.data_dir)),
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(days=7),
        WTF_CSRF_TIME_LIMIT=None,  # a page left open overnight still cancels; the token dies with the session
    )
    app.config.update({k: v for k, v in config.items() if k.isupper()})
    app.json.sort_keys = False
    engine = make_engine(settings.database_url)
    app.extensions["nightshift"] = Services(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        celery=make_celery(settings),
        sent_marks=SentMarks(engine),
    )
    errors.register_error_handlers(app)
    csrf = CSRFProtect(app)  # the dashboard's forms; the JSON API authenticates by bearer token instead
    for module in (datasets, jobs, pipelines, models, workers, health):
        app.register_blueprint(module.bp, url_prefix=API_PREFIX)
        csrf.exempt(module.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(metrics.bp)  # /metrics, where Prometheus looks by default
    csrf.exempt(metrics.bp)
    auth.register(app)
    app.teardown_appcontext(_close_session)
    return app


def _local_secret_key(data_dir: Path) -> str:
    """Return the key in data_dir/secret_key, creating it once: every API process of this data dir
    (gunicorn's workers, a restart) must sign cookies with the same key."""
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        scratch = data_dir / f".secret_key.{os.getpid()}"
        scratch.write_text(secrets.token_urlsafe(48))
        scratch.chmod(0o600)
        try:
            os.link(scratch, path)  # atomic: the first process wins, the others read its key
        except FileExistsError:
            pass
        finally:
            scratch.unlink()
    return path.read_text().strip()


def services() -> Services:
    """Return the current app's services."""
    from flask import current_app

    return current_app.extensions["nightshift"]


def storage() -> Storage:
    """Return where this deployment keeps datasets, models and outputs."""
    return Storage.from_settings(services().settings)


def db_session() -> Session:
    """Return this request's session (closed at teardown)."""
    if "db_session" not in g:
        g.db_session = services().session_factory()
    return g.db_session


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
