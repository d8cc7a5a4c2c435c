"""Errors raised by services; the API turns each into one JSON error body."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Root of every error a service raises for its caller to show."""

    http_status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details if details is not None else {}
        if code is not None:
            self.code = code


class InvalidInput(ServiceError):
    """The request is well-formed but its content is wrong; the message says what to fix."""

    http_status = 422
    code = "invalid_input"


class NotFound(ServiceError):
    """The object does not exist, or belongs to another tenant."""

    http_status = 404
    code = "not_found"


class Conflict(ServiceError):
    """The request clashes with the object's current state."""

    http_status = 409
    code = "conflict"


class Unauthorized(ServiceError):
    """No valid bearer token."""

    http_status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """The token is valid but its role may not do this."""

    http_status = 403
    code = "forbidden"
