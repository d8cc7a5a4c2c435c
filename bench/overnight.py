"""A night, measured: three tenants, a run window, priorities, deadlines and two workers, time compressed.

Starts the stack with two workers (SQLite by default, or --database-url) and a per-tenant cap of one running
job. During the "day" each tenant runs one fine-tune and one batch job of MiniLM on SST-2 sentences, so the
service has measured throughput to estimate from. Then a run window `night` is configured (API and workers
restarted) to open --day-seconds later and last --window-seconds (standing for 22:00-06:00: with the
defaults one second is four minutes), and the tenants submit the night's work with `not_before: night`:

- bulk: --bulk-jobs batch jobs of --docs sentences, priority 3, due by the window's end;
- research: two fine-tunes, priority 5, due by the window's end; the second trains --long-epochs epochs with
  `pause_outside_window` (if the window closes first it checkpoints and waits for the next night);
- urgent: a batch job at priority 9 due a quarter into the window, and a fine-tune at priority 7.

Prints, per tenant, the wait from the window's opening to each job's first start; deadline hits and misses
(and whether the warning at submission called them); the error of the run-time estimate given at
submission (predicted vs actual run seconds) and of `expected_finish_at`; and each worker's busy share
of the window (sampled every 0.25 s from the job rows' leases). Needs ../shared/datasets/sst2.

    python bench/overnight.py [--day-seconds 30] [--window-seconds 120] [--docs 3000] [--bulk-jobs 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from _common import command_line, minilm_path, sst2_rows, write_csv

NIGHT_HOURS = 8  # what the window stands for: 22:00-06:00


@dataclass
class Planned:
    tenant: str
    name: str
    kind: str
    params: dict
    priority: int
    deadline: datetime | None
    pause: bool = False
    response: dict = field(default_factory=dict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--day-seconds", type=float, default=30.0,
                        help="from the end of the day's measuring jobs to the window's opening (submissions come then)")
    parser.add_argument("--window-seconds", type=float, default=120.0, help="how long the night lasts")
    parser.add_argument("--docs", type=int, default=3000, help="sentences per batch job")
    parser.add_argument("--train-rows", type=int, default=400, help="rows per night fine-tune (one epoch)")
    parser.add_argument("--bulk-jobs", type=int, default=6)
    parser.add_argument("--long-epochs", type=float, default=3.0, help="epochs of the fine-tune that pauses")
    parser.add_argument("--database-url", default="", help="default: SQLite in a temporary data dir")
    args = parser.parse_args()

    rows = sst2_rows(args.docs + 3 * args.train_rows)
    with tempfile.TemporaryDirectory(prefix="nightshift-night-") as tmp:
        run(args, Path(tmp), rows)


def run(args, tmp: Path, rows) -> None:
    from db.base import utcnow
    from db.session import make_engine, make_session_factory
    from nightshift.client import Client
    from nightshift.stack import Stack, free_port
    from worker.config import Settings

    settings = Settings.from_env(
        data_dir=str(tmp / "data"), database_url=args.database_url, api_port=free_port(), api_workers=2,
        timezone="UTC", max_running_per_tenant=1, heartbeat_seconds=1.0, sweep_seconds=1.0, relay_seconds=0.5,
    )
    stack = Stack(settings, workers=2)
    settings = stack.start(redis_url=None)
    engine = make_engine(settings.database_url)
    database = make_session_factory(engine)
    try:
        clients = {tenant: Client(settings.base_url, _token(database, tenant), timeout=120)
                   for tenant in ("bulk", "research", "urgent")}
        base = minilm_path()
        data = _upload(clients, tmp, rows, args)
        _calibrate(clients, data, base)
        opens = utcnow() + timedelta(seconds=args.day_seconds)
        closes = opens + timedelta(seconds=args.window_seconds)
        _set_window(stack, f"night={opens:%H:%M:%S}-{closes:%H:%M:%S}")
        print(f"night window {opens:%H:%M:%S}-{closes:%H:%M:%S} UTC "
              f"(1 s stands for {NIGHT_HOURS * 60 / args.window_seconds:.1f} min)", flush=True)
        plan = _plan(data, base, args, opens, closes)
        for job in plan:
            body = {"priority": job.priority, "not_before": "night", "pause_outside_window": job.pause}
            if job.deadline is not None:
                body["deadline"] = job.deadline.isoformat() + "Z"
            job.response = clients[job.tenant].submit(job.kind, job.params, **body)
        print(f"{len(plan)} night jobs submitted at {utcnow():%H:%M:%S}; waiting for the window", flush=True)
        sampler = _Sampler(database, stack)
        sampler.start()
        _wait_for_night(database, plan, closes, args.window_seconds)
        sampler.stop()
        _report(database, plan, opens, closes, sampler, args)
    finally:
        stack.stop()
        engine.dispose()


def _set_window(stack, windows: str) -> None:
    """Configure the run window on the API and the workers (restarted: settings are read at start)."""
    stack.settings = stack.settings.with_overrides(run_windows=windows)
    for name in ("api", "w1", "w2"):
        stack.processes[name].terminate()
        stack.processes[name].wait(timeout=120)
        stack.start_process(name)
    stack.wait_for_api()


def _token(database, tenant: str) -> str:
    from db.services.tenants import get_or_create_tenant, issue_token

    with database.begin() as session:
        return issue_token(session, get_or_create_tenant(session, tenant))


def _upload(clients, tmp: Path, rows, args) -> dict:
    """Each tenant's training rows and documents (SST-2 sentences)."""
    data = {}
    docs = rows[: args.docs]
    for i, (tenant, client) in enumerate(clients.items()):
        train = rows[args.docs + i * args.train_rows: args.docs + (i + 1) * args.train_rows]
        data[tenant] = {
            "train": client.upload_dataset(write_csv(tmp / f"{tenant}-train.csv", train), text_column="text",
                                           label_column="label")["id"],
            "docs": client.upload_dataset(write_csv(tmp / f"{tenant}-docs.csv", [(t,) for t, _ in docs],
                                                    header=("text",)), text_column="text")["id"],
            "small": client.upload_dataset(write_csv(tmp / f"{tenant}-small.csv", [(t,) for t, _ in docs[:800]],
                                                     header=("text",)), text_column="text")["id"],
        }
    return data


def _finetune(base: str, dataset_id: int, name: str, epochs: float = 1.0) -> dict:
    return {"base_model": base, "train_dataset_id": dataset_id, "epochs": epochs, "batch_size": 16, "max_length": 64,
            "model_name": name, "validation_fraction": 0.1, "save_steps": 10}


def _calibrate(clients, data, base) -> None:
    """The day: one fine-tune and one batch job per tenant, so every night job has measured jobs like it."""
    tuned = {t: c.submit("finetune", _finetune(base, data[t]["train"], f"{t}-sentiment")) for t, c in clients.items()}
    for tenant, job in tuned.items():
        done = clients[tenant].wait(job["id"], timeout=900)
        assert done["status"] == "succeeded", done["error"]
    batches = {t: c.submit("batch_inference", {"model": f"{t}-sentiment", "dataset_id": data[t]["small"]})
               for t, c in clients.items()}
    for tenant, job in batches.items():
        done = clients[tenant].wait(job["id"], timeout=900)
        assert done["status"] == "succeeded", done["error"]
    print("day: one fine-tune and one batch job per tenant measured", flush=True)


def _plan(data, base, args, opens: datetime, closes: datetime) -> list[Planned]:
    def batch(tenant):
        return {"model": f"{tenant}-sentiment", "dataset_id": data[tenant]["docs"]}

    quarter = opens + (closes - opens) / 4
    plan = [Planned("bulk", f"bulk batch {i + 1}", "batch_inference", batch("bulk"), 3, closes)
            for i in range(args.bulk_jobs)]
    plan += [Planned("research", "research fine-tune 1", "finetune",
                     _finetune(base, data["research"]["train"], "research-night"), 5, closes),
             Planned("research", "research fine-tune 2 (pauses)", "finetune",
                     _finetune(base, data["research"]["train"], "research-night-2", args.long_epochs), 5, closes,
                     pause=True),
             Planned("urgent", "urgent batch", "batch_inference", batch("urgent"), 9, quarter),
             Planned("urgent", "urgent fine-tune", "finetune",
                     _finetune(base, data["urgent"]["train"], "urgent-night"), 7, closes)]
    return plan


def _wait_for_night(database, plan, closes: datetime, window_seconds: float) -> None:
    """Until every night job has ended or is paused after the window (or a window's length past its end)."""
    from db.base import utcnow
    from db.models import Job

    ids = [job.response["id"] for job in plan]
    give_up = closes + timedelta(seconds=window_seconds)
    while utcnow() < give_up:
        with database() as session:
            statuses = [session.get(Job, i).status for i in ids]
        if utcnow() > closes and all(s in ("succeeded", "failed", "cancelled", "scheduled") for s in statuses):
            return
        time.sleep(1.0)


class _Sampler:
    """Every 0.25 s: which worker's pool process holds each running job's lease."""

    def __init__(self, database, stack) -> None:
        self.database, self.stack = database, stack
        self.samples: list[tuple[datetime, set[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil
        from sqlalchemy import select

        from db.base import utcnow
        from db.models import Job

        workers = {proc.pid: name for name, proc in self.stack.processes.items() if name.startswith("w")}
        while not self._stop.wait(0.25):
            with self.database() as session:
                owners = session.scalars(select(Job.lease_owner).where(Job.status == "running")).all()
            busy = set()
            for owner in filter(None, owners):
                try:
                    busy.add(workers.get(psutil.Process(int(owner.rsplit(":", 1)[1])).ppid(), "?"))
                except psutil.NoSuchProcess:
                    pass
            self.samples.append((utcnow(), busy))


def _first_start(session, job_id: int) -> datetime | None:
    from sqlalchemy import select

    from db.models import JobEvent

    return session.scalars(select(JobEvent.created_at).where(JobEvent.job_id == job_id, JobEvent.type == "status",
                                                             JobEvent.message.startswith("started on"))
                           .order_by(JobEvent.id)).first()


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "")) if value else None


def _report(database, plan, opens: datetime, closes: datetime, sampler: _Sampler, args) -> None:
    from db.models import Job

    minutes = NIGHT_HOURS * 60 / args.window_seconds  # night minutes per second

    print(f"\n{command_line()}\n")
    print("| job | tenant | priority | status | wait (s) | run (s) | estimate at submit / at start (s) | deadline | "
          "finished vs deadline (s) | warned |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    waits: dict[str, list[float]] = {}
    hits = misses = warned_right = warned = 0
    run_errors, start_errors, finish_errors = [], [], []
    with database() as session:
        for job in plan:
            row = session.get(Job, job.response["id"])
            first = _first_start(session, row.id)
            wait = (first - max(opens, row.created_at)).total_seconds() if first else None
            waits.setdefault(job.tenant, []).append(wait if wait is not None else float("nan"))
            ran = (row.finished_at - row.started_at).total_seconds() if row.finished_at and row.status == "succeeded" \
                and row.attempts == 1 else None
            estimate = job.response.get("estimated_run_seconds")
            if ran is not None and estimate:
                run_errors.append((estimate - ran) / ran)
            if ran is not None and row.estimated_run_seconds:  # measured anew when it started
                start_errors.append((row.estimated_run_seconds - ran) / ran)
            predicted_finish = _parse(job.response.get("expected_finish_at"))
            if predicted_finish and row.status == "succeeded":
                finish_errors.append((predicted_finish - row.finished_at).total_seconds())
            made = row.status == "succeeded" and row.finished_at <= job.deadline
            hits, misses = hits + made, misses + (not made)
            at_risk = bool(job.response.get("deadline_at_risk"))
            warned += at_risk
            warned_right += at_risk and not made
            margin = (row.finished_at - job.deadline).total_seconds() if row.finished_at else None
            print(f"| {job.name} | {job.tenant} | {job.priority} | {row.status} | {_f(wait)} | {_f(ran)} | "
                  f"{_f(estimate)} / {_f(row.estimated_run_seconds)} | +{(job.deadline - opens).total_seconds():.0f} s | {_f(margin)} | "
                  f"{'yes' if at_risk else 'no'} |")
    print("\nper tenant: wait from the window's opening to the first start (seconds; night minutes in brackets)")
    for tenant, values in waits.items():
        finite = [v for v in values if v == v]
        if finite:
            print(f"  {tenant:<9} jobs {len(values)}  median {statistics.median(finite):6.1f} "
                  f"({statistics.median(finite) * minutes:5.0f} min)  max {max(finite):6.1f} "
                  f"({max(finite) * minutes:5.0f} min)  not started {len(values) - len(finite)}")
    print(f"\ndeadlines: {hits} met, {misses} missed; warned at submission: {warned} "
          f"({warned_right} of them did miss)")
    _report_pauses(database, plan)
    if run_errors:
        print(f"run-time estimate at submission vs actual: median error {statistics.median(run_errors):+.0%}, "
              f"median |error| {statistics.median(abs(e) for e in run_errors):.0%} over {len(run_errors)} jobs")
    if start_errors:
        print(f"run-time estimate at its start vs actual: median error {statistics.median(start_errors):+.0%}, "
              f"median |error| {statistics.median(abs(e) for e in start_errors):.0%} over {len(start_errors)} jobs")
    if finish_errors:
        print(f"expected_finish_at at submission vs actual finish: median {statistics.median(finish_errors):+.1f} s, "
              f"median |error| {statistics.median(abs(e) for e in finish_errors):.1f} s over {len(finish_errors)} jobs")
    inside = [busy for moment, busy in sampler.samples if opens <= moment < closes]
    if inside:
        for worker in ("w1", "w2"):
            share = sum(worker in busy for busy in inside) / len(inside)
            print(f"utilisation inside the window: {worker} busy {share:.0%} of {len(inside)} samples")
        both = sum(len(busy) for busy in inside) / (2 * len(inside))
        print(f"utilisation inside the window: both workers {both:.0%}")


def _report_pauses(database, plan) -> None:
    """What each job that kept to the window did when it closed."""
    from sqlalchemy import select

    from db.models import Job, JobEvent

    with database() as session:
        for job in (j for j in plan if j.pause):
            row = session.get(Job, job.response["id"])
            paused = session.scalars(select(JobEvent.message).where(
                JobEvent.job_id == row.id, JobEvent.message.contains("paused with"))).first()
            saved = session.scalars(select(JobEvent.message).where(
                JobEvent.job_id == row.id, JobEvent.message.startswith("checkpoint saved"))
                .order_by(JobEvent.id.desc())).first()
            if paused:
                print(f"{job.name}: paused when the window closed, {saved} of {row.progress_total}; resumes from it "
                      f"at {row.not_before:%Y-%m-%d %H:%M:%S} UTC, the window's next opening")
            else:
                print(f"{job.name}: {row.status} inside the window, no pause needed")


def _f(value) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    main()
