"""Bearer-token authentication; every query is then scoped to `g.tenant_id`.

A viewer token reads everything its tenant owns and changes nothing: every write route (any method
but GET, HEAD and OPTIONS) answers it with 403, whichever blueprint serves the route.
"""

from __future__ import annotations

from flask import Flask, g, request

from db.enums import TokenRole
from db.errors import Forbidden, Unauthorized
from db.services.tenants import authenticate

PUBLIC_ENDPOINTS = {"health.healthz", "health.openapi"}
READ_METHODS = {"GET", "HEAD", "OPTIONS"}
TOKEN_COMMAND = "nightshift token --tenant NAME"  # nightshift/cli.py's `token` subcommand


def register(app: Flask) -> None:
    """Require a valid token on every /api/v1 endpoint but the public ones."""

    @app.before_request
    def _require_token():
        from api import API_PREFIX, db_session

        if not request.path.startswith(API_PREFIX) or request.endpoint in PUBLIC_ENDPOINTS:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise Unauthorized(f"send 'Authorization: Bearer <token>'; `{TOKEN_COMMAND}` makes one")
        token = authenticate(db_session(), raw.strip())
        if token is None:
            raise Unauthorized(f"the bearer token is unknown or revoked; `{TOKEN_COMMAND}` makes a new one",
                               code="invalid_token")
        g.tenant_id, g.role = token.tenant_id, TokenRole(token.role)
        if g.role is TokenRole.VIEWER and request.method not in READ_METHODS:
            raise Forbidden("this token is read-only (role viewer): uploading, submitting, cancelling and "
                            f"deleting need a member token, which `{TOKEN_COMMAND}` makes")
        return None


def tenant_id() -> int:
    """Return the authenticated tenant's id."""
    return g.tenant_id


def can_write() -> bool:
    """Whether the authenticated token may change data (the dashboard hides what it may not do)."""
    return g.role is not TokenRole.VIEWER
