"""The model registry and evaluation results."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.errors import NotFound
from db.models import Evaluation, ModelArtifact
from db.services.ids import is_row_id


def register_model(session: Session, *, tenant_id: int, name: str, **fields: Any) -> ModelArtifact:
    """Add the next version of model `name` for the tenant."""
    latest = session.scalar(
        select(func.max(ModelArtifact.version)).where(
            ModelArtifact.tenant_id == tenant_id, ModelArtifact.name == name
        )
    )
    artifact = ModelArtifact(tenant_id=tenant_id, name=name, version=(latest or 0) + 1, **fields)
    session.add(artifact)
    session.flush()
    return artifact


def resolve_model(session: Session, tenant_id: int, ref: str) -> ModelArtifact | None:
    """Return the registered model `name` (latest) or `name:version`, or None."""
    name, _, version = ref.partition(":")
    query = select(ModelArtifact).where(ModelArtifact.tenant_id == tenant_id, ModelArtifact.name == name)
    if version:
        if not version.isdecimal() or not is_row_id(int(version)):  # isdigit() passes '²'
            return None
        query = query.where(ModelArtifact.version == int(version))
    return session.scalars(query.order_by(ModelArtifact.version.desc())).first()


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


def record_evaluation(session: Session, **fields: Any) -> Evaluation:
    """Store an evaluation's metrics."""
    evaluation = Evaluation(**fields)
    session.add(evaluation)
    session.flush()
    return evaluation
