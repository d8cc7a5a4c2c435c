"""Request and response schemas of the HTTP API, declared once for validation and OpenAPI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, RootModel, create_model, model_validator

from db.services.estimates import expected_finish
from db.services.ids import MAX_ROW_ID
from worker.config import JOB_KINDS
from worker.ml.tasks import LANGUAGE_MODELING, TASKS, params_model, tasks_of


UtcDatetime = Annotated[
    datetime,
    PlainSerializer(lambda d: d.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"), return_type=str),
]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# -- errors ------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# -- datasets ----------------------------------------------------------------------------------
class DatasetOut(_Out):
    id: int
    name: str
    format: str
    task: str | None = Field(description="The task whose labelled rows this holds; null for plain text.")
    columns_by_role: dict[str, str] = Field(description='Columns by role, e.g. {"tokens": "words", "tags": "ner"}.')
    text_column: str = Field(description="The column of the input role.")
    label_column: str | None = Field(description="The column of the target role; null for plain text.")
    columns: list[str]
    row_count: int
    size_bytes: int
    sha256: str
    stats: dict[str, Any]
    created_at: UtcDatetime


class DatasetList(BaseModel):
    items: list[DatasetOut]
    next_cursor: int | None


class DatasetListQuery(_In):
    cursor: int | None = Field(default=None, ge=1, le=MAX_ROW_ID, description="`next_cursor` of the previous page.")
    limit: int = Field(default=50, ge=1, le=200)


# -- jobs --------------------------------------------------------------------------------------
class _JobIn(_In):
    priority: int = Field(default=5, ge=0, le=9, description="0 (low) to 9 (high).")
    not_before: datetime | str | None = Field(
        default=None, description="Do not start before this time (ISO 8601; without a zone: UTC), or before the "
                                  "named run window opens (e.g. nightly; NIGHTSHIFT_RUN_WINDOWS). Until then the job "
                                  "is scheduled.")
    deadline: datetime | None = Field(
        default=None, description="When you need it done (ISO 8601; without a zone: UTC). A job that past jobs like "
                                  "it say cannot make it gets a warning event, at submission and at its start.")
    pause_outside_window: bool = Field(
        default=False, description="With not_before naming a run window: when the window closes mid-run, the job "
                                   "checkpoints (a fine-tune or pretrain) or stops after its last committed chunk (batch "
                                   "inference) and waits, scheduled, for the window to open again; otherwise it runs "
                                   "to the end.")
    max_attempts: int | None = Field(default=None, ge=1, le=20, description="Default from settings.")


DEFAULT_TASK = "text-classification"


def default_task(kind: str | None) -> str:
    """The task a submission of `kind` gets when it names none."""
    return tasks_of(kind)[0] if kind == "pretrain" else DEFAULT_TASK


def _title(name: str) -> str:
    return "".join(part.title() for part in name.replace("-", "_").split("_"))


def _job_in(kind: str, task: str) -> type[_JobIn]:
    """The submission of one kind of job for one task, with that task's parameters."""
    task_field = (Literal[task], Field(default=task) if task == default_task(kind) else ...)
    return create_model(
        f"{_title(kind)}{_title(task)}JobIn", __base__=_JobIn, __module__=__name__,
        __doc__=f"A {kind} job for {task}.",
        kind=(Literal[kind], ...), task=task_field, params=(params_model(task, kind), ...),
    )


def _kind_union(kind: str):
    """The submissions of one kind, told apart by `task`."""
    members = tuple(_job_in(kind, task) for task in tasks_of(kind))
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="task")]  # noqa: UP007 (a runtime tuple)


class JobIn(RootModel[Annotated[Union[tuple(_kind_union(kind) for kind in JOB_KINDS)],  # noqa: UP007
                                Field(discriminator="kind")]]):
    """A job submission: `kind` and `task` (default text-classification; language-modeling for pretrain)
    select the schema of `params`."""

    @model_validator(mode="before")
    @classmethod
    def _default_task(cls, data: Any) -> Any:
        if isinstance(data, dict) and "task" not in data:
            return {**data, "task": default_task(data.get("kind"))}
        return data


class RetryIn(_In):
    """What to change in a retry (POST /jobs/{id}/retry); no body retries the job as it was."""

    only_failed_rows: bool = Field(
        default=False,
        description="batch_inference: predict only the rows in the job's errors file and merge them into a copy of "
                    "its predictions (the job must have succeeded with failed rows). The new job's `result` counts "
                    "rows_retried, rows_fixed and rows_still_failing.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description='Parameters to change, e.g. {"model": "fixed-model:2"} or a corrected dataset_id; the others are '
                    "the old job's. Checked like a new submission.",
    )


class Progress(BaseModel):
    fraction: float
    stage: str | None
    done: int | None
    total: int | None
    eta_seconds: float | None


class JobOut(_Out):
    id: int
    kind: str
    task: str
    status: str
    params: dict[str, Any]
    priority: int
    queue: str
    attempts: int = Field(description="Attempts charged to the job: its process died, or it raised a "
                          "transient error (clean hand-backs and lost workers are not charged).")
    max_attempts: int
    interruptions: int = Field(description="Attempts ended by a lost worker or host; not charged to the job.")
    cancel_requested: bool
    progress: Progress
    error: ErrorDetail | None
    result: dict[str, Any]
    model_artifact_id: int | None
    idempotency_key: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    updated_at: UtcDatetime
    pipeline_id: int | None = Field(description="The pipeline this job is a step of.")
    pipeline_step: str | None = Field(description="Its step's name in that pipeline.")
    depends_on_id: int | None = Field(description="The job this step waits for (status waiting until it succeeds).")
    not_before: UtcDatetime | None = Field(description="It does not start before this time (a scheduled job).")
    deadline: UtcDatetime | None = Field(description="When it is needed by.")
    run_window: str | None = Field(default=None, description="The run window it keeps to (pause_outside_window): it "
                                                             "pauses when that window closes.")
    estimated_run_seconds: float | None = Field(
        description="How long it should run, from the measured throughput of past jobs like it (null: none yet).")
    expected_start_at: UtcDatetime | None = Field(
        default=None, description="POST and GET /jobs/{id} of a queued or scheduled job: when it should start, from the "
                                  "time left on its queue's running jobs and the estimates of the jobs ahead of it "
                                  "(for a scheduled job, no earlier than not_before, behind the jobs ahead of it "
                                  "released by then), shared among the queue's live workers (null when one of those "
                                  "is unknown).")
    expected_finish_at: UtcDatetime | None = Field(
        default=None, description="expected_start_at (else its start, or the earliest it can start) plus "
                                  "estimated_run_seconds.")
    deadline_at_risk: bool | None = Field(default=None, description="expected_finish_at is after its deadline.")
    queue_position: int | None = Field(
        default=None, description="POST and GET /jobs/{id} of a queued job: 1 if it is the next of its kind to start on its "
                                  "queue, 2 after that one, ... (by priority, then age; at equal priority a tenant with "
                                  "fewer jobs running may go first). Null otherwise.")


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: int | None


class JobListQuery(_In):
    status: Literal["waiting", "queued", "running", "succeeded", "failed", "cancelled"] | None = None
    kind: Literal[JOB_KINDS] | None = None  # type: ignore[valid-type]
    task: Literal[(*TASKS, LANGUAGE_MODELING)] | None = None  # type: ignore[valid-type]
    model: str | None = Field(default=None, max_length=200, description="Jobs that use or register this model name.")
    q: str | None = Field(default=None, max_length=200, description="Text in the job's parameters or error.")
    cursor: int | None = Field(default=None, ge=1, le=MAX_ROW_ID, description="`next_cursor` of the previous page.")
    limit: int = Field(default=50, ge=1, le=200)


class EventOut(_Out):
    id: int
    created_at: UtcDatetime
    type: str
    level: str
    message: str
    step: int | None
    data: dict[str, Any]


class EventList(BaseModel):
    items: list[EventOut]
    next_cursor: int = Field(description="Pass as `after` to get only newer events.")


class EventQuery(_In):
    after: int = Field(default=0, ge=0, le=MAX_ROW_ID, description="Return events with id above this.")
    type: Literal["log", "metric", "status", "rescue"] | None = None
    limit: int = Field(default=500, ge=1, le=5000)


# -- models and evaluations --------------------------------------------------------------------
class ModelOut(_Out):
    id: int
    name: str
    version: int
    task: str
    base_model: str
    label_names: list[str] = Field(description="Class names or tags in the order of the model's outputs.")
    tokenizer: dict[str, Any] = Field(description="The saved tokenizer: class, vocabulary size, maximum length.")
    source_job_id: int | None
    metrics: dict[str, Any]
    created_at: UtcDatetime


class WorkerOut(BaseModel):
    """A Celery worker as its last heartbeat described it."""

    name: str = Field(description="Celery's name of the worker, e.g. gpu@host.")
    host: str
    pid: int
    queues: list[str] = Field(description="The queues it takes jobs from.")
    device: dict[str, Any] = Field(description='{"kind": "cuda" | "cpu", "name", "memory_bytes", "cores"}.')
    started_at: UtcDatetime
    last_seen_at: UtcDatetime
    alive: bool = Field(description="Its heartbeat is fresh (within three heartbeat periods).")
    running_job_ids: list[int] = Field(description="Your jobs it runs now.")


class WorkerList(BaseModel):
    items: list[WorkerOut]


class ModelList(BaseModel):
    items: list[ModelOut]


class EvaluationOut(_Out):
    id: int
    model_artifact_id: int | None
    model_ref: str
    dataset_id: int | None
    job_id: int | None
    split: str
    metrics: dict[str, Any]
    created_at: UtcDatetime


class EvaluationList(BaseModel):
    items: list[EvaluationOut]
    next_cursor: int | None = Field(description="Pass as `cursor` for the next page; null on the last one.")


class EvaluationListQuery(_In):
    model: str | None = Field(default=None, max_length=200, description="A registered name (every version) or name:version.")
    dataset_id: int | None = Field(default=None, ge=1, le=MAX_ROW_ID)
    cursor: int | None = Field(default=None, ge=1, le=MAX_ROW_ID, description="`next_cursor` of the previous page.")
    limit: int = Field(default=50, ge=1, le=200)


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: str
    redis: str


def job_out(job, *, queue_position: int | None = None, expected_start: datetime | None = None) -> dict[str, Any]:
    """Serialise a Job row (with its place in its queue and expected start, where the caller counted them)."""
    progress = Progress(
        fraction=job.progress_fraction, stage=job.progress_stage, done=job.progress_done,
        total=job.progress_total, eta_seconds=job.eta_seconds,
    )
    error = ErrorDetail(code=job.error_code, message=job.error_message or "") if job.error_code else None
    data = {c: getattr(job, c) for c in JobOut.model_fields if hasattr(job, c) and c not in ("progress", "error")}
    finish = expected_finish(job, expected_start)
    at_risk = finish > job.deadline if finish is not None and job.deadline is not None else None
    return JobOut(progress=progress, error=error, queue_position=queue_position, expected_start_at=expected_start,
                  expected_finish_at=finish, deadline_at_risk=at_risk, **data).model_dump(mode="json")


# -- pipelines ---------------------------------------------------------------------------------
class StepIn(_In):
    """One step: a job submission (as POST /jobs takes) with a name, and the step it waits for."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="The step's name; a later step's `base_model` or `model` may be `@name`: the "
                                  "model this step registers.")
    after: str | None = Field(default=None, description="The step this one starts after (it must succeed first); "
                                                         "default: the step before it in the list.")
    kind: str = Field(description="finetune, evaluate, batch_inference, pretrain or merge.")
    task: str | None = Field(default=None, description="As in POST /jobs.")
    params: dict[str, Any] = Field(description="As in POST /jobs.")
    priority: int = Field(default=5, ge=0, le=9)
    max_attempts: int | None = Field(default=None, ge=1, le=20)


class PipelineIn(_In):
    """Jobs that run one after another (or branch), each starting when the step it names has succeeded."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    steps: list[StepIn] = Field(min_length=1, max_length=20)


class StepOut(BaseModel):
    name: str
    after: str | None
    job: JobOut


class PipelineOut(_Out):
    id: int
    name: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] = Field(
        description="running once a step has started; at the end succeeded if every step did, failed if one "
                    "failed (the steps after it are cancelled with the reason), else cancelled.")
    progress: float = Field(description="Mean progress of the steps, 0 to 1.")
    created_at: UtcDatetime
    steps: list[StepOut]


class PipelineList(BaseModel):
    items: list[PipelineOut]
    next_cursor: int | None


class PipelineListQuery(_In):
    cursor: int | None = Field(default=None, ge=1, le=MAX_ROW_ID, description="`next_cursor` of the previous page.")
    limit: int = Field(default=20, ge=1, le=100)


class PipelineEventOut(EventOut):
    job_id: int
    pipeline_step: str


class PipelineEventList(BaseModel):
    items: list[PipelineEventOut]
    next_cursor: int = Field(description="Pass as `after` to get only newer events.")
