"""Tenants and API tokens; a token is shown once and stored only as its sha256."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from db.enums import TokenRole
from db.models import ApiToken, Tenant

TOKEN_PREFIX = "ns_"


def hash_token(raw: str) -> str:
    """Return the stored form of a raw token."""
    return hashlib.sha256(raw.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """Return the tenant called `name`, creating it if needed."""
    tenant = session.scalars(select(Tenant).where(Tenant.name == name)).first()
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def issue_token(session: Session, tenant: Tenant, *, name: str = "default", raw: str | None = None,
                role: TokenRole = TokenRole.MEMBER) -> str:
    """Create a token for `tenant` with `role` and return its raw value (never stored)."""
    raw = raw or TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(tenant_id=tenant.id, name=name, token_hash=hash_token(raw), role=TokenRole(role)))
    session.flush()
    return raw


# Built once, and read as a plain row: every API request runs it.
_TOKENS = ApiToken.__table__
_TOKEN_BY_HASH = select(_TOKENS.c.id, _TOKENS.c.tenant_id, _TOKENS.c.role).where(
    _TOKENS.c.token_hash == bindparam("token_hash"), _TOKENS.c.revoked_at.is_(None))


def authenticate(session: Session, raw: str) -> Row | None:
    """Return the live token matching `raw` as a row of (id, tenant_id, role), or None."""
    return session.execute(_TOKEN_BY_HASH, {"token_hash": hash_token(raw)}).first()
