"""Checks of a retry of a batch job's failed rows (`only_failed_rows_of`), made at submit.

A retry of failed rows is a new batch_inference job whose parameters name the earlier job. It reads
only the rows of that job's errors file (by row index) from its dataset, which may be a corrected one
of the same length, and merges the new predictions into a copy of the earlier job's, so its output
again covers every input row in order (worker/jobs/inference.py). The earlier job must have
succeeded with failed rows and still have its errors file: these checks refuse, with what to do
instead, a retry that could not run.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api import storage
from db.enums import JobStatus
from db.errors import Conflict, InvalidInput, NotFound
from db.models import Dataset, Job
from db.services.jobs import get_job
from worker.storage import Storage

FIELD = "params.only_failed_rows_of"


def check_retried_rows(session: Session, tenant_id: int, job_id: int, task: str, dataset: Dataset) -> None:
    """Refuse a retry of failed rows whose earlier job has none to retry, or whose rows `dataset` lacks."""
    try:
        earlier = get_job(session, tenant_id, job_id)
    except NotFound as exc:
        raise InvalidInput(f"{FIELD}: {exc.message}", code="job_not_found", details={"field": FIELD}) from None
    check_has_failed_rows(earlier)
    if earlier.task != task:
        raise InvalidInput(f"{FIELD}: job {job_id} is a {earlier.task} job; this job is {task}: submit it with "
                           f"task={earlier.task}", code="wrong_task", details={"field": FIELD, "task": earlier.task})
    rows = earlier.result.get("rows")
    if dataset.row_count != rows:
        raise InvalidInput(
            f"params.dataset_id: dataset {dataset.id} has {dataset.row_count} rows; job {job_id} ran over {rows}. "
            "A retry of failed rows reads each at its index, so a corrected dataset must keep every row in its "
            "place: fix the failed rows without adding or dropping any",
            code="row_count_mismatch",
            details={"field": "params.dataset_id", "rows": dataset.row_count, "job_rows": rows},
        )


def check_has_failed_rows(job: Job) -> None:
    """Refuse to retry the failed rows of a job that is not a succeeded batch_inference job with some."""
    name = f"job {job.id}"
    whole = "retry the whole job (without only_failed_rows)"
    if job.kind != "batch_inference":
        raise Conflict(f"{name} is a {job.kind} job; only a batch_inference job has failed rows to retry: {whole}",
                       code="not_batch_inference", details={"kind": job.kind})
    if job.status != JobStatus.SUCCEEDED:
        advice = whole if JobStatus(job.status).terminal else "wait for it to succeed"
        raise Conflict(f"{name} is {job.status}; only the failed rows of a succeeded job can be retried: {advice}",
                       code="job_not_succeeded", details={"status": job.status})
    if not job.result.get("rows_failed"):
        raise Conflict(f"{name} has no failed rows to retry: every row of its input has a prediction",
                       code="no_failed_rows")
    if not job.output_path or not storage().exists(Storage.sibling(job.output_path, "errors.jsonl")):
        raise Conflict(f"the errors file of {name} is missing from storage: {whole}", code="output_missing")
