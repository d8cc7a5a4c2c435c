"""The model registry and evaluation results."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.errors import NotFound
from db.models import Evaluation, ModelArtifact
from db.services.ids import is_row_id

REGISTER_ATTEMPTS = 5  # each lost race means another registration of the name committed meanwhile


def register_model(session: Session, *, tenant_id: int, name: str, **fields: Any) -> ModelArtifact:
    """Add the next version of model `name` for the tenant, even while another job registers it too."""
    # The INSERT computes max(version) + 1 itself. SQLite runs one writer at a time and takes the
    # write lock before that read, so the number cannot be taken meanwhile. PostgreSQL runs writers
    # side by side: a concurrent registration of the same name can pick the same number, and ours
    # then fails on the unique constraint once the other commits; the retry runs in a savepoint (so
    # the caller's transaction survives) and, under READ COMMITTED, sees the winner's row. No
    # savepoint on SQLite: pysqlite opens no transaction for one, so releasing it would commit the
    # caller's earlier work (SQLAlchemy's pysqlite notes), and no race needs it there.
    if session.get_bind().dialect.name == "sqlite":
        return _insert_next_version(session, tenant_id, name, fields)
    attempt = 1
    while True:
        try:
            with session.begin_nested():
                return _insert_next_version(session, tenant_id, name, fields)
        except IntegrityError:
            if attempt >= REGISTER_ATTEMPTS or not _registered(session, tenant_id, name):
                raise  # not a lost race (e.g. a foreign key), or lost too often to be one
        attempt += 1


def _insert_next_version(session: Session, tenant_id: int, name: str, fields: dict[str, Any]) -> ModelArtifact:
    """Insert the model with the version after the newest one, in one statement."""
    next_version = (
        select(func.coalesce(func.max(ModelArtifact.version), 0) + 1)
        .where(ModelArtifact.tenant_id == tenant_id, ModelArtifact.name == name)
        .scalar_subquery()
    )
    statement = (
        insert(ModelArtifact)
        .values(tenant_id=tenant_id, name=name, version=next_version, **fields)
        .returning(ModelArtifact)
    )
    return session.scalars(statement).one()


def _registered(session: Session, tenant_id: int, name: str) -> bool:
    query = select(ModelArtifact.id).where(ModelArtifact.tenant_id == tenant_id, ModelArtifact.name == name)
    return session.scalars(query.limit(1)).first() is not None


def resolve_model(session: Session, tenant_id: int, ref: str) -> ModelArtifact | None:
    """Return the registered model `name` (latest) or `name:version`, or None."""
    name, _, version = ref.partition(":")
    if not version:
        return session.scalars(_LATEST_MODEL, {"tenant_id": tenant_id, "name": name}).first()
    if not version.isdecimal() or not is_row_id(int(version)):  # isdigit() passes '²'
        return None
    return session.scalars(_MODEL_VERSION, {"tenant_id": tenant_id, "name": name, "version": int(version)}).first()


# Built once: every submission that names a model resolves it.
_LATEST_MODEL = (select(ModelArtifact)
                 .where(ModelArtifact.tenant_id == bindparam("tenant_id"), ModelArtifact.name == bindparam("name"))
                 .order_by(ModelArtifact.version.desc()).limit(1))
_MODEL_VERSION = _LATEST_MODEL.where(ModelArtifact.version == bindparam("version"))


def list_models(session: Session, tenant_id: int, *, name: str | None = None) -> list[ModelArtifact]:
    """Return the tenant's registered models, newest first."""
    query = select(ModelArtifact).where(ModelArtifact.tenant_id == tenant_id)
    if name:
        query = query.where(ModelArtifact.name == name)
    return list(session.scalars(query.order_by(ModelArtifact.id.desc())))


def get_evaluation(session: Session, tenant_id: int, evaluation_id: int) -> Evaluation:
    """Return the tenant's evaluation or raise NotFound."""
    evaluation = session.get(Evaluation, evaluation_id) if is_row_id(evaluation_id) else None
    if evaluation is None or evaluation.tenant_id != tenant_id:
        raise NotFound(f"evaluation {evaluation_id} not found", code="evaluation_not_found")
    return evaluation


def list_evaluations(session: Session, tenant_id: int, *, model: str | None = None, dataset_id: int | None = None,
                     before_id: int | None = None, limit: int = 50) -> list[Evaluation]:
    """Return the tenant's evaluations newest first; `model` is a registered name (every version) or
    `name:version`, `dataset_id` the evaluated dataset."""
    query = select(Evaluation).where(Evaluation.tenant_id == tenant_id)
    if model:
        name, _, version = model.partition(":")
        versions = select(ModelArtifact.id).where(ModelArtifact.tenant_id == tenant_id, ModelArtifact.name == name)
        if version:
            versions = versions.where(ModelArtifact.version == (int(version) if version.isdecimal() else -1))
        query = query.where(Evaluation.model_artifact_id.in_(versions))
    if dataset_id is not None:
        query = query.where(Evaluation.dataset_id == dataset_id)
    if before_id:
        query = query.where(Evaluation.id < before_id)
    return list(session.scalars(query.order_by(Evaluation.id.desc()).limit(limit)))


def record_evaluation(session: Session, **fields: Any) -> Evaluation:
    """Store an evaluation's metrics."""
    evaluation = Evaluation(**fields)
    session.add(evaluation)
    session.flush()
    return evaluation
