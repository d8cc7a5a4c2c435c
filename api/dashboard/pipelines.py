"""The dashboard's pipeline pages: the live pipelines list, a pipeline's page (its steps as a chain,
their merged timeline, Cancel), and the new-pipeline form, which submits through the API's own code."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import abort, flash, g, redirect, render_template, request, url_for
from pydantic import ValidationError
from sqlalchemy import select

from api import db_session
from api.dashboard import bp, writer
from db.enums import JobStatus
from db.errors import ServiceError
from db.models import Job, JobEvent
from db.services.datasets import list_datasets
from db.services.jobs import EVENT_FIELDS, queue_position
from db.services.pipelines import cancel_pipeline, get_pipeline, list_pipelines, pipeline_steps, summarize
from db.services.registry import list_models

PAGE_SIZE = 50
EVENTS_SHOWN = 300  # the newest events of the steps on a pipeline's page (metric points are left to job pages)
ENDED = ("succeeded", "failed", "cancelled")
EXAMPLE = """name: nightly
steps:
  - name: tune
    kind: finetune
    params: {base_model: all-MiniLM-L6-v2, train_dataset_id: 1, model_name: sentiment}
  - name: check
    kind: evaluate
    params: {model: "@tune", dataset_id: 2}
  - name: label
    after: tune
    kind: batch_inference
    params: {model: "@tune", dataset_id: 3}
"""


# ---- the list ----------------------------------------------------------------------------------


@bp.get("/pipelines")
def pipelines():
    return render_template("pipelines.html", **_pipelines_page())


@bp.get("/pipelines/table")
def pipelines_table():
    """The pipelines table alone, which the pipelines page polls to stay live."""
    return render_template("_pipelines_table.html", **_pipelines_page())


def _pipelines_page() -> dict:
    cursor = request.args.get("cursor", type=int)
    rows = list_pipelines(db_session(), g.tenant_id, before_id=cursor if cursor and cursor > 0 else None,
                          limit=PAGE_SIZE + 1)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    steps = pipeline_steps(db_session(), [p.id for p in rows])
    return {
        "pipelines": [(p, steps[p.id], summarize(steps[p.id])) for p in rows],
        "query": urlencode({"cursor": cursor}) if cursor else "",
        "next_query": urlencode({"cursor": rows[-1].id}) if more else None,
        "first_query": "" if cursor else None,
    }


# ---- one pipeline ------------------------------------------------------------------------------


@bp.get("/pipelines/<int:pipeline_id>")
def pipeline(pipeline_id: int):
    return render_template("pipeline.html", **_live(_pipeline_or_404(pipeline_id)))


@bp.get("/pipelines/<int:pipeline_id>/live")
def pipeline_live(pipeline_id: int):
    """The status, the steps and the timeline, which the pipeline page polls until the pipeline ends."""
    return render_template("_pipeline_live.html", **_live(_pipeline_or_404(pipeline_id)))


@bp.post("/pipelines/<int:pipeline_id>/cancel")
@writer
def cancel_pipeline_view(pipeline_id: int):
    _pipeline_or_404(pipeline_id)
    try:
        steps = cancel_pipeline(db_session(), g.tenant_id, pipeline_id)
        db_session().commit()
        running = ", ".join(f"'{job.pipeline_step}'" for job in steps if job.status == JobStatus.RUNNING)
        flash(f"Pipeline {pipeline_id}: every step that had not ended is cancelled"
              + (f" ({running} stops at its next heartbeat)." if running else "."), "info")
    except ServiceError as exc:
        flash(exc.message, "error")
    return redirect(url_for("dashboard.pipeline", pipeline_id=pipeline_id))


@bp.post("/pipelines/<int:pipeline_id>/retry")
@writer
def retry_pipeline_view(pipeline_id: int):
    from api.pipelines import retry_pipeline_submission

    _pipeline_or_404(pipeline_id)
    try:
        _pipeline, steps = retry_pipeline_submission(pipeline_id)
        again = [job.pipeline_step for job in steps if not JobStatus(job.status).terminal]
        flash(f"Pipeline {pipeline_id}: {', '.join(repr(name) for name in again)} run again.", "info")
    except ServiceError as exc:
        flash(exc.message, "error")
    return redirect(url_for("dashboard.pipeline", pipeline_id=pipeline_id))


def _pipeline_or_404(pipeline_id: int):
    try:
        return get_pipeline(db_session(), g.tenant_id, pipeline_id)
    except ServiceError:
        abort(404, f"pipeline {pipeline_id} not found")


def _live(found) -> dict:
    session = db_session()
    steps = pipeline_steps(session, [found.id])[found.id]
    summary = summarize(steps)
    names = {job.id: job.pipeline_step for job in steps}
    return {
        "pipeline": found,
        "summary": summary,
        "ended": summary["status"] in ENDED,
        "levels": _levels(steps),
        "positions": {job.id: queue_position(session, job) for job in steps},
        "names": names,
        "events": _newest_events(list(names)),
    }


def _levels(steps: list[Job]) -> list[list[Job]]:
    """Group the steps by how many steps run before them: the columns of the chain, left to right."""
    depth: dict[int, int] = {}
    for job in steps:  # in step order: a step's `after` is always an earlier step
        depth[job.id] = depth[job.depends_on_id] + 1 if job.depends_on_id in depth else 0
    levels: list[list[Job]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for job in steps:
        levels[depth[job.id]].append(job)
    return levels


def _newest_events(job_ids: list[int]) -> list:
    """Return the newest status, log and rescue events of the steps, newest first, with each job's id."""
    if not job_ids:
        return []
    query = (select(*EVENT_FIELDS, JobEvent.job_id)
             .where(JobEvent.job_id.in_(job_ids), JobEvent.type != "metric")
             .order_by(JobEvent.id.desc()).limit(EVENTS_SHOWN))
    return list(db_session().execute(query))


# ---- a new pipeline ----------------------------------------------------------------------------


@bp.route("/pipelines/new", methods=["GET", "POST"])
@writer
def new_pipeline():
    text = request.form.get("steps", "") if request.method == "POST" else ""
    errors: list[str] = []
    if request.method == "POST":
        try:
            created = _submit(text)
        except _FormError as exc:
            errors = exc.messages
        else:
            flash(f"Pipeline {created.id} submitted.", "info")
            return redirect(url_for("dashboard.pipeline", pipeline_id=created.id))
    session = db_session()
    return render_template("new_pipeline.html", text=text, errors=errors, example=EXAMPLE,
                           datasets=list_datasets(session, g.tenant_id, limit=200),
                           models=sorted({m.name for m in list_models(session, g.tenant_id)})), 422 if errors else 200


class _FormError(Exception):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(messages)
        self.messages = messages


def _submit(text: str):
    """Parse the textarea (YAML or JSON) and submit it as POST /pipelines would; return the pipeline."""
    import yaml  # YAML is a superset of JSON: one reader for both

    from api.pipelines import create_pipeline_submission
    from api.schemas import PipelineIn

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _FormError([f"not valid YAML or JSON: {' '.join(str(exc).split())}"]) from None
    if not isinstance(data, dict):
        raise _FormError(["write a mapping with `name` (optional) and `steps`: a list of steps, as in the example"])
    try:
        body = PipelineIn.model_validate(data)
    except ValidationError as exc:
        raise _FormError([f"{_location(err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)]) from None
    try:
        return create_pipeline_submission(body)[0]
    except ServiceError as exc:
        db_session().rollback()
        raise _FormError([exc.message]) from None


def _location(loc) -> str:
    """Write a pydantic location as the API's messages do: steps[1].params.model."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"
