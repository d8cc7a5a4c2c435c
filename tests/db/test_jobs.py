"""create_job writes a job with Core statements and hands back an object the session treats as loaded."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import inspect, select

from db.base import utcnow
from db.enums import JobStatus
from db.models import Dataset, Job, JobEvent, OutboxMessage
from db.services.jobs import create_job
from db.services.tenants import get_or_create_tenant


def add_dataset(session, tenant_id: int) -> int:
    dataset = Dataset(tenant_id=tenant_id, name="reviews.csv", text_column="text", label_column="label",
                      columns=["text", "label"], format="csv", row_count=40, size_bytes=800, sha256="0" * 64,
                      path="datasets/reviews.csv")
    session.add(dataset)
    session.flush()
    return dataset.id


def columns_of(job: Job) -> dict:
    return {column.key: getattr(job, column.key) for column in inspect(Job).column_attrs}


def test_the_returned_job_holds_every_column_as_a_fresh_read_of_its_row_does(session_factory):
    with session_factory() as session, session.begin():
        tenant_id = get_or_create_tenant(session, "acme").id
        train, validation = add_dataset(session, tenant_id), add_dataset(session, tenant_id)
        job, created = create_job(session, tenant_id=tenant_id, kind="finetune", task="text-classification",
                                  params={"base_model": "m", "train_dataset_id": train}, queue="cpu", priority=7,
                                  max_attempts=2, idempotency_key="k1",
                                  datasets=[(train, "train"), (validation, "validation")],
                                  deadline=utcnow() + timedelta(hours=1), estimate=lambda *_: 42.0)
        returned = columns_of(job)
        assert created and inspect(job).persistent and not inspect(job).expired_attributes  # nothing to load again
        assert not session.dirty and not session.new  # nothing left for the unit of work to write
        job_id = job.id

    with session_factory() as session:
        stored = session.get(Job, job_id)
        assert columns_of(stored) == returned
        assert stored.status == JobStatus.QUEUED and stored.estimated_run_seconds == 42.0
        assert stored.attempts == 0 and stored.interruptions == 0 and stored.result == {}  # the model's defaults
        assert stored.cancel_requested is False and stored.epoch == 0 and stored.progress_fraction == 0.0
        assert sorted((link.dataset_id, link.role) for link in stored.datasets) == [(train, "train"),
                                                                                    (validation, "validation")]
        assert session.scalar(select(OutboxMessage.job_id)) == job_id
        assert session.scalar(select(JobEvent.message).where(JobEvent.job_id == job_id)) == \
            "finetune job queued on 'cpu'"


def test_the_returned_job_reads_its_links_and_writes_later_changes(session_factory):
    with session_factory() as session, session.begin():
        tenant_id = get_or_create_tenant(session, "acme").id
        train = add_dataset(session, tenant_id)
        job, _ = create_job(session, tenant_id=tenant_id, kind="evaluate", task="text-classification",
                            params={"model": "m", "dataset_id": train}, queue="cpu", datasets=[(train, "evaluate")])
        assert [(link.dataset_id, link.role) for link in job.datasets] == [(train, "evaluate")]  # read on first use
        job.progress_stage = "loading"  # flushed as an UPDATE at the commit
        job_id = job.id

    with session_factory() as session:
        stored = session.get(Job, job_id)
        assert stored.progress_stage == "loading" and len(stored.datasets) == 1


def test_a_job_due_later_is_scheduled_without_a_message(session_factory):
    with session_factory() as session, session.begin():
        tenant_id = get_or_create_tenant(session, "acme").id
        job, _ = create_job(session, tenant_id=tenant_id, kind="evaluate", task="text-classification",
                            params={"model": "m", "dataset_id": 1}, queue="cpu",
                            not_before=utcnow() + timedelta(hours=2))
        job_id = job.id

    with session_factory() as session:
        assert session.get(Job, job_id).status == JobStatus.SCHEDULED
        assert session.scalar(select(OutboxMessage.job_id)) is None


def test_every_job_column_with_a_server_default_has_a_model_default():
    # create_job writes every column itself, so a default the database alone knows would be overwritten by NULL.
    missing = [column.key for column in Job.__table__.columns
               if column.server_default is not None and column.default is None]
    assert not missing, f"give these columns a model default too (create_job writes every column): {missing}"
