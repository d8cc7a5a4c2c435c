"""SQLAlchemy models: the SQL row is the truth about every job, dataset and model."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.base import Base, JSONType, utcnow
from db.enums import JobStatus, TokenRole

# BigInteger ids on PostgreSQL, but SQLite only autoincrements INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token; only its sha256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="default")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20), default=TokenRole.MEMBER, server_default=TokenRole.MEMBER)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)

    tenant: Mapped[Tenant] = relationship()


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # The task whose labelled rows the dataset holds (None: plain text to run a model on), and its
    # columns by role, e.g. {"tokens": "words", "tags": "ner"}. text_column and label_column name the
    # input and the target role's column, for every task.
    task: Mapped[str | None] = mapped_column(String(64))
    column_map: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    text_column: Mapped[str] = mapped_column(String(200))
    label_column: Mapped[str | None] = mapped_column(String(200))
    columns: Mapped[list[str]] = mapped_column(JSONType, default=list)
    format: Mapped[str] = mapped_column(String(16))
    row_count: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1000))
    stats: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime)

    @property
    def columns_by_role(self) -> dict[str, str]:
        """The dataset's columns by role; datasets from before roles were recorded have text and label."""
        if self.column_map:
            return dict(self.column_map)
        return {"text": self.text_column} | ({"label": self.label_column} if self.label_column else {})


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "id"),
        Index("ix_jobs_tenant_status", "tenant_id", "status", "id"),  # GET /jobs?status=..., newest first
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        # A queued job's place in its queue and kind (higher priority first, then older), counted in the index alone.
        Index("ix_jobs_queue_order", "status", "queue", "kind", "priority", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))  # ix_jobs_tenant_created
    kind: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    queue: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))

    # Attempts charged to the job (claims, less clean hand-backs and lost hosts), capped by
    # max_attempts; attempts ended by a worker or host that died are counted in `interruptions`.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    interruptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    not_before: Mapped[datetime | None] = mapped_column(DateTime)
    deadline: Mapped[datetime | None] = mapped_column(DateTime)  # when the user needs it done
    # pause_outside_window: the named run window the job runs inside; when it closes mid-run the job
    # checkpoints and goes back to `scheduled` until the window opens again.
    run_window: Mapped[str | None] = mapped_column(String(64))
    # Measured on past jobs like it (db/services/estimates.py), at submission and again at its start.
    estimated_run_seconds: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    progress_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    progress_stage: Mapped[str | None] = mapped_column(String(64))
    progress_done: Mapped[int | None] = mapped_column(BigInteger)
    progress_total: Mapped[int | None] = mapped_column(BigInteger)
    eta_seconds: Mapped[float | None] = mapped_column(Float)

    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    output_path: Mapped[str | None] = mapped_column(String(1000))
    # No FK: model_artifacts.source_job_id already points the other way.
    model_artifact_id: Mapped[int | None] = mapped_column(BigId)

    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    # A pipeline step: its pipeline, its name there, and the job it waits for (status `waiting` until
    # that one succeeds). The dependency lives in these columns, so it survives any process dying.
    pipeline_id: Mapped[int | None] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), index=True)
    pipeline_step: Mapped[str | None] = mapped_column(String(64))
    depends_on_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("jobs.id"), index=True)

    datasets: Mapped[list[JobDataset]] = relationship(cascade="all, delete-orphan")


class Pipeline(Base):
    """Jobs submitted together as steps, each starting when the one it depends on succeeds."""

    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class JobDataset(Base):
    """Which datasets a job reads; a dataset in use by a live job cannot be deleted."""

    __tablename__ = "job_datasets"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(32))


class JobEvent(Base):
    __tablename__ = "job_events"
    # A job's events after a cursor, in id order, without reading (and sorting) all of them.
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    type: Mapped[str] = mapped_column(String(16))  # log | metric | status | rescue
    level: Mapped[str] = mapped_column(String(10), default="info")
    message: Mapped[str] = mapped_column(Text, default="")
    step: Mapped[int | None] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    epoch: Mapped[int | None] = mapped_column(Integer)


class ModelArtifact(Base):
    __tablename__ = "model_artifacts"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(500))
    label_names: Mapped[list[str]] = mapped_column(JSONType, default=list)
    tokenizer: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # class, vocabulary, max length
    path: Mapped[str] = mapped_column(String(1000))
    source_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model_artifact_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_artifacts.id", ondelete="SET NULL")
    )
    model_ref: Mapped[str] = mapped_column(String(500))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    split: Mapped[str] = mapped_column(String(32), default="validation")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class OutboxMessage(Base):
    """A task message to publish; written in the same transaction as the job change."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    task_name: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer, default=5)
    available_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class QueueLineChange(Base):
    """What a change of the jobs table did to one line of queued jobs (queue, kind, priority): how many
    joined or left it, their estimates' sum, how many of them have none.

    Written by database triggers on jobs (migration 0012), so no code path can forget one; every change
    is a row of its own, so concurrent submissions and claims never wait on a shared counter. The
    maintenance loop folds them into one row per line (`db.services.lines.compact`). The sums over a
    line tell how many jobs wait in it without counting them (`db.services.lines.jobs_ahead`).
    """

    __tablename__ = "queue_line_changes"
    # Covering: a line's sums are read from the index alone.
    __table_args__ = (Index("ix_queue_line_changes_line", "queue", "kind", "priority", "queued", "seconds", "unknown"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    queue: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    priority: Mapped[int] = mapped_column(Integer)
    queued: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)
    unknown: Mapped[int] = mapped_column(BigInteger)


class InferenceChunk(Base):
    """A committed slice of a batch-inference output; one per (job, chunk) ever."""

    __tablename__ = "inference_chunks"
    __table_args__ = (UniqueConstraint("job_id", "chunk_index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    chunk_index: Mapped[int] = mapped_column(Integer)
    start_row: Mapped[int] = mapped_column(BigInteger)
    end_row: Mapped[int] = mapped_column(BigInteger)
    rows_ok: Mapped[int] = mapped_column(Integer)
    rows_failed: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1000))
    epoch: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Worker(Base):
    """A Celery worker (its main process), as its last heartbeat described it; shared by all tenants."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)  # Celery's hostname, e.g. gpu@host
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # {"kind": "cuda" | "cpu", "name", "memory_bytes", "cores"}; what the worker could tell cheaply.
    device: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # The pool processes' pids at the last heartbeat: a job's lease_owner is "<host>:<pool pid>".
    pool_pids: Mapped[list[int]] = mapped_column(JSONType, default=list)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
