"""Batch-inference runner: streams a dataset through a loaded model, chunk by committed chunk.

Each chunk's predictions are written to their own file and recorded as an `InferenceChunk` row in
a fenced transaction, so a new attempt resumes after the last committed row and the output has
exactly one line per input row, in input order.

A chunk is also the window rows are sorted by length in, so larger chunks pad less; unless the job
fixes `chunk_rows`, each chunk is sized from the rate of the one before to take about CHUNK_SECONDS,
which bounds what a crash can lose on any device and task (a GPU classifier's 30 s are far more rows
than a CPU translator's), and holds at most MAX_CHUNK_ROWS rows, which bounds its memory: a job over a
million rows peaks where one over ten thousand does.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.models import InferenceChunk
from db.services.leases import fenced_update
from worker.datafiles import iter_rows
from worker.errors import JobInterrupted, PermanentJobError
from worker.jobs.common import job_dir, load_dataset_row, resolve_model_path
from worker.lifecycle import Finalize, JobContext

CHUNK_SECONDS = 30.0
FIRST_CHUNK_ROWS = 256  # measured first, so the job shows progress early
MAX_CHUNK_ROWS = 16_384  # what a chunk holds (ids, results) bounds the job's memory, whatever the row count


def run(context: JobContext) -> Finalize:
    """Predict every row not yet done, then assemble the output files."""
    from worker.ml.tasks import get_task, input_columns, params_model

    task = get_task(context.job.task)
    params = params_model(context.job.task, "batch_inference").model_validate(context.job.params)
    dataset = load_dataset_row(context, params.dataset_id)
    columns = input_columns(context.job.task, dataset.columns_by_role, params.text_column or dataset.text_column)
    missing = [role for role in task.INPUT_ROLES if columns.get(role) not in dataset.columns]
    if missing:
        raise PermanentJobError(
            f"dataset {dataset.id} has no {' or '.join(missing)} column ({columns}); its columns are {dataset.columns}",
            code="missing_column",
        )
    read = _reader(columns)
    model_path, _artifact = resolve_model_path(context, params.model)
    out_dir = job_dir(context, "outputs")
    (out_dir / "chunks").mkdir(exist_ok=True)
    done = _done_chunks(context)
    total = dataset.row_count
    context.progress(fraction=_rows_in(done) / max(total, 1), stage="loading model", done=_rows_in(done), total=total)
    predictor = task.Predictor.for_job(model_path, params)
    context.log(f"precision: {predictor.precision_choice.reason}")
    rows = iter_rows(Path(dataset.path))
    resume_after = max((c[3] for c in done.values()), default=-1)  # chunks commit in row order
    if resume_after >= 0:
        rows = itertools.dropwhile(lambda item: item[0] <= resume_after, rows)
    sizes = _ChunkSizes(params.chunk_rows)
    index = max(done, default=-1) + 1
    while chunk := list(itertools.islice(rows, sizes.next())):
        context.check()
        started = time.perf_counter()
        results = predictor.predict_chunk([(i, read(row)) for i, row in chunk])
        done[index] = _commit_chunk(context, out_dir, index, chunk, results)
        sizes.measured(len(chunk), time.perf_counter() - started)
        index += 1
        rows_done = _rows_in(done)
        context.progress(fraction=rows_done / max(total, 1), stage="predicting", done=rows_done, total=total)
    predictions, errors = _assemble(out_dir, done)
    summary = {
        "rows": total,
        "rows_ok": sum(c[1] for c in done.values()),
        "rows_failed": sum(c[2] for c in done.values()),
        "predictions": str(predictions),
        "errors": str(errors),
        "label_names": predictor.label_names,
        "precision": predictor.precision,
        "precision_reason": predictor.precision_choice.reason,
        "peak_rss_mb": _peak_rss_mb(),
    }
    return lambda session: {"result": summary, "output_path": str(predictions)}


def _peak_rss_mb() -> float:
    """The job process's peak resident memory so far, in MiB (for sizing machines to jobs)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def _reader(columns: dict[str, str]):
    """Return what a predictor reads from a row: its text, or for tasks of several inputs a dict by role."""
    if list(columns) == ["text"]:
        return lambda row: row.get(columns["text"])
    return lambda row: {role: row.get(column) for role, column in columns.items()}


class _ChunkSizes:
    """Rows of the next chunk: the job's `chunk_rows`, or sized to take about CHUNK_SECONDS."""

    def __init__(self, fixed: int | None) -> None:
        self.fixed = fixed
        self.size = fixed or FIRST_CHUNK_ROWS

    def next(self) -> int:
        return self.size

    def measured(self, rows: int, seconds: float) -> None:
        if self.fixed is None:
            rate = rows / max(seconds, 1e-3)
            self.size = int(min(max(rate * CHUNK_SECONDS, FIRST_CHUNK_ROWS), MAX_CHUNK_ROWS))


def _rows_in(done: dict) -> int:
    return sum(c[1] + c[2] for c in done.values())


def _done_chunks(context: JobContext) -> dict[int, tuple[str, int, int, int]]:
    """Committed chunks by index: (path, rows ok, rows failed, last row)."""
    with context.session_factory() as session:
        chunks = session.scalars(select(InferenceChunk).where(InferenceChunk.job_id == context.job.id))
        return {c.chunk_index: (c.path, c.rows_ok, c.rows_failed, c.end_row) for c in chunks}


def _commit_chunk(context, out_dir: Path, index: int, chunk, results) -> tuple[str, int, int, int]:
    """Write the chunk's files, then record the chunk under this attempt's lease."""
    ids = {i: row.get("id") for i, row in chunk}
    ok_path = out_dir / "chunks" / f"{index:06d}.jsonl"
    ok, failed = _write_chunk_files(ok_path, results, ids)
    try:
        with context.session_factory() as session, session.begin():
            if not fenced_update(session, context.lease):
                raise JobInterrupted("lease lost while committing a chunk", code="lease_lost")
            session.add(
                InferenceChunk(
                    job_id=context.job.id, chunk_index=index, start_row=chunk[0][0], end_row=chunk[-1][0],
                    rows_ok=ok, rows_failed=failed, path=str(ok_path), epoch=context.lease.epoch,
                )
            )
    except IntegrityError as exc:
        raise JobInterrupted("another attempt already committed this chunk", code="lease_lost") from exc
    return str(ok_path), ok, failed, chunk[-1][0]


def _write_chunk_files(ok_path: Path, results, ids) -> tuple[int, int]:
    ok = failed = 0
    tmp_ok, tmp_err = ok_path.with_suffix(".tmp"), ok_path.with_suffix(".errors.tmp")
    with open(tmp_ok, "w") as out, open(tmp_err, "w") as err:
        for result in results:
            if ids.get(result["row"]) is not None:
                result = {"row": result["row"], "id": ids[result["row"]], **result}
            if "error" in result:
                err.write(json.dumps(result) + "\n")
                failed += 1
            else:
                out.write(json.dumps(result) + "\n")
                ok += 1
    os.replace(tmp_err, ok_path.with_suffix(".errors.jsonl"))
    os.replace(tmp_ok, ok_path)
    return ok, failed


def _assemble(out_dir: Path, done: dict) -> tuple[Path, Path]:
    """Concatenate chunk files in order into predictions.jsonl and errors.jsonl."""
    predictions, errors = out_dir / "predictions.jsonl", out_dir / "errors.jsonl"
    with open(predictions.with_suffix(".tmp"), "wb") as out, open(errors.with_suffix(".tmp"), "wb") as err:
        for index in sorted(done):
            ok_path = Path(done[index][0])
            with open(ok_path, "rb") as src:
                out.writelines(src)
            with open(ok_path.with_suffix(".errors.jsonl"), "rb") as src:
                err.writelines(src)
    os.replace(predictions.with_suffix(".tmp"), predictions)
    os.replace(errors.with_suffix(".tmp"), errors)
    return predictions, errors
