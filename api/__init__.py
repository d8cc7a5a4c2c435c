"""Nightshift's HTTP API: a Flask app factory; no work happens at import time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery
from flask import Flask, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from worker.config import Settings

API_PREFIX = "/api/v1"


@dataclass
class Services:
    """What every request may use, built once per app."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    celery: Celery


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app; `config` overrides settings (lower-case keys) and Flask config (upper-case)."""
    from api import auth, datasets, errors, health, jobs, models
    from db.session import make_engine, make_session_factory
    from worker.celery_app import make_celery

    config = config or {}
    settings = Settings.from_env(**{k: v for k, v in config.items() if k.islower()})
    app = Flask(__name__)
    app.config.update({k: v for k, v in config.items() if k.isupper()})
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False
    engine = make_engine(settings.database_url)
    app.extensions["nightshift"] = Services(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        celery=make_celery(settings),
    )
    errors.register_error_handlers(app)
    for module in (datasets, jobs, models, health):
        app.register_blueprint(module.bp, url_prefix=API_PREFIX)
    auth.register(app)
    app.teardown_appcontext(_close_session)
    return app


def services() -> Services:
    """Return the current app's services."""
    from flask import current_app

    return current_app.extensions["nightshift"]


def db_session() -> Session:
    """Return this request's session (closed at teardown)."""
    if "db_session" not in g:
        g.db_session = services().session_factory()
    return g.db_session


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
