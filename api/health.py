"""Health check and the OpenAPI document (both public)."""

from __future__ import annotations

import redis
from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from api import services
from api.openapi import build_openapi, spec
from api.schemas import Health

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@spec("Check the database and Redis", response=Health)
def healthz():
    checks = {"database": _check_database(), "redis": _check_redis()}
    ok = all(v == "ok" for v in checks.values())
    return jsonify(Health(status="ok" if ok else "degraded", **checks).model_dump()), 200 if ok else 503


@bp.get("/openapi.json")
def openapi():
    return jsonify(build_openapi(current_app, title="Nightshift API", version="1"))


def _check_database() -> str:
    try:
        with services().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # report, don't raise: this endpoint exists to say what is down
        return f"error: {type(exc).__name__}"


def _check_redis() -> str:
    try:
        client = redis.Redis.from_url(services().settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        client.close()
        return "ok"
    except redis.RedisError as exc:
        return f"error: {type(exc).__name__}"
