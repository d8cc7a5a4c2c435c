"""Job submission, status, events, cancellation and output download."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Blueprint, jsonify, request, send_file
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import db_session, services
from api.auth import tenant_id
from api.openapi import parse_body, parse_query, spec
from api.schemas import EventList, EventOut, EventQuery, JobIn, JobList, JobListQuery, JobOut, job_out
from db.errors import Conflict, InvalidInput, NotFound
from db.models import Dataset
from db.services.datasets import get_dataset
from db.services.jobs import create_job, get_job, list_events, list_jobs, request_cancel
from db.services.registry import resolve_model
from worker.catalog import ModelRefError, resolve_unregistered
from worker.outbox import relay_outbox

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)

IDEMPOTENCY_KEY_MAX = 200


@bp.post("/jobs")
@spec("Submit a finetune, evaluate or batch_inference job", body=JobIn, response=JobOut, status=202)
def submit():
    submission = parse_body(JobIn).root
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= IDEMPOTENCY_KEY_MAX):
        raise InvalidInput(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters", code="bad_idempotency_key")
    session = db_session()
    datasets = _check_references(session, submission)
    try:
        job, created = _create(session, submission, key, datasets)
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the insert: return its job
        session.rollback()
        job, created = _create(session, submission, key, datasets)
    if created:
        _publish_now(job.id)
    return jsonify(job_out(job)), 202 if created else 200


def _create(session: Session, submission, key: str | None, datasets: list[tuple[int, str]]):
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
    )


def _publish_now(job_id: int) -> None:
    """Publish the job's outbox message; if the broker is down, beat's relay sends it later."""
    try:
        relay_outbox(services().session_factory, services().celery, job_ids=[job_id])
    except Exception as exc:  # the job is committed; only the wake-up call is late
        log.warning("could not publish job %s now (%s); the relay will retry", job_id, exc)


def _check_references(session: Session, submission) -> list[tuple[int, str]]:
    """Check that datasets and models exist for this tenant; return (dataset_id, role) pairs."""
    params, kind = submission.params, submission.kind
    if kind == "finetune":
        train = _labelled(session, params.train_dataset_id, "params.train_dataset_id")
        pairs = [(train.id, "train")]
        if params.validation_dataset_id is not None:
            validation = _labelled(session, params.validation_dataset_id, "params.validation_dataset_id")
            pairs.append((validation.id, "validation"))
        _check_model(session, params.base_model, "params.base_model")
        return pairs
    _check_model(session, params.model, "params.model")
    if kind == "evaluate":
        return [(_labelled(session, params.dataset_id, "params.dataset_id").id, "evaluate")]
    dataset = _dataset(session, params.dataset_id, "params.dataset_id")
    column = params.text_column or dataset.text_column
    if column not in dataset.columns:
        raise InvalidInput(
            f"dataset {dataset.id} has no column '{column}'; its columns are {dataset.columns}",
            code="missing_column", details={"field": "params.text_column", "columns": dataset.columns},
        )
    return [(dataset.id, "input")]


def _dataset(session: Session, dataset_id: int, field: str) -> Dataset:
    try:
        return get_dataset(session, tenant_id(), dataset_id)
    except NotFound as exc:
        raise InvalidInput(f"{field}: {exc.message}", code="dataset_not_found", details={"field": field}) from None


def _labelled(session: Session, dataset_id: int, field: str) -> Dataset:
    dataset = _dataset(session, dataset_id, field)
    if not dataset.label_column:
        raise InvalidInput(
            f"{field}: dataset {dataset_id} has no label column; upload it again with label_column=...",
            code="dataset_unlabelled", details={"field": field},
        )
    return dataset


def _check_model(session: Session, ref: str, field: str) -> None:
    if resolve_model(session, tenant_id(), ref) is not None:
        return
    try:
        resolve_unregistered(ref, hub_enabled=services().settings.hub_enabled)
    except ModelRefError as exc:
        raise InvalidInput(f"{field}: {exc.message}", code=exc.code, details={"field": field}) from None


@bp.get("/jobs")
@spec("List jobs, newest first", query=JobListQuery, response=JobList)
def list_all():
    query = parse_query(JobListQuery)
    jobs = list_jobs(db_session(), tenant_id(), status=query.status, kind=query.kind,
                     before_id=query.cursor, limit=query.limit)
    next_cursor = jobs[-1].id if len(jobs) == query.limit else None
    return jsonify({"items": [job_out(j) for j in jobs], "next_cursor": next_cursor})


@bp.get("/jobs/<int:job_id>")
@spec("Get a job with its progress", response=JobOut)
def get_one(job_id: int):
    return jsonify(job_out(get_job(db_session(), tenant_id(), job_id)))


@bp.post("/jobs/<int:job_id>/cancel")
@spec("Cancel a job (queued: never starts; running: stops within seconds)", response=JobOut, status=202)
def cancel(job_id: int):
    session = db_session()
    job = request_cancel(session, tenant_id(), job_id)
    session.commit()
    return jsonify(job_out(job)), 202


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
    job = get_job(db_session(), tenant_id(), job_id)
    if job.kind != "batch_inference":
        raise Conflict(f"job {job_id} is a {job.kind} job; only batch_inference jobs have an output file",
                       code="no_output")
    if job.status != "succeeded" or not job.output_path:
        raise Conflict(f"job {job_id} is {job.status}; its output is ready when it has succeeded", code="not_ready")
    path = Path(job.output_path)
    if request.args.get("file") == "errors":
        path = path.with_name("errors.jsonl")
    if not path.is_file():
        raise NotFound(f"the output file of job {job_id} is missing from storage", code="output_missing")
    return send_file(path, mimetype="application/x-ndjson", as_attachment=True,
                     download_name=f"job-{job_id}-{path.name}")
