"""Celery tasks: thin, named, given a job id; the work lives in `worker/jobs/`."""

from __future__ import annotations

from celery import Task

from worker import state
from worker.celery_app import app
from worker.lifecycle import run_job


class JobTask(Task):
    """A job task: when its process dies, the worker hands the job back at once."""

    Request = "worker.recovery:JobRequest"


def _run(job_id: int, kind: str) -> str:
    """Run the job first in line on `job_id`'s queue, whatever its kind (`worker.lifecycle.run_job`)."""
    from worker.jobs import RUNNERS

    return run_job(job_id, RUNNERS, session_factory=state.session_factory(), settings=state.settings())


@app.task(name="jobs.finetune", base=JobTask)
def finetune(job_id: int) -> str:
    """Fine-tune a model (job kind `finetune`)."""
    return _run(job_id, "finetune")


@app.task(name="jobs.evaluate", base=JobTask)
def evaluate(job_id: int) -> str:
    """Evaluate a model on a labelled dataset (job kind `evaluate`)."""
    return _run(job_id, "evaluate")


@app.task(name="jobs.batch_inference", base=JobTask)
def batch_inference(job_id: int) -> str:
    """Run a model over every row of a dataset (job kind `batch_inference`)."""
    return _run(job_id, "batch_inference")


@app.task(name="jobs.pretrain", base=JobTask)
def pretrain(job_id: int) -> str:
    """Continue a model's pre-training on unlabelled text (job kind `pretrain`)."""
    return _run(job_id, "pretrain")


@app.task(name="jobs.merge", base=JobTask)
def merge(job_id: int) -> str:
    """Merge a registered LoRA adapter into its base model (job kind `merge`)."""
    return _run(job_id, "merge")
