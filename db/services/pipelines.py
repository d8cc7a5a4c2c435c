"""Pipelines: jobs submitted together as steps, each a normal job row that waits for the one before.

A step that depends on another is inserted with status `waiting` and no outbox message. When the
step it depends on ends, `advance` (called in the same transaction as that job's terminal write, and
by the sweeper as a backstop) either releases it (waiting -> queued, its outbox message added, its
`@step` model references resolved to the model that step registered) or cancels it with the reason
(waiting -> cancelled), which in turn cancels the steps waiting on it. Everything is in SQL rows, so a
worker, the API or the whole machine dying at any moment leaves a pipeline that the next transaction
or sweep carries on from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, aliased

from db.base import utcnow
from db.enums import TERMINAL_STATUSES, JobStatus
from db.errors import NotFound
from db.models import Job, JobDataset, JobEvent, ModelArtifact, Pipeline
from db.services.ids import is_row_id
from db.services.jobs import (
    EVENT_FIELDS,
    add_event,
    create_job,
    enqueue,
    request_cancel,
    status_guard,
)

STEP_REFERENCE = "@"  # a model parameter "@name" is the model the pipeline's step `name` registers
MODEL_PARAMS = ("base_model", "model")
ADVANCE_BATCH = 500


@dataclass(frozen=True)
class Step:
    """One step as the caller checked it: a job to create, and the earlier step it waits for."""

    name: str
    kind: str
    task: str
    params: dict[str, Any]
    queue: str
    priority: int = 5
    max_attempts: int = 3
    after: str | None = None
    datasets: list[tuple[int, str]] = field(default_factory=list)


def step_references(params: dict[str, Any]) -> dict[str, str]:
    """Return {parameter: step name} for the model parameters that name a step (`@name`)."""
    return {key: value[len(STEP_REFERENCE):] for key in MODEL_PARAMS
            if isinstance(value := params.get(key), str) and value.startswith(STEP_REFERENCE)}


def create_pipeline(session: Session, *, tenant_id: int, name: str | None, steps: list[Step],
                    publish_grace_seconds: float = 0.0) -> Pipeline:
    """Insert the pipeline and one job per step; steps without `after` are queued at once.

    Steps come in an order where each one's `after` names an earlier step (the caller checked).
    `publish_grace_seconds` as in `create_job`, for the steps queued at once.
    """
    pipeline = Pipeline(tenant_id=tenant_id, name=name)
    session.add(pipeline)
    session.flush()
    jobs: dict[str, Job] = {}
    for step in steps:
        if step.after is None:
            job, _ = create_job(session, tenant_id=tenant_id, kind=step.kind, task=step.task, params=step.params,
                                queue=step.queue, priority=step.priority, max_attempts=step.max_attempts,
                                datasets=step.datasets, publish_grace_seconds=publish_grace_seconds)
        else:
            job = _waiting_job(session, tenant_id, step, jobs[step.after])
        job.pipeline_id, job.pipeline_step = pipeline.id, step.name
        jobs[step.name] = job
    session.flush()
    return pipeline


def _waiting_job(session: Session, tenant_id: int, step: Step, dependency: Job) -> Job:
    job = Job(
        tenant_id=tenant_id, kind=step.kind, task=step.task, params=step.params, queue=step.queue,
        priority=step.priority, max_attempts=step.max_attempts, status=JobStatus.WAITING,
        depends_on_id=dependency.id, datasets=[JobDataset(dataset_id=d, role=role) for d, role in step.datasets],
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "status", f"waiting for step '{step.after}' (job {dependency.id}) to succeed",
              data={"status": str(JobStatus.WAITING), "depends_on": dependency.id})
    return job


def advance(session: Session, *, ended: Iterable[int] | None = None) -> dict[str, int]:
    """Release or cancel the waiting steps whose dependency has ended; return the counts.

    `ended`: ids of jobs that just ended (their dependents are looked at, and theirs in turn);
    None looks at every waiting step (the sweeper's backstop).
    """
    counts = {"released": 0, "cancelled": 0}
    frontier = None if ended is None else list(ended)
    while frontier is None or frontier:
        dependency = aliased(Job)
        query = (select(Job, dependency).join(dependency, Job.depends_on_id == dependency.id)
                 .where(Job.status == JobStatus.WAITING, dependency.status.in_(TERMINAL_STATUSES)))
        if frontier is not None:
            query = query.where(Job.depends_on_id.in_(frontier))
        cancelled: list[int] = []
        for job, before in session.execute(query.order_by(Job.id).limit(ADVANCE_BATCH)).all():
            if before.status == JobStatus.SUCCEEDED and _release(session, job, before):
                counts["released"] += 1
            elif before.status != JobStatus.SUCCEEDED and _cancel(session, job, _why_not_run(before)):
                counts["cancelled"] += 1
                cancelled.append(job.id)
        if not cancelled:  # released steps are queued, not ended: nothing waits on them yet
            break
        frontier = cancelled if frontier is not None else None
    return counts


def _release(session: Session, job: Job, before: Job) -> bool:
    """Queue `job` now that `before` succeeded, with its step references resolved."""
    params, missing = _resolved(session, job)
    if missing:
        return _cancel(session, job, missing)
    now = utcnow()
    released = session.execute(
        update(Job).where(Job.id == job.id, status_guard(JobStatus.WAITING, JobStatus.QUEUED))
        .values(status=JobStatus.QUEUED, params=params, updated_at=now)
    ).rowcount == 1
    if released:
        session.refresh(job)
        enqueue(session, job)
        add_event(session, job.id, "status",
                  f"step '{before.pipeline_step}' (job {before.id}) succeeded; queued on '{job.queue}'",
                  data={"status": str(JobStatus.QUEUED), "depends_on": before.id})
    return released


def _resolved(session: Session, job: Job) -> tuple[dict[str, Any], str | None]:
    """Return the job's parameters with `@step` references replaced by `name:version`, or why not."""
    params = dict(job.params)
    for key, step in step_references(params).items():
        source = session.scalars(select(Job).where(Job.pipeline_id == job.pipeline_id, Job.pipeline_step == step)
                                 .order_by(Job.id.desc())).first()  # its newest job: a retried step's last run
        artifact = session.get(ModelArtifact, source.model_artifact_id) if source and source.model_artifact_id else None
        if artifact is None:
            return params, f"not run: step '{step}' registered no model for its {key} parameter"
        params[key] = f"{artifact.name}:{artifact.version}"
    return params, None


def _why_not_run(before: Job) -> str:
    reason = f"not run: step '{before.pipeline_step}' (job {before.id}) {before.status}"
    return reason + (f": {before.error_message}" if before.error_message else "")


def _cancel(session: Session, job: Job, reason: str, code: str = "dependency_not_succeeded") -> bool:
    now = utcnow()
    cancelled = session.execute(
        update(Job).where(Job.id == job.id, status_guard(JobStatus.WAITING, JobStatus.CANCELLED))
        .values(status=JobStatus.CANCELLED, finished_at=now, updated_at=now, error_code=code, error_message=reason)
    ).rowcount == 1
    if cancelled:
        add_event(session, job.id, "status", reason, level="warning",
                  data={"status": str(JobStatus.CANCELLED), "error_code": code})
    return cancelled


def get_pipeline(session: Session, tenant_id: int, pipeline_id: int) -> Pipeline:
    """Return the tenant's pipeline or raise NotFound."""
    pipeline = session.get(Pipeline, pipeline_id) if is_row_id(pipeline_id) else None
    if pipeline is None or pipeline.tenant_id != tenant_id:
        raise NotFound(f"pipeline {pipeline_id} not found", code="pipeline_not_found")
    return pipeline


def list_pipelines(session: Session, tenant_id: int, *, limit: int = 50, before_id: int | None = None) -> list[Pipeline]:
    """Return the tenant's pipelines, newest first."""
    query = select(Pipeline).where(Pipeline.tenant_id == tenant_id)
    if before_id:
        query = query.where(Pipeline.id < before_id)
    return list(session.scalars(query.order_by(Pipeline.id.desc()).limit(limit)))


def pipeline_steps(session: Session, pipeline_ids: list[int]) -> dict[int, list[Job]]:
    """Return each pipeline's steps in step order, each as its newest job (a retried step's earlier jobs are
    history: `pipeline_jobs` has them)."""
    steps: dict[int, dict[str, Job]] = {pipeline_id: {} for pipeline_id in pipeline_ids}
    for job in session.scalars(select(Job).where(Job.pipeline_id.in_(pipeline_ids)).order_by(Job.id)):
        steps[job.pipeline_id][job.pipeline_step] = job  # a later job of a step takes its place, not a new one
    return {pipeline_id: list(by_name.values()) for pipeline_id, by_name in steps.items()}


def lock_pipeline(session: Session, pipeline_id: int) -> None:
    """Hold the pipeline's row until the transaction ends (a write, so SQLite takes its lock too): two retries
    of one pipeline run one after the other, and the second sees the first's jobs."""
    session.execute(update(Pipeline).where(Pipeline.id == pipeline_id).values(name=Pipeline.name))


def pipeline_jobs(session: Session, pipeline_id: int) -> list[Job]:
    """Return every job of the pipeline, retried steps' earlier ones included, oldest first."""
    return list(session.scalars(select(Job).where(Job.pipeline_id == pipeline_id).order_by(Job.id)))


def retry_pipeline(session: Session, pipeline: Pipeline, steps: list[Step], *,
                   publish_grace_seconds: float = 0.0) -> list[Job]:
    """Run the given steps of an ended pipeline again, as new jobs of the same pipeline; return them.

    `steps`: the steps that did not succeed, in step order, as the caller checked them (params as their
    last job held them; `after` names the step each waits for). A step after none is queued at once; a
    step after one that succeeded waits for that job and is released now, through `advance`, as if it
    had just ended (its `@step` references resolved to the model that job registered); a step after one
    run again waits for the new job. Earlier jobs stay as they were, the pipeline's history.
    """
    current = {job.pipeline_step: job for job in pipeline_steps(session, [pipeline.id])[pipeline.id]}
    new: dict[str, Job] = {}
    succeeded_before: list[int] = []
    for step in steps:
        earlier = current[step.name]
        if step.after is None:
            job, _ = create_job(session, tenant_id=pipeline.tenant_id, kind=step.kind, task=step.task,
                                params=step.params, queue=step.queue, priority=step.priority,
                                max_attempts=step.max_attempts, datasets=step.datasets,
                                publish_grace_seconds=publish_grace_seconds)
        else:
            dependency = new.get(step.after) or current[step.after]
            job = _waiting_job(session, pipeline.tenant_id, step, dependency)
            if dependency.status == JobStatus.SUCCEEDED:
                succeeded_before.append(dependency.id)
        job.pipeline_id, job.pipeline_step = pipeline.id, step.name
        add_event(session, job.id, "log", f"step '{step.name}' run again: job {earlier.id} {earlier.status}",
                  data={"retry_of": earlier.id})
        new[step.name] = job
    session.flush()
    if succeeded_before:
        advance(session, ended=succeeded_before)
    for job in new.values():
        session.refresh(job)
    return list(new.values())


def summarize(steps: list[Job]) -> dict[str, Any]:
    """Return the pipeline's status and progress, from its steps' rows.

    running while a step runs or is queued after one has started; queued before that; at the end
    succeeded when every step did, failed when one failed, else cancelled.
    """
    statuses = [JobStatus(job.status) for job in steps]
    if all(status.terminal for status in statuses):
        status = ("succeeded" if all(s == JobStatus.SUCCEEDED for s in statuses)
                  else "failed" if JobStatus.FAILED in statuses else "cancelled")
    elif any(s == JobStatus.RUNNING or s.terminal for s in statuses):
        status = "running"
    else:
        status = "queued"
    done = [1.0 if job.status == JobStatus.SUCCEEDED else (job.progress_fraction or 0.0) for job in steps]
    return {"status": status, "progress": sum(done) / len(done) if done else 0.0,
            "steps_by_status": {str(s): statuses.count(s) for s in JobStatus if s in statuses}}


def cancel_pipeline(session: Session, tenant_id: int, pipeline_id: int) -> list[Job]:
    """Cancel every step that has not ended (a running one stops at its next heartbeat)."""
    get_pipeline(session, tenant_id, pipeline_id)
    steps = pipeline_steps(session, [pipeline_id])[pipeline_id]
    for job in steps:  # the waiting ones first: a step ending now must not release them
        if job.status == JobStatus.WAITING:
            _cancel(session, job, f"not run: pipeline {pipeline_id} was cancelled", code="pipeline_cancelled")
    for job in steps:
        session.refresh(job)
        if not JobStatus(job.status).terminal and not job.cancel_requested:
            request_cancel(session, tenant_id, job.id)
    return steps


def pipeline_events(session: Session, pipeline_id: int, *, after_id: int = 0, limit: int = 500) -> list:
    """Return the events of the pipeline's jobs (retried steps' earlier ones too) with id above `after_id`,
    oldest first, each with its job's id and step."""
    query = (select(*EVENT_FIELDS, JobEvent.job_id, Job.pipeline_step).join(Job, Job.id == JobEvent.job_id)
             .where(Job.pipeline_id == pipeline_id, JobEvent.id > after_id).order_by(JobEvent.id).limit(limit))
    return list(session.execute(query))

