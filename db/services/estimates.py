"""How long a job should take, from the measured throughput of past jobs like it, and whether it can meet its
deadline.

"Like it": the same tenant, kind, task and queue (the queue stands for the device class: GPU or CPU
workers) and the same model (`model` of an evaluation or batch job, `base_model` of a training job),
else the same kind, task and queue with any model. The work is the job's rows (evaluation, batch
inference) or training samples (steps x batch size, or epochs x rows); the rate is the median of the
last jobs' rows per second of run time, or of their Trainer-measured training samples per second.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.enums import JobStatus
from db.models import Dataset, Job, Worker
from db.services.jobs import add_event
from db.services.lines import Ahead, jobs_ahead

PAST_JOBS = 10  # the last this many succeeded jobs like it
TRAINING_KINDS = ("finetune", "pretrain")


@dataclass(frozen=True)
class Estimate:
    seconds: float
    rate: float  # work units per second
    unit: str  # rows or samples
    work: float
    jobs: int  # past jobs measured
    same_model: bool
    overhead: float = 0.0  # seconds a job spends besides its work: loading, speed probes, evaluating, saving

    def describe(self) -> str:
        like = "with the same model" if self.same_model else "of this kind on this queue"
        fixed = f" plus {_duration(self.overhead)} to load and save" if self.overhead >= 1 else ""
        return (f"{self.work:,.0f} {self.unit} at {self.rate:,.1f} {self.unit}/s{fixed} (the median of {self.jobs} "
                f"past job{'s' if self.jobs != 1 else ''} {like}): about {_duration(self.seconds)}")


def estimate(session: Session, job: Job, datasets: list[tuple[int, str]] | None = None,
             row_counts: dict[int, int] | None = None) -> Estimate | None:
    """Return how long `job` should run, or None where no past job like it was measured.

    `job` may be new (not inserted yet, its (dataset_id, role) pairs given as `datasets`): a submission
    stores its estimate in the job's INSERT. `row_counts`: datasets' rows already read, by id.
    """
    if datasets is None:
        datasets = [(link.dataset_id, link.role) for link in job.datasets]
    work = _work(session, job, datasets, row_counts or {})
    if not work:
        return None
    past = _past_jobs(session, job)
    key = "base_model" if job.kind in TRAINING_KINDS else "model"
    model = (job.params or {}).get(key)
    for same_model in (True, False):
        measured = _rates(other for other in past if not same_model or (other.params or {}).get(key) == model)
        if measured:
            rate = statistics.median(rate for rate, _overhead in measured)
            overhead = statistics.median(overhead for _rate, overhead in measured)
            unit = "samples" if job.kind in TRAINING_KINDS else "rows"
            return Estimate(overhead + work / rate, rate, unit, work, len(measured), same_model, overhead)
    return None


def run_seconds(session: Session, job: Job, datasets: list[tuple[int, str]] | None = None,
                row_counts: dict[int, int] | None = None) -> float | None:
    """The job's estimated run time in seconds (`estimate`), or None."""
    found = estimate(session, job, datasets, row_counts)
    return found.seconds if found else None


def check_deadline(session: Session, job: Job, *, starting_at: datetime | None = None, when: str = "submitted") -> None:
    """Store the job's estimate and, with a deadline it cannot meet, say so in an event now, before it runs."""
    found = estimate(session, job)
    job.estimated_run_seconds = found.seconds if found else None
    if found is None or job.deadline is None:
        return
    start = starting_at or max(utcnow(), job.not_before or utcnow())
    finish = start + timedelta(seconds=found.seconds)
    if finish > job.deadline:
        add_event(session, job.id, "log", f"at {when}: this job will likely miss its deadline of "
                  f"{job.deadline:%Y-%m-%d %H:%M} UTC: {found.describe()}, so starting at {start:%Y-%m-%d %H:%M} UTC "
                  f"it would end about {finish:%Y-%m-%d %H:%M} UTC", level="warning",
                  data={"deadline_at_risk": True, "expected_finish": finish.isoformat() + "Z",
                        "estimated_run_seconds": found.seconds})


def expected_finish(job: Job, start: datetime | None = None) -> datetime | None:
    """When the job should end: its start (`start`, else the earliest it can start) plus its estimate; None if
    unknown."""
    if job.estimated_run_seconds is None or job.status not in (JobStatus.QUEUED, JobStatus.SCHEDULED,
                                                               JobStatus.RUNNING, JobStatus.WAITING):
        return None
    if job.status == JobStatus.RUNNING:
        start = job.started_at
    start = start or max(utcnow(), job.not_before or utcnow())
    return start + timedelta(seconds=job.estimated_run_seconds)


def place_in_line(session: Session, job: Job, *, alive_within_seconds: float,
                  cap: int = 0) -> tuple[int | None, datetime | None]:
    """A job's place in line (`db.services.jobs.queue_position`: queued jobs only) and its expected start
    (`expected_start`), the jobs ahead of it read once for both: what a submission's answer and a poll of a
    queued job show."""
    if job.status not in (JobStatus.QUEUED, JobStatus.SCHEDULED):
        return None, None
    workers = _live_workers(session, job, alive_within_seconds)
    if job.status == JobStatus.SCHEDULED:
        return None, _expected_start(session, job, workers=workers, cap=cap)
    ahead = jobs_ahead(session, job, sums=workers > 0)  # the estimates' sums only where a start is estimated
    return ahead.jobs + 1, _expected_start(session, job, workers=workers, cap=cap, ahead=ahead)


def expected_start(session: Session, job: Job, *, alive_within_seconds: float, cap: int = 0) -> datetime | None:
    """When a queued or scheduled job should start: the work left on its queue ahead of it (the running jobs'
    remaining time, the estimates of the queued jobs of its kind ahead in line) shared among the live workers
    of the queue.

    A scheduled job's start is simulated: each free worker takes the job first in line among those already
    released (queued now, or scheduled by then) whose tenant runs fewer than `cap` jobs (the per-tenant cap,
    0: none), so jobs released before it may start first and those released with it start by priority, then
    age.

    None unless the job is queued or scheduled, a live worker takes its queue and every job counted has an
    estimate.
    """
    if job.status not in (JobStatus.QUEUED, JobStatus.SCHEDULED):
        return None
    return _expected_start(session, job, workers=_live_workers(session, job, alive_within_seconds), cap=cap)


def _live_workers(session: Session, job: Job, alive_within_seconds: float) -> int:
    """How many workers seen within `alive_within_seconds` take the job's queue."""
    seen_after = utcnow() - timedelta(seconds=alive_within_seconds)
    return sum(job.queue in (queues or []) for queues in session.scalars(_LIVE_WORKER_QUEUES,
                                                                          {"seen_after": seen_after}))


def _expected_start(session: Session, job: Job, *, workers: int, cap: int,
                    ahead: Ahead | None = None) -> datetime | None:
    """`expected_start` with the live workers counted, and for a queued job the jobs ahead, if already read."""
    if not workers:
        return None
    now = utcnow()
    running = []  # (seconds left, tenant)
    for other in session.execute(_RUNNING_ON_QUEUE, {"queue": job.queue}):
        if other.eta_seconds is not None:
            running.append((other.eta_seconds, other.tenant_id))
        elif other.estimated_run_seconds is not None and other.started_at is not None:
            running.append((max(other.estimated_run_seconds - (now - other.started_at).total_seconds(), 0.0),
                            other.tenant_id))
        else:
            return None
    same_line = and_(Job.queue == job.queue, Job.kind == job.kind, Job.id != job.id)
    if job.status == JobStatus.QUEUED:
        if ahead is None:  # the lines' sums: not a read of every job ahead
            ahead = jobs_ahead(session, job)
        if ahead.unknown:
            return None
        return now + timedelta(seconds=(sum(left for left, _ in running) + ahead.seconds) / workers)
    others = session.execute(select(Job.id, Job.tenant_id, Job.priority, Job.not_before, Job.estimated_run_seconds)
                             .where(same_line, or_(Job.status == JobStatus.QUEUED,
                                                   and_(Job.status == JobStatus.SCHEDULED,
                                                        Job.not_before <= job.not_before)))
                             .order_by(Job.id).limit(SIMULATED_JOBS + 1)).all()
    if len(others) > SIMULATED_JOBS or any(other.estimated_run_seconds is None for other in others):
        return None
    return _simulated_start(job, others, running, workers=workers, cap=cap, now=now)


SIMULATED_JOBS = 500  # beyond this many jobs in line, a scheduled job's start is not simulated (None)


def _simulated_start(job: Job, others, running: list[tuple[float, int]], *, workers: int, cap: int,
                     now: datetime) -> datetime | None:
    """The start of scheduled `job` among `others` (id, tenant_id, priority, not_before, estimated_run_seconds),
    with `running` jobs (seconds left, tenant) on `workers` workers: at each moment, while a worker is free,
    it takes the released job first in line (priority, then id) of a tenant under the cap."""
    import heapq
    from collections import Counter

    pending = sorted([(max(o.not_before or now, now), -o.priority, o.id, o.tenant_id, o.estimated_run_seconds)
                      for o in others] + [(job.not_before, -job.priority, job.id, job.tenant_id, 0.0)])
    ends = [(now + timedelta(seconds=left), tenant) for left, tenant in running]
    heapq.heapify(ends)
    busy = Counter(tenant for _, tenant in ends)
    free = max(workers - len(ends), 0)
    released: list[tuple[int, int, int, float]] = []
    moment, i = now, 0
    while True:
        while i < len(pending) and pending[i][0] <= moment:
            _, priority, job_id, tenant, seconds = pending[i]
            released.append((priority, job_id, tenant, seconds))
            i += 1
        released.sort()
        while free and released:
            eligible = next((r for r in released if not cap or busy[r[2]] < cap), None)
            if eligible is None:
                break
            released.remove(eligible)
            _, job_id, tenant, seconds = eligible
            if job_id == job.id:
                return moment
            heapq.heappush(ends, (moment + timedelta(seconds=seconds), tenant))
            busy[tenant] += 1
            free -= 1
        upcoming = [t for t in (ends[0][0] if ends else None, pending[i][0] if i < len(pending) else None) if t]
        if not upcoming:
            return None  # held back for good (a cap no running job will free): no estimate
        moment = max(min(upcoming), moment)
        while ends and ends[0][0] <= moment:
            _, tenant = heapq.heappop(ends)
            busy[tenant] -= 1
            free += 1


def _work(session: Session, job: Job, datasets: list[tuple[int, str]], row_counts: dict[int, int]) -> float | None:
    """The job's rows (evaluation, batch inference) or training samples."""
    params = job.params or {}
    if job.kind in TRAINING_KINDS:
        if params.get("max_steps"):
            return float(params["max_steps"] * params.get("batch_size", 16))
        rows = _rows(session, datasets, "train", row_counts)
        share = 1 - params.get("validation_fraction", 0.1) if params.get("validation_dataset_id") is None else 1
        return rows * share * params.get("epochs", 3.0) if rows else None
    return _rows(session, datasets, "input" if job.kind == "batch_inference" else "evaluate", row_counts)


def _rows(session: Session, datasets: list[tuple[int, str]], role: str, row_counts: dict[int, int]) -> float | None:
    """Rows of the job's dataset in `role` (from `row_counts` where it is there)."""
    for dataset_id, held in datasets:
        if held == role:
            return row_counts[dataset_id] if dataset_id in row_counts else session.scalar(_ROW_COUNT, {"id": dataset_id})
    return None


_ROW_COUNT = select(Dataset.__table__.c.row_count).where(Dataset.__table__.c.id == bindparam("id"))


def _past_jobs(session: Session, job: Job) -> list:
    """The last succeeded jobs of the same tenant, kind, task and queue as `job`, newest first, as rows of the
    columns a rate needs (this runs in every claim's transaction)."""
    like = {"tenant_id": job.tenant_id, "kind": job.kind, "task": job.task, "queue": job.queue}
    return [other for other in session.execute(_PAST_JOBS, like) if other.id != job.id]


# Built once, as every submission runs them: the queues of the live workers; what the running jobs of a queue
# have left; the last succeeded jobs of a tenant, kind, task and queue.
# Core statements (of the tables, not the mapped classes): they skip the ORM's work per execution.
_WORKERS, _JOBS = Worker.__table__.c, Job.__table__.c
_LIVE_WORKER_QUEUES = select(_WORKERS.queues).where(_WORKERS.last_seen_at >= bindparam("seen_after"))
_RUNNING_ON_QUEUE = select(_JOBS.eta_seconds, _JOBS.estimated_run_seconds, _JOBS.started_at, _JOBS.tenant_id).where(
    _JOBS.status == JobStatus.RUNNING, _JOBS.queue == bindparam("queue"))
_PAST_JOBS = (
    select(_JOBS.id, _JOBS.kind, _JOBS.params, _JOBS.result, _JOBS.progress_total, _JOBS.started_at, _JOBS.finished_at)
    .where(_JOBS.tenant_id == bindparam("tenant_id"), _JOBS.status == JobStatus.SUCCEEDED,
           _JOBS.kind == bindparam("kind"), _JOBS.task == bindparam("task"), _JOBS.queue == bindparam("queue"))
    .order_by(_JOBS.id.desc()).limit(PAST_JOBS * 5)
)


def _rates(past) -> list[tuple[float, float]]:
    """(rate, overhead) of up to PAST_JOBS of the `past` jobs that measured one."""
    rates = []
    for other in past:
        measured = _measure(other)
        if measured:
            rates.append(measured)
        if len(rates) == PAST_JOBS:
            break
    return rates


def _measure(job) -> tuple[float, float] | None:
    """(rate, overhead) of a finished job (a Job, or a row with its columns): rows or training samples per second
    while it worked, and the seconds of its run besides that (loading the model, speed probes, evaluating,
    saving), which do not grow with the work. Speed probes (`tuning`: once per machine and model shape) count
    as neither. Without a breakdown of its time, all of it counts as work."""
    result = job.result or {}
    run = (job.finished_at - job.started_at).total_seconds() if job.started_at and job.finished_at else None
    if job.kind in TRAINING_KINDS:
        train = result.get("train") or {}
        rate, training = train.get("train_samples_per_second"), train.get("train_runtime_s")
        if not rate or not math.isfinite(rate) or rate <= 0:
            return None
        probing = float(train.get("tuning_s") or 0.0)
        overhead = max(run - training - probing, 0.0) if run and training and math.isfinite(training) else 0.0
        return float(rate), overhead
    if not job.progress_total or not run or run <= 0:
        return None
    phases = result.get("seconds") or {}
    working = float(phases.get("predicting") or 0) + float(phases.get("writing") or 0)
    probing = float(phases.get("tuning") or 0)
    if 0 < working < run:
        return job.progress_total / working, max(run - working - probing, 0.0)
    return job.progress_total / max(run - probing, 1e-3), 0.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
