"""Batch-inference runner: streams a dataset through a loaded model, chunk by committed chunk.

Each chunk's predictions are written to their own file and recorded as an `InferenceChunk` row in
a fenced transaction, so a new attempt resumes after the last committed row and the output has
exactly one line per input row, in input order.

A chunk is also the window rows are sorted by length in, so larger chunks pad less; unless the job
fixes `chunk_rows`, each chunk is sized from the rate of the one before to take about CHUNK_SECONDS,
which bounds what a crash can lose on any device and task (a GPU classifier's 30 s are far more rows
than a CPU translator's), and holds at most MAX_CHUNK_ROWS rows, which bounds its memory: a job over a
million rows peaks where one over ten thousand does.

A retry of failed rows (`only_failed_rows_of`: an earlier succeeded job) runs the same loop over a
different row source: the row indexes of the earlier job's errors.jsonl, read as it goes, pick just
those rows out of the dataset. Its predictions.jsonl is the earlier job's predictions and the rows
fixed now, merged by row: one line per input row that has a prediction, in input order, as in any job's
output; rows that fail again are its errors.jsonl. Both merges stream, one line of each file at a time.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.models import Dataset, InferenceChunk, Job
from db.services.leases import fenced_update
from worker.datafiles import iter_rows
from worker.errors import JobInterrupted, PermanentJobError
from worker.jobs.common import job_dir, load_dataset_row, resolve_model_path
from worker.lifecycle import Finalize, JobContext

CHUNK_SECONDS = 30.0
FIRST_CHUNK_ROWS = 256  # measured first, so the job shows progress early
MAX_CHUNK_ROWS = 16_384  # what a chunk holds (ids, results) bounds the job's memory, whatever the row count


def run(context: JobContext) -> Finalize:
    """Predict every row not yet done (all rows, or only an earlier job's failed ones), then assemble the output."""
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
    source = _RowSource.for_job(context, params.only_failed_rows_of, dataset)
    read = _reader(columns)
    model_path, _artifact = resolve_model_path(context, params.model)
    out_dir = job_dir(context, "outputs")
    (out_dir / "chunks").mkdir(exist_ok=True)
    done = _done_chunks(context)
    total = source.total
    context.progress(fraction=_rows_in(done) / max(total, 1), stage="loading model", done=_rows_in(done), total=total)
    clock = _Phases()
    with clock("loading model"):
        predictor = task.Predictor.for_job(model_path, params)
    context.log(f"precision: {predictor.precision_choice.reason}")
    rows = source.rows(after=max((c[3] for c in done.values()), default=-1))  # chunks commit in row order
    sizes = _ChunkSizes(params.chunk_rows)
    index = max(done, default=-1) + 1
    while chunk := list(itertools.islice(rows, sizes.next())):
        context.check()
        started = time.perf_counter()
        with clock("predicting"):
            results = predictor.predict_chunk([(i, read(row)) for i, row in chunk])
        with clock("writing"):
            done[index] = _commit_chunk(context, out_dir, index, chunk, results)
        sizes.measured(len(chunk), time.perf_counter() - started)
        index += 1
        rows_done = _rows_in(done)
        context.progress(fraction=rows_done / max(total, 1), stage="predicting", done=rows_done, total=total)
    with clock("writing"):
        predictions, errors = _assemble(out_dir, _chunk_files(context, done), base=source.base_predictions)
        predictions, errors = context.storage.publish(predictions), context.storage.publish(errors)
    ok, failed = sum(c[1] for c in done.values()), sum(c[2] for c in done.values())
    summary = {
        "rows": dataset.row_count,
        "rows_ok": source.base_ok + ok,
        "rows_failed": failed,
        **source.retry_summary(ok, failed),
        "predictions": predictions,
        "errors": errors,
        "label_names": predictor.label_names,
        **(predictor.decision() if hasattr(predictor, "decision") else {}),  # a multi-label model's threshold
        "precision": predictor.precision,
        "precision_reason": predictor.precision_choice.reason,
        "peak_rss_mb": _peak_rss_mb(),
        "seconds": clock.seconds,  # this attempt's wall time per phase (reading rows counts in none)
    }
    return lambda session: {"result": summary, "output_path": predictions}


@dataclass(frozen=True)
class _RowSource:
    """The rows a job predicts: every row of its dataset, or only those an earlier job failed on."""

    dataset_path: Path
    total: int  # rows to predict
    retried_job_id: int | None = None
    base_predictions: Path | None = None  # the earlier job's predictions, merged into this job's
    base_ok: int = 0

    @classmethod
    def for_job(cls, context: JobContext, retried_job_id: int | None, dataset: Dataset) -> _RowSource:
        """Return the job's rows; a retry of failed rows checks its earlier job is still usable."""
        storage = context.storage
        if retried_job_id is None:
            return cls(storage.fetch(dataset.path), dataset.row_count)
        earlier = _retried_job(context, retried_job_id, dataset)
        storage.fetch(storage.sibling(earlier.output_path, "errors.jsonl"))  # read beside its predictions
        source = cls(storage.fetch(dataset.path), int(earlier.result["rows_failed"]), retried_job_id,
                     storage.fetch(earlier.output_path), int(earlier.result.get("rows_ok", 0)))
        context.log(f"retrying the {source.total} failed rows of job {retried_job_id}")
        return source

    def rows(self, *, after: int) -> Iterator[tuple[int, dict]]:
        """Yield (index, row) for each row to predict past row index `after` (a resumed job's last done row)."""
        only = None if self.base_predictions is None else _failed_rows(self.base_predictions.with_name("errors.jsonl"))
        return iter_rows(self.dataset_path, start=after + 1, only=only)

    def retry_summary(self, ok: int, failed: int) -> dict:
        if self.retried_job_id is None:
            return {}
        return {"rows_retried": self.total, "rows_fixed": ok, "rows_still_failing": failed}


def _retried_job(context: JobContext, job_id: int, dataset: Dataset) -> Job:
    """Return the earlier job whose failed rows this job predicts, or fail with what is wrong with it."""
    with context.session_factory() as session:
        earlier = session.get(Job, job_id)
    if earlier is None or earlier.tenant_id != context.job.tenant_id:
        raise PermanentJobError(f"job {job_id}, whose failed rows this job retries, no longer exists",
                                code="retried_job_missing")
    if earlier.kind != "batch_inference" or earlier.status != "succeeded" or not earlier.output_path:
        raise PermanentJobError(f"job {job_id} is a {earlier.status} {earlier.kind} job; only a succeeded "
                                "batch_inference job's failed rows can be retried", code="retried_job_unusable")
    if earlier.result.get("rows") != dataset.row_count:
        raise PermanentJobError(f"dataset {dataset.id} has {dataset.row_count} rows; job {job_id} ran over "
                                f"{earlier.result.get('rows')}", code="row_count_mismatch")
    if not context.storage.exists(context.storage.sibling(earlier.output_path, "errors.jsonl")):
        raise PermanentJobError(f"the errors file of job {job_id} is missing from storage", code="output_missing")
    return earlier


def _failed_rows(errors: Path) -> Iterator[int]:
    """Yield the row index of each line of an errors file (written in row order), reading it as it goes."""
    with open(errors, "rb") as lines:
        for line in lines:
            yield _row_of(line)


class _Phases:
    """Wall-clock seconds spent per phase of the job, summed over its chunks: where a slow job's time went.

    Speed probes run inside a phase (the first job of a model on a machine times its precision choice)
    count as "tuning", not as that phase: later jobs will not spend them, and estimates of those jobs are
    made from the phases. (Batch budgets cost no probe: the job's own batches are timed.)
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        from worker.ml import tuning

        started, measured = time.perf_counter(), tuning.measuring_seconds()
        try:
            yield
        finally:
            probing = tuning.measuring_seconds() - measured
            self._add(phase, time.perf_counter() - started - probing)
            if probing:
                self._add("tuning", probing)

    def _add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + seconds, 3)


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
    context.storage.publish(_errors_of(ok_path))
    location = context.storage.publish(ok_path)  # stored before the chunk counts
    try:
        with context.session_factory() as session, session.begin():
            if not fenced_update(session, context.lease):
                raise JobInterrupted("lease lost while committing a chunk", code="lease_lost")
            session.add(
                InferenceChunk(
                    job_id=context.job.id, chunk_index=index, start_row=chunk[0][0], end_row=chunk[-1][0],
                    rows_ok=ok, rows_failed=failed, path=location, epoch=context.lease.epoch,
                )
            )
    except IntegrityError as exc:
        raise JobInterrupted("another attempt already committed this chunk", code="lease_lost") from exc
    return location, ok, failed, chunk[-1][0]


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
    os.replace(tmp_err, _errors_of(ok_path))
    os.replace(tmp_ok, ok_path)
    return ok, failed


def _errors_of(chunk: Path) -> Path:
    """The errors file written beside a chunk's predictions."""
    return chunk.with_suffix(".errors.jsonl")


def _chunk_files(context: JobContext, done: dict) -> list[Path]:
    """The local paths of the committed chunks' prediction files, in order, each with its errors file beside it.

    With a bucket for storage, the chunks an earlier attempt committed on another host are fetched.
    """
    storage = context.storage
    files = []
    for index in sorted(done):
        location = done[index][0]
        storage.fetch(storage.sibling(location, _errors_of(Path(location.rsplit("/", 1)[-1])).name))
        files.append(storage.fetch(location))
    return files


def _assemble(out_dir: Path, chunks: list[Path], base: Path | None = None) -> tuple[Path, Path]:
    """Concatenate chunk files in order into predictions.jsonl and errors.jsonl.

    With `base` (an earlier job's predictions, in row order), its lines and the chunks' predictions
    (also in row order) are merged by row, holding one line of each at a time.
    """
    predictions, errors = out_dir / "predictions.jsonl", out_dir / "errors.jsonl"
    with open(predictions.with_suffix(".tmp"), "wb") as out, open(errors.with_suffix(".tmp"), "wb") as err:
        if base is None:
            out.writelines(_lines(chunks))
        else:
            with open(base, "rb") as earlier:
                out.writelines(heapq.merge(earlier, _lines(chunks), key=_row_of))
        err.writelines(_lines(_errors_of(path) for path in chunks))
    os.replace(predictions.with_suffix(".tmp"), predictions)
    os.replace(errors.with_suffix(".tmp"), errors)
    return predictions, errors


def _lines(paths: Iterable[Path]) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as src:
            yield from src


_ROW_FIRST = re.compile(rb'\{"row": (\d+)[,}]')


def _row_of(line: bytes) -> int:
    """Return an output line's "row"; the runner writes it first, so a line is parsed only if it is not."""
    match = _ROW_FIRST.match(line)
    return int(match.group(1)) if match else json.loads(line)["row"]
