"""One JSON error body for every failure of the API: `{"error": {"code", "message", "details"}}`;
the dashboard's pages get the same message on an HTML page."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.schemas import JOB_KINDS
from db.errors import ServiceError
from worker.ml.tasks import TASKS
from worker.storage import StorageUnavailable

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, details=None):
    """Return a Flask response carrying the standard error body (an error page outside the API)."""
    from api import API_PREFIX

    if not request.path.startswith(API_PREFIX):
        name = code.replace("_", " ").capitalize()
        try:
            return render_template("error.html", code=status, name=name, message=message), status
        except Exception:  # the page itself failed (the cause is already logged): plain text still says why
            log.exception("the error page failed to render")
            return f"{status} {name}: {message}", status, {"Content-Type": "text/plain; charset=utf-8"}
    body = {"error": {"code": code, "message": message, "details": details if details is not None else {}}}
    return jsonify(body), status


def register_error_handlers(app: Flask) -> None:
    """Route every exception through `error_response`."""

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError):
        return error_response(exc.http_status, exc.code, exc.message, exc.details)

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError):
        fields = [
            {"field": field_of(err), "message": err["msg"], "input": _short(err.get("input"))}
            for err in exc.errors(include_url=False)
        ]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        return error_response(422, "invalid_input", f"invalid request: {summary}", {"fields": fields})

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc):
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return error_response(
            413, "upload_too_large",
            f"the upload is larger than the {limit} byte limit (NIGHTSHIFT_MAX_UPLOAD_BYTES); split the file",
            {"limit_bytes": limit},
        )

    @app.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError):
        return error_response(400, "csrf_failed", f"{exc.description} Reload the page and submit the form again.")

    @app.errorhandler(StorageUnavailable)
    def _storage_unavailable(exc: StorageUnavailable):
        log.warning("storage unavailable: %s", exc.message)
        return error_response(503, exc.code, f"{exc.message}; nothing was changed: try again shortly")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "the server failed; the error was logged")


def field_of(err) -> str:
    """Name the field of a validation error; a bad or missing union tag names the tag field."""
    loc = [str(part) for part in err["loc"]]
    while loc and (loc[0] in JOB_KINDS or loc[0] in TASKS):  # the unions' tags add nothing the user wrote
        loc = loc[1:]
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append(err["ctx"]["discriminator"].strip("'"))
    return ".".join(loc) or "body"


def _short(value):
    if isinstance(value, str | int | float | bool) or value is None:
        return value if not isinstance(value, str) else value[:200]
    return str(value)[:200]
