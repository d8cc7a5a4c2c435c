"""Pipelines: several jobs from one request, each step starting when the step it names has succeeded.

Every step is checked as POST /jobs checks a job (its parameters, datasets and models), except that
a `base_model` or `model` of `@name` stands for the model step `name` registers, which is checked
when the step is released. The steps are ordinary job rows (db/services/pipelines.py keeps their
order); a pipeline's status and progress are read from them.
"""

from __future__ import annotations

from flask import Blueprint, jsonify
from pydantic import ValidationError

from api import db_session, services
from api.auth import tenant_id
from api.errors import field_of
from api.jobs import STEP_MODELS, _check_references, _publish_now
from api.openapi import parse_body, parse_query, spec
from api.schemas import (
    EventQuery,
    JobIn,
    PipelineEventList,
    PipelineEventOut,
    PipelineIn,
    PipelineList,
    PipelineListQuery,
    PipelineOut,
    StepIn,
    default_task,
    job_out,
)
from db.enums import JobStatus
from db.errors import Conflict, InvalidInput
from db.models import Job, Pipeline
from db.services.pipelines import (
    Step,
    cancel_pipeline,
    create_pipeline,
    get_pipeline,
    list_pipelines,
    lock_pipeline,
    pipeline_events,
    pipeline_jobs,
    pipeline_steps,
    retry_pipeline,
    step_references,
    summarize,
)
from worker.outbox import SUBMIT_PUBLISH_GRACE_SECONDS

bp = Blueprint("pipelines", __name__)

MODEL_MAKING_KINDS = ("finetune", "pretrain", "merge")


@bp.post("/pipelines")
@spec("Submit a pipeline: jobs as steps, each starting when the step it names (`after`) has succeeded",
      body=PipelineIn, response=PipelineOut, status=202)
def submit():
    pipeline, jobs = create_pipeline_submission(parse_body(PipelineIn))
    return jsonify(pipeline_out(pipeline, jobs)), 202


def create_pipeline_submission(body: PipelineIn) -> tuple[Pipeline, list[Job]]:
    """Check a parsed pipeline's steps, insert it with its jobs and publish the first ones; return
    (pipeline, step jobs).

    The API's POST /pipelines and the dashboard's new-pipeline form both submit through here.
    """
    afters = _afters(body.steps)
    after_of = {step.name: after for step, after in zip(body.steps, afters)}
    session = db_session()
    settings = services().settings
    steps = []
    for index, (step, after) in enumerate(zip(body.steps, afters)):
        submission = _submission(index, step)
        earlier = _ancestors(step.name, after_of)
        _check_step_references(index, step, earlier, body.steps)
        datasets = _check_step(session, index, step.name, submission, earlier)
        steps.append(Step(name=step.name, kind=submission.kind, task=submission.task,
                          params=submission.params.model_dump(mode="json"), queue=settings.queue_for(submission.kind),
                          priority=submission.priority, max_attempts=submission.max_attempts or settings.max_attempts,
                          after=after, datasets=datasets))
    pipeline = create_pipeline(session, tenant_id=tenant_id(), name=body.name, steps=steps,
                               publish_grace_seconds=SUBMIT_PUBLISH_GRACE_SECONDS)
    session.commit()
    jobs = pipeline_steps(session, [pipeline.id])[pipeline.id]
    for job in jobs:
        if job.status == JobStatus.QUEUED:
            _publish_now(job)
    return pipeline, jobs


def _afters(steps: list[StepIn]) -> list[str | None]:
    """Return the step each step starts after: as given (null: at once), else the one listed before it."""
    names: list[str] = []
    afters: list[str | None] = []
    for index, step in enumerate(steps):
        if step.name in names:
            raise InvalidInput(f"steps[{index}].name: '{step.name}' is the name of steps[{names.index(step.name)}] too; "
                               "give every step its own name", code="duplicate_step",
                               details={"field": f"steps[{index}].name"})
        after = step.after if "after" in step.model_fields_set else (names[-1] if names else None)
        if after is not None and after not in names:
            listed = ", ".join(f"'{name}'" for name in names) or "none"
            raise InvalidInput(f"steps[{index}].after: '{after}' is not a step listed before '{step.name}' (listed "
                               f"before it: {listed}); a step can only start after an earlier one",
                               code="unknown_step", details={"field": f"steps[{index}].after"})
        names.append(step.name)
        afters.append(after)
    return afters


def _submission(index: int, step: StepIn):
    """Validate the step as POST /jobs validates a job; errors name the step's fields."""
    body = {"kind": step.kind, "params": step.params, "priority": step.priority}
    if step.task is not None:
        body["task"] = step.task
    if step.max_attempts is not None:
        body["max_attempts"] = step.max_attempts
    try:
        return JobIn.model_validate(body).root
    except ValidationError as exc:
        fields = [{"field": f"steps[{index}].{field_of(err)}", "message": err["msg"]}
                  for err in exc.errors(include_url=False)]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        raise InvalidInput(f"invalid request: {summary}", code="invalid_input", details={"fields": fields}) from None


def _check_step(session, index: int, name: str, submission, earlier: list[str]) -> list[tuple[int, str]]:
    """Check a step as POST /jobs checks a job, its `@step` references allowed to the `earlier` steps; errors name
    the step. Return its (dataset_id, role) pairs."""
    token = STEP_MODELS.set(frozenset(earlier))
    try:
        return _check_references(session, submission)
    except InvalidInput as exc:
        raise InvalidInput(f"steps[{index}] ('{name}'): {exc.message}", code=exc.code,
                           details={**(exc.details or {}), "step": name}) from None
    finally:
        STEP_MODELS.reset(token)


def _ancestors(name: str, after_of: dict[str, str | None]) -> list[str]:
    """Return the steps `name` runs after, directly or not, nearest first (`after_of`: each step's `after`)."""
    chain, current = [], after_of[name]
    while current is not None:
        chain.append(current)
        current = after_of[current]
    return chain


def _check_step_references(index: int, step: StepIn, earlier: list[str], steps: list[StepIn]) -> None:
    """Refuse a `@name` model reference the named step cannot satisfy when this step is released.

    `base_model` (fine-tune, pretrain) takes any model a step registers; `model` (evaluate, batch inference,
    merge) uses it as it is, so it must have this step's task head, and a merge needs an adapter.
    """
    by_name = {other.name: other for other in steps}
    task = step.task or default_task(step.kind)
    for key, name in step_references(step.params).items():
        field = f"steps[{index}].params.{key}"
        if name not in earlier:
            runs_after = ", ".join(f"'{n}'" for n in earlier) or "no step"
            raise InvalidInput(f"{field}: '@{name}' is not a step '{step.name}' runs after (it runs after "
                               f"{runs_after}); name one of those, or set `after`", code="step_reference",
                               details={"field": field})
        made = by_name[name]
        if made.kind not in MODEL_MAKING_KINDS:
            raise InvalidInput(f"{field}: step '{name}' ({made.kind}) registers no model; name a finetune, pretrain "
                               "or merge step", code="step_reference", details={"field": field})
        if key != "model":
            continue
        if made.kind == "pretrain":
            raise InvalidInput(f"{field}: step '{name}' registers a pre-trained language model without a {task} head; "
                               f"fine-tune it in a step of its own (base_model '@{name}') and use that step's model",
                               code="no_task_head", details={"field": field, "step": name})
        made_task = made.task or default_task(made.kind)
        if made_task != task:
            raise InvalidInput(f"{field}: step '{name}' registers a {made_task} model; step '{step.name}' is {task}: "
                               f"give it task {made_task}, or use a {task} model", code="wrong_task",
                               details={"field": field, "step": name, "model_task": made_task, "task": task})
        lora = made.params.get("lora") is not None and not made.params.get("merge_adapter")
        if step.kind == "merge" and not lora:
            raise InvalidInput(f"{field}: step '{name}' registers a full model, not a LoRA adapter; a merge folds the "
                               "adapter of a fine-tune with lora (and no merge_adapter) into its base model",
                               code="not_an_adapter", details={"field": field, "step": name})


@bp.get("/pipelines")
@spec("List pipelines, newest first", query=PipelineListQuery, response=PipelineList)
def list_all():
    query = parse_query(PipelineListQuery)
    session = db_session()
    pipelines = list_pipelines(session, tenant_id(), before_id=query.cursor, limit=query.limit)
    steps = pipeline_steps(session, [p.id for p in pipelines])
    next_cursor = pipelines[-1].id if len(pipelines) == query.limit else None
    return jsonify({"items": [pipeline_out(p, steps[p.id]) for p in pipelines], "next_cursor": next_cursor})


@bp.get("/pipelines/<int:pipeline_id>")
@spec("Get a pipeline with its status, progress and steps", response=PipelineOut)
def get_one(pipeline_id: int):
    session = db_session()
    pipeline = get_pipeline(session, tenant_id(), pipeline_id)
    return jsonify(pipeline_out(pipeline, pipeline_steps(session, [pipeline.id])[pipeline.id]))


@bp.post("/pipelines/<int:pipeline_id>/cancel")
@spec("Cancel a pipeline: every step that has not ended (running ones stop within seconds)", response=PipelineOut,
      status=202)
def cancel(pipeline_id: int):
    session = db_session()
    pipeline = get_pipeline(session, tenant_id(), pipeline_id)
    cancel_pipeline(session, tenant_id(), pipeline_id)
    session.commit()
    return jsonify(pipeline_out(pipeline, pipeline_steps(session, [pipeline.id])[pipeline.id])), 202


@bp.post("/pipelines/<int:pipeline_id>/retry")
@spec("Run the steps of an ended pipeline that did not succeed again, as new jobs of the same pipeline (the "
      "steps that succeeded are kept, and the steps after them start from their models)", response=PipelineOut,
      status=202)
def retry(pipeline_id: int):
    pipeline, jobs = retry_pipeline_submission(pipeline_id)
    return jsonify(pipeline_out(pipeline, jobs)), 202


def retry_pipeline_submission(pipeline_id: int) -> tuple[Pipeline, list[Job]]:
    """Check an ended pipeline's failed and cancelled steps again as a submission would, insert their new jobs
    and publish the ones that start at once; return (pipeline, its steps' jobs now).

    The API's POST /pipelines/{id}/retry and the dashboard's retry button both go through here.
    """
    session = db_session()
    settings = services().settings
    pipeline = get_pipeline(session, tenant_id(), pipeline_id)
    lock_pipeline(session, pipeline.id)
    current = pipeline_steps(session, [pipeline.id])[pipeline.id]
    running = [job.pipeline_step for job in current if not JobStatus(job.status).terminal]
    if running:
        raise Conflict(f"pipeline {pipeline_id} has steps that have not ended ({_quoted_steps(running)}); wait for "
                       "them, or cancel the pipeline, then retry it", code="pipeline_not_ended",
                       details={"steps": running})
    if all(job.status == JobStatus.SUCCEEDED for job in current):
        raise Conflict(f"every step of pipeline {pipeline_id} succeeded; nothing to run again",
                       code="nothing_to_retry")
    step_of = {job.id: job.pipeline_step for job in pipeline_jobs(session, pipeline.id)}
    after_of = {job.pipeline_step: step_of.get(job.depends_on_id) for job in current}
    steps = []
    for index, job in enumerate(current):
        if job.status == JobStatus.SUCCEEDED:
            continue
        submission = JobIn.model_validate({"kind": job.kind, "task": job.task, "params": job.params,
                                           "priority": job.priority, "max_attempts": job.max_attempts}).root
        # What it names may have gone since (a deleted dataset or model): refused now, not at its start.
        datasets = _check_step(session, index, job.pipeline_step, submission,
                               _ancestors(job.pipeline_step, after_of))
        steps.append(Step(name=job.pipeline_step, kind=job.kind, task=job.task,
                          params=submission.params.model_dump(mode="json"), queue=settings.queue_for(job.kind),
                          priority=job.priority, max_attempts=job.max_attempts, after=after_of[job.pipeline_step],
                          datasets=datasets))
    new = retry_pipeline(session, pipeline, steps, publish_grace_seconds=SUBMIT_PUBLISH_GRACE_SECONDS)
    session.commit()
    for job in new:
        if job.status == JobStatus.QUEUED and job.depends_on_id is None:  # released ones: the relay sends theirs
            _publish_now(job)
    return pipeline, pipeline_steps(session, [pipeline.id])[pipeline.id]


def _quoted_steps(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


@bp.get("/pipelines/<int:pipeline_id>/events")
@spec("Poll the events of every step of a pipeline after a cursor, oldest first", query=EventQuery,
      response=PipelineEventList)
def events(pipeline_id: int):
    query = parse_query(EventQuery)
    session = db_session()
    get_pipeline(session, tenant_id(), pipeline_id)
    rows = pipeline_events(session, pipeline_id, after_id=query.after, limit=query.limit)
    items = [PipelineEventOut.model_validate(row._mapping) for row in rows]
    body = PipelineEventList(items=items, next_cursor=rows[-1].id if rows else query.after)
    return jsonify(body.model_dump(mode="json"))


def pipeline_out(pipeline: Pipeline, steps: list[Job]) -> dict:
    """Serialise a pipeline with its steps' jobs."""
    names = {job.id: job.pipeline_step for job in steps}
    summary = summarize(steps)
    return PipelineOut(
        id=pipeline.id, name=pipeline.name, status=summary["status"], progress=summary["progress"],
        created_at=pipeline.created_at,
        steps=[{"name": job.pipeline_step, "after": names.get(job.depends_on_id), "job": job_out(job)} for job in steps],
    ).model_dump(mode="json")
