"""The soak's baseline: the same three kinds of job as bare Celery tasks on Celery's defaults.

No outbox, no lease, no sweeper, no SQL job row and no Nightshift setting: the broker URL is the
only configuration, so the worker runs with Celery's defaults (ack before the task runs, prefetch
multiplier 4, Redis visibility timeout 3600 s). Each task calls the same `worker/ml` functions as
Nightshift's runners, with `NullHooks` where the runners pass the lease-keeping job context.

Each task appends "started" and "finished" (or "failed") lines to a JSONL file, one write per line,
so `bench/soak_celery.py` counts runs per job without asking Redis, which the soak restarts.

    PLAIN_SOAK_BROKER_URL=redis://... PLAIN_SOAK_RECORDS=/tmp/x.jsonl PLAIN_SOAK_DIR=/tmp/work \
        python -m celery -A plain_celery_app worker     # with bench/ on PYTHONPATH
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from celery import Celery

BROKER_URL = os.environ.get("PLAIN_SOAK_BROKER_URL", "redis://127.0.0.1:6379/0")
RECORDS = Path(os.environ.get("PLAIN_SOAK_RECORDS", "plain-soak-records.jsonl"))
WORK_DIR = Path(os.environ.get("PLAIN_SOAK_DIR", "plain-soak"))
TASK = "text-classification"

app = Celery("plain_soak", broker=BROKER_URL)


def record(job: int, event: str, **extra) -> None:
    """Append one line about `job` to the records file (a single append: whole lines survive a kill)."""
    line = json.dumps({"job": job, "event": event, "pid": os.getpid(), "at": time.time(), **extra}) + "\n"
    with open(RECORDS, "a") as out:
        out.write(line)


def recorded(job: int, work, *args) -> None:
    """Run `work(*args)` between a "started" and a "finished" (or "failed") record."""
    record(job, "started")
    try:
        work(*args)
    except Exception as exc:
        record(job, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    record(job, "finished")


@app.task(name="plain.finetune")
def finetune(job: int, params: dict, train_path: str) -> None:
    """Fine-tune `params["base_model"]` on the train file, as Nightshift's finetune runner does."""
    recorded(job, _finetune, job, params, train_path)


@app.task(name="plain.evaluate")
def evaluate(job: int, model_dir: str, data_path: str) -> None:
    """Score a model on a labelled file, as Nightshift's evaluate runner does."""
    recorded(job, _evaluate, model_dir, data_path)


@app.task(name="plain.batch_inference")
def batch_inference(job: int, model_dir: str, data_path: str, chunk_rows: int) -> None:
    """Classify every row of a file into a JSONL output, as Nightshift's batch-inference runner does."""
    recorded(job, _batch_inference, job, model_dir, data_path, chunk_rows)


def _finetune(job: int, params: dict, train_path: str) -> None:
    from worker.ml.hooks import NullHooks
    from worker.ml.tasks import get_task
    from worker.params import FinetuneParams

    area = WORK_DIR / f"job-{job}"
    get_task(TASK).finetune(
        FinetuneParams.model_validate({**params, "train_dataset_id": 0}), base_model=params["base_model"],
        train_path=Path(train_path), validation_path=None, columns={"text": "text", "label": "label"},
        output_dir=area / "model", checkpoint_dir=area / "checkpoints", hooks=NullHooks(),
    )


def _evaluate(model_dir: str, data_path: str) -> None:
    from worker.ml.hooks import NullHooks
    from worker.ml.tasks import get_task
    from worker.params import EvaluateParams

    get_task(TASK).evaluate(
        model_dir, data_path=Path(data_path), columns={"text": "text", "label": "label"},
        params=EvaluateParams(model=model_dir, dataset_id=0), hooks=NullHooks(),
    )


def _batch_inference(job: int, model_dir: str, data_path: str, chunk_rows: int) -> None:
    import itertools

    from worker.datafiles import iter_rows
    from worker.ml.tasks import get_task
    from worker.params import BatchInferenceParams

    p = BatchInferenceParams(model=model_dir, dataset_id=0, chunk_rows=chunk_rows)
    predictor = get_task(TASK).Predictor.for_job(model_dir, p)
    output = WORK_DIR / f"job-{job}" / "predictions.jsonl"
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = iter_rows(Path(data_path))
    with open(output, "w") as out:
        while chunk := list(itertools.islice(rows, p.chunk_rows)):
            for result in predictor.predict_chunk([(i, row.get("text")) for i, row in chunk]):
                out.write(json.dumps(result) + "\n")
