"""The dashboard: server-rendered pages over the same services as the JSON API.

A user logs in with an API token; the session cookie (signed with the app's secret key) holds only
the token's id, checked against the database on every request, so revoking the token logs the
session out. Forms carry a CSRF token (Flask-WTF). htmx (vendored in static/vendor with its licence)
refreshes the live parts by polling HTML fragments; Chart.js draws the training curves from the
job's metric events. A viewer token sees everything its tenant has and no write button; the write
routes refuse it as the JSON API does.
"""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from flask import Blueprint, abort, g, redirect, render_template, request, session, url_for

from api import API_PREFIX, db_session
from db.enums import TokenRole
from db.models import ApiToken, Tenant
from db.services.tenants import authenticate

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/assets")

PUBLIC = {"dashboard.login", "dashboard.static"}


@bp.before_request
def _require_login():
    """Load the session's token (tenant and role) or send the browser to the login page."""
    if request.endpoint in PUBLIC:
        return None
    token = _session_token()
    if token is None:
        session.clear()
        return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
    g.tenant_id, g.role = token.tenant_id, TokenRole(token.role)
    g.tenant_name = db_session().get(Tenant, token.tenant_id).name
    return None


def _session_token() -> ApiToken | None:
    token_id = session.get("token_id")
    if not isinstance(token_id, int):
        return None
    token = db_session().get(ApiToken, token_id)
    return token if token is not None and token.revoked_at is None else None


def writer(view):
    """A view that changes data: refused (403) to a viewer, like the JSON API's write routes."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        if g.role is TokenRole.VIEWER:
            abort(403, "this token is read-only (role viewer)")
        return view(*args, **kwargs)

    return wrapped


@bp.app_context_processor
def _template_globals() -> dict:
    return {"can_write": lambda: getattr(g, "role", None) is TokenRole.MEMBER, "api_prefix": API_PREFIX}


# ---- login -------------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        token = authenticate(db_session(), request.form.get("token", "").strip())
        if token is None:
            error = "This token is unknown or revoked. `nightshift token --tenant NAME` makes one."
        else:
            session.clear()
            session["token_id"] = token.id
            session.permanent = True
            return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", error=error), 401 if error else 200


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never another host) may follow the login."""
    parts = urlsplit(target or "")
    if not target or parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("dashboard.jobs")
    return target


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("dashboard.login"))


@bp.get("/")
def index():
    return redirect(url_for("dashboard.jobs"))


from api.dashboard import datasets, jobs, models, pipelines, submit, workers  # noqa: E402,F401  (registers the pages on bp)
