"""The dashboard's job pages: the live jobs list, a job's page, and its Cancel, Retry and downloads."""

from __future__ import annotations

import json
import shlex
from urllib.parse import urlencode

from flask import abort, flash, g, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select

from api import API_PREFIX, db_session
from api.dashboard import bp, writer
from db.enums import TERMINAL_STATUSES, JobStatus
from db.errors import ServiceError
from db.models import Evaluation
from db.services.jobs import get_job, list_events, list_jobs, queue_position, request_cancel
from worker.config import JOB_KINDS
from worker.ml.tasks import LANGUAGE_MODELING, TASKS

PAGE_SIZE = 50
KINDS = JOB_KINDS
FILTER_TASKS = (*TASKS, LANGUAGE_MODELING)
STATUSES = tuple(JobStatus)
FILTERS = ("status", "kind", "task", "model", "q")


# ---- jobs --------------------------------------------------------------------------------------


@bp.get("/jobs")
def jobs():
    return render_template("jobs.html", **_jobs_page(), kinds=KINDS, statuses=STATUSES, tasks=FILTER_TASKS)


@bp.get("/jobs/table")
def jobs_table():
    """The jobs table alone, which the jobs page polls to stay live."""
    return render_template("_jobs_table.html", **_jobs_page())


def _jobs_page() -> dict:
    filters = {key: request.args.get(key, "").strip() for key in FILTERS}
    if filters["status"] not in STATUSES:
        filters["status"] = ""
    if filters["kind"] not in KINDS:
        filters["kind"] = ""
    if filters["task"] not in FILTER_TASKS:
        filters["task"] = ""
    cursor = request.args.get("cursor", type=int)
    rows = list_jobs(db_session(), g.tenant_id, status=filters["status"] or None, kind=filters["kind"] or None,
                     task=filters["task"] or None, model=filters["model"] or None, search=filters["q"] or None,
                     before_id=cursor if cursor and cursor > 0 else None, limit=PAGE_SIZE + 1)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    active = {key: value for key, value in filters.items() if value}
    return {
        "jobs": [(job, queue_position(db_session(), job)) for job in rows],
        "filters": filters,
        "query": urlencode({**active, **({"cursor": cursor} if cursor else {})}),
        "next_query": urlencode({**active, "cursor": rows[-1].id}) if more else None,
        "first_query": urlencode(active) if cursor else None,
    }


@bp.get("/jobs/<int:job_id>")
def job(job_id: int):
    found = _job_or_404(job_id)
    evaluation = None
    if found.result and found.result.get("evaluation_id"):
        evaluation = db_session().scalar(select(Evaluation).where(
            Evaluation.id == found.result["evaluation_id"], Evaluation.tenant_id == g.tenant_id))
    return render_template("job.html", job=found, evaluation=evaluation, params=json.dumps(found.params, indent=2),
                           commands=_submit_commands(found), **_live(found))


@bp.get("/jobs/<int:job_id>/live")
def job_live(job_id: int):
    """The status panel and the event timeline, which the job page polls while the job runs."""
    return render_template("_job_live.html", job=_job_or_404(job_id), **_live(_job_or_404(job_id)))


@bp.get("/jobs/<int:job_id>/metrics")
def job_metrics(job_id: int):
    """Metric events after a cursor, as JSON, for the job page's chart."""
    _job_or_404(job_id)
    after = max(request.args.get("after", 0, type=int), 0)
    items = list_events(db_session(), job_id, after_id=after, limit=1000, type_="metric")
    return jsonify({"items": [{"step": e.step, "data": e.data} for e in items],
                    "next_cursor": items[-1].id if items else after})


@bp.post("/jobs/<int:job_id>/cancel")
@writer
def cancel(job_id: int):
    try:
        request_cancel(db_session(), g.tenant_id, job_id)
        db_session().commit()
        flash(f"Job {job_id}: cancel requested.", "info")
    except ServiceError as exc:
        flash(exc.message, "error")
    return redirect(url_for("dashboard.job", job_id=job_id))


@bp.post("/jobs/<int:job_id>/retry")
@writer
def retry(job_id: int):
    """Retry the job; with the form's `only_failed_rows`, only a batch job's failed rows."""
    from api.jobs import resubmit

    only_failed_rows = request.form.get("only_failed_rows") == "1"
    try:
        new = resubmit(job_id, only_failed_rows=only_failed_rows)
    except ServiceError as exc:
        flash(exc.message, "error")
        return redirect(url_for("dashboard.job", job_id=job_id))
    what = "the failed rows of job" if only_failed_rows else "job"
    flash(f"Job {new.id} queued as a retry of {what} {job_id}.", "info")
    return redirect(url_for("dashboard.job", job_id=new.id))


@bp.get("/jobs/<int:job_id>/output")
def output(job_id: int):
    from api.jobs import send_output

    _job_or_404(job_id)
    try:
        return send_output(job_id, errors=request.args.get("file") == "errors")
    except ServiceError as exc:
        flash(exc.message, "error")
        return redirect(url_for("dashboard.job", job_id=job_id))


def _job_or_404(job_id: int):
    try:
        return get_job(db_session(), g.tenant_id, job_id)
    except ServiceError:
        abort(404, f"job {job_id} not found")


def _live(job) -> dict:
    events = list_events(db_session(), job.id, after_id=0, limit=500)
    return {
        "events": [e for e in events if e.type != "metric"],
        "position": queue_position(db_session(), job),
        "ended": job.status in TERMINAL_STATUSES,
    }


def _submit_commands(job) -> dict[str, str]:
    """The curl and CLI commands that would submit this job again."""
    body = {"kind": job.kind, "task": job.task, "params": job.params, "priority": job.priority}
    base = request.host_url.rstrip("/") + API_PREFIX
    curl = (f"curl -s -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' {base}/jobs "
            f"-d {shlex.quote(json.dumps(body))}")
    pairs = " ".join(shlex.quote(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
                     for key, value in job.params.items())
    cli = f"nightshift submit {job.kind} --task {job.task} {pairs}"
    return {"curl": curl, "cli": cli}
