"""Job submission, status, events, cancellation and output download."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from flask import Blueprint, g, jsonify, request, send_file
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import db_session, services, storage
from api.auth import tenant_id
from api.openapi import parse_body, parse_query, spec
from api.retries import check_has_failed_rows, check_retried_rows
from api.schemas import EventList, EventOut, EventQuery, JobIn, JobList, JobListQuery, JobOut, RetryIn, job_out
from db.enums import JobStatus
from db.base import utcnow
from db.errors import Conflict, InvalidInput, NotFound
from db.models import Dataset, Job, ModelArtifact
from db.services.datasets import read_dataset
from db.services.jobs import add_event, create_job, get_job, list_events, list_jobs, request_cancel
from db.services.pipelines import STEP_REFERENCE
from db.services.estimates import check_deadline, expected_start, place_in_line, run_seconds
from db.services.schedule import parse_windows, window_opens, zone
from db.services.registry import resolve_model
from worker.catalog import ModelRefError, resolve_unregistered
from worker.errors import PermanentJobError
from worker.ml import adapters, stopping
from worker.ml.layers import config_layer_count
from worker.ml.tasks import LANGUAGE_MODELING, eval_metrics, get_task, input_columns, untrained_for
from worker.outbox import SUBMIT_PUBLISH_GRACE_SECONDS, publish_submitted
from worker.storage import Storage

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)

IDEMPOTENCY_KEY_MAX = 200
# The steps whose models the submission being checked may name as "@step" (set while a pipeline's steps are checked).
STEP_MODELS: ContextVar[frozenset[str]] = ContextVar("step_models", default=frozenset())
LABELS_NAMED = 10  # labels quoted in an error message; details carry them all


@bp.post("/jobs")
@spec("Submit a finetune, evaluate, batch_inference, pretrain or merge job", body=JobIn, response=JobOut, status=202)
def submit():
    submission = parse_body(JobIn).root
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= IDEMPOTENCY_KEY_MAX):
        raise InvalidInput(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters", code="bad_idempotency_key")
    job, created, answer = create_submission(submission, key, answer=_job_with_place)
    return jsonify(answer), 202 if created else 200


def _job_with_place(job: Job) -> dict:
    """The job as JSON with its place in its queue and when it should start."""
    settings = services().settings
    position, start = place_in_line(db_session(), job, alive_within_seconds=settings.worker_stale_seconds,
                                    cap=settings.max_running_per_tenant)
    return job_out(job, queue_position=position, expected_start=start)


def create_submission(submission, key: str | None = None, *, answer: Callable[[Job], Any] | None = None,
                      ) -> tuple[Job, bool, Any]:
    """Check a parsed submission (`JobIn.root`), insert its job and publish it; return (job, created, answer).

    `answer(job)`, if given, runs in the job's own transaction, before its commit (a POST's answer: the job
    with its place in line; no second transaction to begin and end). The API's POST /jobs and the
    dashboard's new-job form both submit through here.
    """
    session = db_session()
    datasets = _check_references(session, submission)
    deadline = _deadline(submission)
    run_window = _run_window(submission)
    try:
        job, created = _create(session, submission, key, datasets, deadline=deadline, run_window=run_window)
        if created and deadline is not None:  # a warning now if it cannot make its deadline behind the jobs ahead
            settings = services().settings
            check_deadline(session, job, starting_at=expected_start(
                session, job, alive_within_seconds=settings.worker_stale_seconds, cap=settings.max_running_per_tenant))
        answered = answer(job) if answer else None
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the insert: return its job
        session.rollback()
        job, created = _create(session, submission, key, datasets, deadline=deadline, run_window=run_window)
        answered = answer(job) if answer else None
    if created and job.status == JobStatus.QUEUED:  # a scheduled job's message is written when it is released
        _publish_now(job)
    return job, created, answered


def _create(session: Session, submission, key: str | None, datasets: list[tuple[int, str]], **extra):
    settings = services().settings
    return create_job(
        session,
        tenant_id=tenant_id(),
        kind=submission.kind,
        task=submission.task,
        params=submission.params.model_dump(mode="json"),
        queue=settings.queue_for(submission.kind),
        priority=submission.priority,
        max_attempts=submission.max_attempts or settings.max_attempts,
        idempotency_key=key,
        datasets=datasets,
        publish_grace_seconds=SUBMIT_PUBLISH_GRACE_SECONDS,
        not_before=start_time(submission.not_before),
        estimate=partial(run_seconds, row_counts=g.get("dataset_rows")),
        **extra,
    )


def _deadline(submission) -> datetime | None:
    """The submission's deadline as naive UTC; refused unless it is ahead (of now, and of not_before)."""
    if submission.deadline is None:
        return None
    deadline = submission.deadline
    deadline = deadline.astimezone(UTC).replace(tzinfo=None) if deadline.tzinfo else deadline
    earliest = max(utcnow(), start_time(submission.not_before) or utcnow())
    if deadline <= earliest:
        raise InvalidInput(f"deadline: {deadline:%Y-%m-%d %H:%M:%S} UTC has passed or comes before the job may start "
                           f"({earliest:%Y-%m-%d %H:%M:%S} UTC); give a later deadline or an earlier not_before",
                           code="deadline_passed", details={"field": "deadline"})
    return deadline


PAUSABLE_KINDS = ("finetune", "pretrain", "batch_inference")  # what a paused attempt keeps: checkpoints, chunks


def _run_window(submission) -> str | None:
    """The window a job keeps to (pause_outside_window), or None; refused where it cannot pause."""
    if not submission.pause_outside_window:
        return None
    name = submission.not_before
    if not isinstance(name, str) or name[:1].isdigit():
        raise InvalidInput("pause_outside_window: not_before must name a run window (e.g. nightly) for the job to "
                           "pause when it closes", code="window_required", details={"field": "pause_outside_window"})
    if submission.kind not in PAUSABLE_KINDS:
        raise InvalidInput(f"pause_outside_window: {submission.kind} jobs have nothing to resume from and run to their "
                           f"end; only {', '.join(PAUSABLE_KINDS)} jobs pause", code="cannot_pause",
                           details={"field": "pause_outside_window", "kinds": list(PAUSABLE_KINDS)})
    return name


def start_time(not_before: datetime | str | None) -> datetime | None:
    """Resolve a submission's `not_before` (a time, or a run window's name) to naive UTC."""
    if not_before is None:
        return None
    if isinstance(not_before, str) and not_before[:1].isdigit():
        try:
            not_before = datetime.fromisoformat(not_before)
        except ValueError:
            raise InvalidInput(f"not_before: {not_before!r} is not an ISO 8601 time (e.g. 2026-12-01T22:00:00Z)",
                               code="invalid_input", details={"field": "not_before"}) from None
    if isinstance(not_before, datetime):
        return not_before.astimezone(UTC).replace(tzinfo=None) if not_before.tzinfo else not_before
    settings = services().settings
    try:
        windows = parse_windows(settings.run_windows)
        tz = zone(settings.timezone)
    except ValueError as exc:
        raise InvalidInput(f"not_before: the service's run windows are misconfigured: {exc}",
                           code="bad_run_windows", details={"field": "not_before"}) from None
    window = windows.get(not_before)
    if window is None:
        known = ", ".join(str(w) for w in windows.values()) or "none are configured (NIGHTSHIFT_RUN_WINDOWS)"
        raise InvalidInput(f"not_before: {not_before!r} is neither a time (ISO 8601, e.g. 2026-12-01T22:00:00Z) nor "
                           f"a run window; the windows are {known} ({settings.timezone})",
                           code="unknown_window", details={"field": "not_before", "windows": list(windows)})
    return window_opens(window, tz, utcnow())


def _publish_now(job: Job) -> None:
    """Publish the committed job's outbox message; if the broker is down, beat's relay sends it later."""
    try:
        publish_submitted(services().engine, services().celery, job, services().sent_marks)
    except Exception:  # the job is committed; only the wake-up call is late
        log.warning("could not publish job %s now; the relay will retry", job.id, exc_info=True)


def _check_references(session: Session, submission) -> list[tuple[int, str]]:
    """Refuse a job that names missing data or models, or that cannot succeed on its data."""
    params, kind, task = submission.params, submission.kind, submission.task
    if kind == "finetune":
        return _check_finetune(session, params, task)
    if kind == "pretrain":
        return _check_pretrain(session, params)
    artifact = _check_model(session, params.model, "params.model", task=None if kind == "merge" else task)
    if kind == "merge":
        _check_adapter(params.model, artifact)
    if artifact is not None and artifact.task == LANGUAGE_MODELING:
        raise InvalidInput(
            f"params.model: model {artifact.name}:{artifact.version} is a pre-trained language model without a "
            f"{task} head (a pretrain job made it); fine-tune it first (a finetune job with base_model="
            f"{artifact.name}:{artifact.version}) and use the fine-tuned model",
            code="no_task_head", details={"field": "params.model", "model_task": artifact.task, "task": task},
        )
    if artifact is not None and artifact.task != task:
        raise InvalidInput(
            f"params.model: model {artifact.name}:{artifact.version} is a {artifact.task} model; this job is "
            f"{task}: submit it with task={artifact.task}, or use a {task} model",
            code="wrong_task", details={"field": "params.model", "model_task": artifact.task, "task": task},
        )
    if kind == "merge":
        return []
    if kind == "evaluate":
        dataset = _labelled(session, params.dataset_id, "params.dataset_id")
        _check_task(dataset, task, "params.dataset_id")
        if artifact is not None and artifact.label_names:
            _check_model_knows_labels(dataset, artifact, "params.dataset_id")
        return [(dataset.id, "evaluate")]
    dataset = _dataset(session, params.dataset_id, "params.dataset_id")
    columns = input_columns(task, dataset.columns_by_role, params.text_column or dataset.text_column)
    for role in get_task(task).INPUT_ROLES:
        column = columns.get(role)
        if column not in dataset.columns:
            named = f"column '{column}'" if column else f"{role} column"
            raise InvalidInput(
                f"dataset {dataset.id} has no {named}; its columns are {dataset.columns}"
                + ("" if role == "text" else f": upload the {' and '.join(get_task(task).INPUT_ROLES)} with task={task}"),
                code="missing_column", details={"field": "params.text_column" if role == "text" else "params.dataset_id",
                                                "columns": dataset.columns},
            )
    if params.only_failed_rows_of is not None:
        check_retried_rows(session, tenant_id(), params.only_failed_rows_of, task, dataset)
    return [(dataset.id, "input")]


def _check_adapter(ref: str, artifact: ModelArtifact | None) -> None:
    """Refuse a merge of anything but a registered LoRA adapter (or the model of a pipeline step)."""
    if artifact is None and ref.startswith(STEP_REFERENCE):
        return  # checked against the step that registers it (api/pipelines.py)
    if artifact is None:
        raise InvalidInput(f"params.model: '{ref}' is not a registered model; a merge folds a registered LoRA adapter "
                           "(the model of a fine-tune with lora) into its base model: name that model",
                           code="not_an_adapter", details={"field": "params.model"})
    if not _model_file(artifact.path, adapters.ADAPTER_FILE):
        raise InvalidInput(f"params.model: model {artifact.name}:{artifact.version} is a full model already; a merge "
                           "folds a LoRA adapter (the model of a fine-tune with lora) into its base model",
                           code="not_an_adapter", details={"field": "params.model"})


def _check_finetune(session: Session, params, task: str) -> list[tuple[int, str]]:
    """Check a fine-tune's datasets and base model; return (dataset_id, role) pairs."""
    field = "params.train_dataset_id"
    train = _labelled(session, params.train_dataset_id, field)
    _check_task(train, task, field)
    untrainable = get_task(task).check_trainable(train.stats)
    if untrainable is not None:
        role = list(get_task(task).ROLES)[-1]  # the target: what the model learns to predict
        column = train.columns_by_role[role]
        raise InvalidInput(
            f"{field}: dataset {train.id}'s {role} column '{column}' {untrainable.problem}",
            code=untrainable.code, details={"field": field, "column": column, **untrainable.details},
        )
    pairs = [(train.id, "train")]
    if params.validation_dataset_id is not None:
        validation = _labelled(session, params.validation_dataset_id, "params.validation_dataset_id")
        _check_task(validation, task, "params.validation_dataset_id")
        _check_validation(train, validation, "params.validation_dataset_id")
        pairs.append((validation.id, "validation"))
    # No validation_fraction check: worker/ml/data.py's split keeps at least one row on each side
    # of any dataset of two rows or more, and a one-row dataset already fails the class check.
    _check_model(session, params.base_model, "params.base_model")
    _check_training_control(session, params, task)
    return pairs


def _check_training_control(session: Session, params, task: str) -> None:
    """Refuse an early-stopping metric the task does not report, or more frozen layers than the model has."""
    try:
        stopping.watched_metric(params, eval_metrics(task))
    except PermanentJobError as exc:
        raise InvalidInput(f"params.early_stopping_metric: {exc}", code="unknown_metric",
                           details={"field": "params.early_stopping_metric", "metrics": list(eval_metrics(task))},
                           ) from None
    if getattr(params, "lora", None) is not None:
        _check_lora(session, params)
    if params.freeze_layers == 0:
        return
    artifact = resolve_model(session, tenant_id(), params.base_model)
    try:
        path = artifact.path if artifact else resolve_unregistered(params.base_model,
                                                                   hub_enabled=services().settings.hub_enabled)
        layers = config_layer_count(_model_file(path, "config.json"))
    except (ModelRefError, OSError, ValueError):
        return  # a hub model: the worker counts its layers once it is loaded
    if layers is not None and params.freeze_layers > layers:
        raise InvalidInput(
            f"params.freeze_layers: {params.freeze_layers} is more than the {layers} transformer layers of model "
            f"'{params.base_model}'; choose at most {layers} ({layers} freezes every layer and trains the head alone)",
            code="too_many_frozen_layers", details={"field": "params.freeze_layers", "layers": layers},
        )


def _check_lora(session: Session, params) -> None:
    """Refuse an adapter as the base of a LoRA fine-tune, and target modules the base model's family lacks."""
    artifact = resolve_model(session, tenant_id(), params.base_model)
    if artifact is not None and storage().exists(Storage.join(artifact.path, adapters.PEFT_CONFIG)):
        raise InvalidInput(
            f"params.base_model: model {artifact.name}:{artifact.version} is a LoRA adapter of {artifact.base_model}: "
            f"fine-tune from {artifact.base_model}, or from a full model (merge_adapter registers one)",
            code="adapter_as_base", details={"field": "params.base_model", "adapter_of": artifact.base_model})
    if params.lora.target_modules is None:
        return
    try:
        path = artifact.path if artifact else resolve_unregistered(params.base_model,
                                                                   hub_enabled=services().settings.hub_enabled)
        model_type = _model_file(path, "config.json").get("model_type")
    except (ModelRefError, OSError, ValueError, AttributeError):
        return  # a hub model: the worker checks the names once it is loaded
    found = adapters.unknown_targets(model_type, params.lora.target_modules)
    if found is not None:
        unknown, known = found
        raise InvalidInput(
            f"params.lora.target_modules: {', '.join(unknown)} is not a linear layer of a {model_type} model like "
            f"'{params.base_model}'; its linear layers are {', '.join(known)}",
            code="unknown_target_module", details={"field": "params.lora.target_modules", "unknown": unknown,
                                                   "linear_layers": list(known)})


def _check_pretrain(session: Session, params) -> list[tuple[int, str]]:
    """Check a pretrain job's text datasets and base model; return (dataset_id, role) pairs."""
    if params.freeze_base:
        raise InvalidInput("params.freeze_base: pre-training trains the language model itself, not a head over a fixed "
                           "one: drop freeze_base (freeze_layers keeps the lower layers fixed)",
                           code="freeze_base_not_for_pretrain", details={"field": "params.freeze_base"})
    train = _text_dataset(session, params.train_dataset_id, params.text_column, "params.train_dataset_id")
    if params.validation_dataset_id is None and train.row_count < 2:
        raise InvalidInput(
            f"params.train_dataset_id: dataset {train.id} holds one document, and perplexity is measured on held-out "
            "documents: upload two or more (a .txt file: one per line, or paragraphs between blank lines) or give "
            "params.validation_dataset_id",
            code="too_few_documents", details={"field": "params.train_dataset_id", "row_count": train.row_count},
        )
    pairs = [(train.id, "train")]
    if params.validation_dataset_id is not None:
        validation = _text_dataset(session, params.validation_dataset_id, params.text_column,
                                   "params.validation_dataset_id")
        pairs.append((validation.id, "validation"))
    _check_model(session, params.base_model, "params.base_model")
    _check_training_control(session, params, LANGUAGE_MODELING)
    return pairs


def _text_dataset(session: Session, dataset_id: int, text_column: str | None, field: str) -> Dataset:
    """Return a dataset with a column of text to pre-train on: `text_column`, else its text role's column."""
    dataset = _dataset(session, dataset_id, field)
    column = text_column or dataset.columns_by_role.get("text")
    if column is None:
        raise InvalidInput(
            f"{field}: dataset {dataset.id} holds {dataset.task} data without a text column; name the column to "
            f"pre-train on with params.text_column (its columns are {dataset.columns}), or upload plain text "
            "(a text column, or a .txt file) without task=...",
            code="missing_column", details={"field": "params.text_column", "columns": dataset.columns},
        )
    if column not in dataset.columns:
        raise InvalidInput(
            f"{field}: dataset {dataset.id} has no column '{column}'; its columns are {dataset.columns}",
            code="missing_column", details={"field": "params.text_column", "columns": dataset.columns},
        )
    return dataset


def _check_task(dataset: Dataset, task: str, field: str) -> None:
    """Refuse labelled data of another task than the job's."""
    held = dataset.task or "text-classification"  # labelled data from before tasks were recorded
    if held != task:
        raise InvalidInput(
            f"{field}: dataset {dataset.id} holds {held} data; this job is {task}: upload the data with "
            f"task={task} (or submit the job with task={held})",
            code="wrong_task", details={"field": field, "dataset_task": held, "task": task},
        )


def _dataset(session: Session, dataset_id: int, field: str) -> Dataset:
    try:
        dataset = read_dataset(session, tenant_id(), dataset_id)
    except NotFound as exc:
        raise InvalidInput(f"{field}: {exc.message}", code="dataset_not_found", details={"field": field}) from None
    g.setdefault("dataset_rows", {})[dataset.id] = dataset.row_count  # the job's estimate needs no query of its own
    return dataset


def _labelled(session: Session, dataset_id: int, field: str) -> Dataset:
    dataset = _dataset(session, dataset_id, field)
    if not dataset.label_column:
        raise InvalidInput(
            f"{field}: dataset {dataset_id} has no labels; upload it again with label_column=... (text "
            "classification) or with task=... and the task's columns",
            code="dataset_unlabelled", details={"field": field},
        )
    if dataset.row_count == 0:
        raise InvalidInput(
            f"{field}: dataset {dataset_id} has no rows; upload a file with labelled examples",
            code="dataset_empty", details={"field": field},
        )
    return dataset


def _label_counts(dataset: Dataset) -> dict[str, int] | None:
    """Return the label distribution counted at upload, or None where the row lacks it."""
    counts = (dataset.stats or {}).get("label_distribution")
    return counts if isinstance(counts, dict) else None


def _check_validation(train: Dataset, validation: Dataset, field: str) -> None:
    """Refuse a validation dataset the worker cannot read with train's columns, or with unseen classes."""
    for role, column in train.columns_by_role.items():
        if column not in validation.columns:
            raise InvalidInput(
                f"{field}: dataset {validation.id} has no column '{column}'; its columns are {validation.columns}. "
                f"Validation data is read with the columns of train dataset {train.id}: upload it with its "
                f"{role} in a column named '{column}'",
                code="missing_column", details={"field": field, "column": column, "columns": validation.columns},
            )
    train_counts, counts = _label_counts(train), _label_counts(validation)
    if validation.label_column != train.label_column or train_counts is None or counts is None:
        return
    unknown = sorted(set(counts) - set(train_counts))
    if unknown:
        raise InvalidInput(
            f"{field}: dataset {validation.id}'s label column '{validation.label_column}' has "
            f"{_classes(len(unknown))} that train dataset {train.id} lacks ({_quoted(unknown)}); "
            "a model trained on it cannot predict them: add them to the train data or drop those rows",
            code="unknown_labels",
            details={"field": field, "column": validation.label_column, "unknown": unknown},
        )


def _check_model_knows_labels(dataset: Dataset, artifact: ModelArtifact, field: str) -> None:
    """Refuse an evaluation whose data holds classes the registered model was not trained on."""
    counts = _label_counts(dataset)
    unknown = sorted(set(counts or ()) - set(artifact.label_names))
    if not unknown:
        return
    model = f"{artifact.name}:{artifact.version}"
    raise InvalidInput(
        f"{field}: dataset {dataset.id}'s label column '{dataset.label_column}' has {_classes(len(unknown))} "
        f"that model '{model}' does not know ({_quoted(unknown)}); it knows {_quoted(artifact.label_names)}: "
        "evaluate on data labelled with the model's classes",
        code="unknown_labels",
        details={"field": field, "column": dataset.label_column, "unknown": unknown,
                 "model_labels": artifact.label_names},
    )


def _classes(count: int) -> str:
    return f"{count} class" if count == 1 else f"{count} classes"


def _quoted(labels, limit: int = LABELS_NAMED) -> str:
    names = list(labels)
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _check_model(session: Session, ref: str, field: str, task: str | None = None) -> ModelArtifact | None:
    """Return the registered model `ref` names, None for another loadable reference, else refuse it.

    With `task` (evaluate, batch inference), a saved model must already have that task's head.
    """
    if ref.startswith(STEP_REFERENCE):
        if ref.removeprefix(STEP_REFERENCE) in STEP_MODELS.get():
            return None  # the model an earlier pipeline step registers: checked when this step is released
        raise InvalidInput(f"{field}: '{ref}' names a pipeline step; only a step of a pipeline (POST /pipelines) can "
                           "use the model an earlier step registers", code="step_reference", details={"field": field})
    artifact = resolve_model(session, tenant_id(), ref)
    if artifact is not None:
        return artifact
    try:
        path = resolve_unregistered(ref, hub_enabled=services().settings.hub_enabled)
    except ModelRefError as exc:
        raise InvalidInput(f"{field}: {exc.message}", code=exc.code, details={"field": field}) from None
    if task is None:
        return None
    architectures = _architectures(Path(path))
    if untrained_for(task, architectures):
        raise InvalidInput(
            f"{field}: model '{ref}' is a {', '.join(architectures)}, not a {task} model; its {task} head would "
            "be new and untrained: fine-tune it for the task first and use the trained model",
            code="wrong_task", details={"field": field, "architectures": architectures, "task": task},
        )
    return None


def _model_file(path: str, name: str) -> dict:
    """A JSON file of a model's directory, read where it is stored ({} if it has none)."""
    return storage().read_json(Storage.join(path, name))


def _architectures(path: Path) -> list[str]:
    """Return the architectures a local model's config.json names (empty for hub ids)."""
    try:
        names = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return []
    return [str(name) for name in names]


@bp.get("/jobs")
@spec("List jobs, newest first", query=JobListQuery, response=JobList)
def list_all():
    query = parse_query(JobListQuery)
    jobs = list_jobs(db_session(), tenant_id(), status=query.status, kind=query.kind, task=query.task,
                     model=query.model, search=query.q, before_id=query.cursor, limit=query.limit)
    next_cursor = jobs[-1].id if len(jobs) == query.limit else None
    return jsonify({"items": [job_out(j) for j in jobs], "next_cursor": next_cursor})


@bp.get("/jobs/<int:job_id>")
@spec("Get a job with its progress", response=JobOut)
def get_one(job_id: int):
    return jsonify(_job_with_place(get_job(db_session(), tenant_id(), job_id)))


@bp.post("/jobs/<int:job_id>/cancel")
@spec("Cancel a job (queued: never starts; running: stops within seconds)", response=JobOut, status=202)
def cancel(job_id: int):
    session = db_session()
    job = request_cancel(session, tenant_id(), job_id)
    session.commit()
    return jsonify(job_out(job)), 202


@bp.post("/jobs/<int:job_id>/retry")
@spec("Submit an ended job again as a new job: same kind, task, parameters (but those the body changes) and "
      "priority; with only_failed_rows, a batch_inference job's failed rows alone, merged into its predictions",
      body=RetryIn, body_required=False, response=JobOut, status=202)
def retry(job_id: int):
    body = parse_body(RetryIn, optional=True)
    return jsonify(job_out(resubmit(job_id, only_failed_rows=body.only_failed_rows, params=body.params))), 202


def resubmit(job_id: int, *, only_failed_rows: bool = False, params: dict | None = None) -> Job:
    """Queue a new job like the tenant's ended job `job_id`, checked as a fresh submission would be
    (its dataset may have been deleted since); the new job's first log line names the old one.

    `params` replace some of the old job's parameters (a fixed model, a corrected dataset). With
    `only_failed_rows`, the new batch_inference job gets `only_failed_rows_of=job_id`: it predicts only
    the rows of the old job's errors file and merges them into a copy of its predictions, one line per
    row in input order (worker/jobs/inference.py). A plain retry of such a job retries the same rows.
    """
    session = db_session()
    old = get_job(session, tenant_id(), job_id)
    new_params = {**old.params, **(params or {})}
    if only_failed_rows:
        check_has_failed_rows(old)
        new_params["only_failed_rows_of"] = job_id
    elif not JobStatus(old.status).terminal:
        raise Conflict(f"job {job_id} is {old.status}; only a job that has ended can be retried (cancel it first)",
                       code="job_not_ended")
    submission = JobIn.model_validate({"kind": old.kind, "task": old.task, "params": new_params,
                                       "priority": old.priority}).root
    datasets = _check_references(session, submission)
    job, _created = _create(session, submission, None, datasets)
    if only_failed_rows:
        add_event(session, job.id, "log", f"retry of the failed rows of job {job_id}",
                  data={"retry_of": job_id, "only_failed_rows": True})
    else:
        add_event(session, job.id, "log", f"retry of job {job_id}", data={"retry_of": job_id})
    session.commit()
    _publish_now(job)
    return job


@bp.get("/jobs/<int:job_id>/events")
@spec("Poll a job's events (logs, metrics, status changes) after a cursor", query=EventQuery, response=EventList)
def events(job_id: int):
    query = parse_query(EventQuery)
    session = db_session()
    get_job(session, tenant_id(), job_id)
    items = list_events(session, job_id, after_id=query.after, limit=query.limit, type_=query.type)
    body = EventList(items=[EventOut.model_validate(e) for e in items],
                     next_cursor=items[-1].id if items else query.after)
    return jsonify(body.model_dump(mode="json"))


@bp.get("/jobs/<int:job_id>/output")
@spec("Download a job's output (predictions JSONL; `?file=errors` for failed rows)", produces="application/x-ndjson")
def output(job_id: int):
    return send_output(job_id, errors=request.args.get("file") == "errors")


def send_output(job_id: int, *, errors: bool = False):
    """Stream the tenant's job output (or its error file) as a download, or say why there is none."""
    job = get_job(db_session(), tenant_id(), job_id)
    if job.kind != "batch_inference":
        raise Conflict(f"job {job_id} is a {job.kind} job; only batch_inference jobs have an output file",
                       code="no_output")
    if job.status != "succeeded" or not job.output_path:
        raise Conflict(f"job {job_id} is {job.status}; its output is ready when it has succeeded", code="not_ready")
    location = Storage.sibling(job.output_path, "errors.jsonl") if errors else job.output_path
    if not storage().exists(location):
        raise NotFound(f"the output file of job {job_id} is missing from storage", code="output_missing")
    # A local file is sent as a path (ranges, conditional requests); a stored one is streamed from the bucket.
    source = location if not storage().remote else storage().open(location)
    return send_file(source, mimetype="application/x-ndjson", as_attachment=True,
                     download_name=f"job-{job_id}-{PurePosixPath(location).name}")
