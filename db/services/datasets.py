"""Dataset records; the files themselves are written by the API's storage layer."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.enums import TERMINAL_STATUSES
from db.errors import Conflict, NotFound
from db.models import Dataset, Job, JobDataset
from db.services.ids import is_row_id


def get_dataset(session: Session, tenant_id: int, dataset_id: int) -> Dataset:
    """Return the tenant's live dataset or raise NotFound."""
    dataset = session.get(Dataset, dataset_id) if is_row_id(dataset_id) else None
    if dataset is None or dataset.tenant_id != tenant_id or dataset.deleted_at is not None:
        raise NotFound(f"dataset {dataset_id} not found", code="dataset_not_found")
    return dataset


def read_dataset(session: Session, tenant_id: int, dataset_id: int) -> Dataset:
    """Return the tenant's live dataset as a read-only copy, outside the session, or raise NotFound.

    For checks that only read it (every job submission checks its datasets): one Core SELECT, without the
    ORM's loading and identity map.
    """
    row = session.execute(_LIVE_DATASET, {"id": dataset_id, "tenant_id": tenant_id}).first() \
        if is_row_id(dataset_id) else None
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found", code="dataset_not_found")
    return Dataset(**row._mapping)


_DATASETS = Dataset.__table__
_LIVE_DATASET = select(_DATASETS).where(_DATASETS.c.id == bindparam("id"), _DATASETS.c.tenant_id == bindparam("tenant_id"),
                                        _DATASETS.c.deleted_at.is_(None))


def list_datasets(
    session: Session, tenant_id: int, *, before_id: int | None = None, limit: int = 50
) -> list[Dataset]:
    """Return the tenant's datasets newest first."""
    query = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
    if before_id:
        query = query.where(Dataset.id < before_id)
    return list(session.scalars(query.order_by(Dataset.id.desc()).limit(limit)))


def live_jobs_using(session: Session, dataset_id: int) -> list[int]:
    """Return ids of unfinished jobs that read the dataset."""
    query = (
        select(Job.id)
        .join(JobDataset, JobDataset.job_id == Job.id)
        .where(JobDataset.dataset_id == dataset_id, Job.status.not_in([s.value for s in TERMINAL_STATUSES]))
    )
    return list(session.scalars(query))


def delete_dataset(session: Session, tenant_id: int, dataset_id: int) -> Dataset:
    """Mark a dataset deleted unless an unfinished job still reads it."""
    dataset = get_dataset(session, tenant_id, dataset_id)
    jobs = live_jobs_using(session, dataset_id)
    if jobs:
        raise Conflict(
            f"dataset {dataset_id} is used by unfinished jobs {jobs}; cancel them or wait for them to end",
            code="dataset_in_use",
            details={"job_ids": jobs},
        )
    dataset.deleted_at = utcnow()
    session.flush()
    return dataset


def jobs_using(session: Session, tenant_id: int, dataset_id: int, *, limit: int = 100) -> list[tuple[Job, str]]:
    """Return the tenant's jobs that read the dataset, newest first, each with the dataset's role in it."""
    query = (
        select(Job, JobDataset.role)
        .join(JobDataset, JobDataset.job_id == Job.id)
        .where(JobDataset.dataset_id == dataset_id, Job.tenant_id == tenant_id)
        .order_by(Job.id.desc())
        .limit(limit)
    )
    return [(job, role) for job, role in session.execute(query)]
