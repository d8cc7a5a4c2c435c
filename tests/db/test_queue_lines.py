"""The lines of queued jobs the triggers keep: their sums match the jobs through every move, on both databases,
and a job's place and the work ahead of it match a count of the jobs, whichever way they are found."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import delete, func, select, update

from db.enums import JobStatus
from db.migrate import downgrade, upgrade
from db.models import Job, QueueLineChange
from db.services import lines
from db.services.jobs import create_job, queue_position, request_cancel
from db.services.leases import claim_next, finish_job, release_job
from db.services.tenants import get_or_create_tenant


def submit(session_factory, *, priority: int = 5, kind: str = "evaluate", queue: str = "cpu",
           seconds: float | None = 60.0, tenant: str = "acme") -> int:
    with session_factory() as session, session.begin():
        tenant_id = get_or_create_tenant(session, tenant).id
        job, _ = create_job(session, tenant_id=tenant_id, kind=kind, task="text-classification",
                            params={"model": "m", "dataset_id": 1}, queue=queue, priority=priority,
                            estimate=lambda *_: seconds)
        return job.id


def kept_sums(session) -> dict:
    """Each line's sums from its change rows (lines that sum to nothing left out)."""
    rows = session.execute(select(QueueLineChange.queue, QueueLineChange.kind, QueueLineChange.priority,
                                  func.sum(QueueLineChange.queued), func.sum(QueueLineChange.seconds),
                                  func.sum(QueueLineChange.unknown))
                           .group_by(QueueLineChange.queue, QueueLineChange.kind, QueueLineChange.priority))
    return {(q, k, p): (int(n), round(float(s), 6), int(u)) for q, k, p, n, s, u in rows if n or u}


def counted_sums(session) -> dict:
    """Each line's sums counted from the queued jobs themselves."""
    rows = session.execute(select(Job.queue, Job.kind, Job.priority, func.count(),
                                  func.coalesce(func.sum(Job.estimated_run_seconds), 0.0),
                                  func.count() - func.count(Job.estimated_run_seconds))
                           .where(Job.status == JobStatus.QUEUED).group_by(Job.queue, Job.kind, Job.priority))
    return {(q, k, p): (int(n), round(float(s), 6), int(u)) for q, k, p, n, s, u in rows}


def assert_sums_match(session_factory) -> None:
    with session_factory() as session:
        assert kept_sums(session) == counted_sums(session)


def test_line_sums_follow_every_move_of_a_job(session_factory):
    jobs = [submit(session_factory, priority=p, kind=kind, queue=queue, seconds=seconds)
            for p, kind, queue, seconds in itertools.product((1, 5, 9), ("evaluate", "finetune"), ("cpu", "gpu"),
                                                             (30.0, None))]
    assert_sums_match(session_factory)
    with session_factory() as session:
        assert sum(n for n, _, _ in kept_sums(session).values()) == len(jobs)

    with session_factory() as session, session.begin():  # a worker takes two, finishes one, hands one back
        first = claim_next(session, jobs[0], owner="w1", lease_seconds=60, max_interruptions=3)
        second = claim_next(session, jobs[1], owner="w1", lease_seconds=60, max_interruptions=3)
    assert first is not None and second is not None
    with session_factory() as session, session.begin():
        assert finish_job(session, first, JobStatus.SUCCEEDED)
        assert release_job(session, second, reason="shutdown", delay_seconds=0)
    assert_sums_match(session_factory)

    with session_factory() as session, session.begin():
        request_cancel(session, session.get(Job, jobs[2]).tenant_id, jobs[2])
        session.execute(update(Job).where(Job.id == jobs[3]).values(priority=7))  # moves to another line
        session.execute(update(Job).where(Job.id == jobs[4]).values(estimated_run_seconds=99.0))
        session.execute(update(Job).where(Job.id == jobs[5]).values(updated_at=func.now()))  # no line change
    assert_sums_match(session_factory)

    with session_factory() as session, session.begin():
        folded = lines.compact(session)
    assert folded > 0
    assert_sums_match(session_factory)
    with session_factory() as session:  # one row per line that has jobs in it
        assert session.scalar(select(func.count()).select_from(QueueLineChange)) == len(counted_sums(session))

    with session_factory() as session, session.begin():
        session.execute(delete(Job).where(Job.id.in_(jobs[6:10])))
    submit(session_factory, priority=5, seconds=12.5)
    assert_sums_match(session_factory)


@pytest.mark.parametrize("probe", [1, 2, 64])
def test_place_and_work_ahead_match_a_count_of_the_jobs(session_factory, monkeypatch, probe):
    """With a probe of 1 or 2 jobs, a job deep in its line is found from the line's sums, or counted when it
    is deep on both sides; with 64, every job here is counted. Each way gives the same answer."""
    monkeypatch.setattr(lines, "PROBE", probe)
    plan = [(5, 10.0), (9, 20.0), (5, None), (5, 30.0), (1, 40.0), (5, 50.0), (9, None), (5, 60.0), (5, 70.0),
            (5, 80.0), (5, 90.0), (1, 5.0)]
    ids = [submit(session_factory, priority=p, seconds=s) for p, s in plan]
    submit(session_factory, priority=9, kind="finetune")  # another line: never ahead of these
    with session_factory() as session, session.begin():
        taken = claim_next(session, ids[0], owner="w1", lease_seconds=60, max_interruptions=3)  # the first 9
        lines.compact(session)
    submit(session_factory, priority=5, seconds=15.0)  # a change row after the fold
    with session_factory() as session:
        queued = list(session.scalars(select(Job).where(Job.status == JobStatus.QUEUED, Job.kind == "evaluate")))
        assert taken.job_id not in {job.id for job in queued}
        for job in queued:
            ahead = [other for other in queued if (other.priority, -other.id) > (job.priority, -job.id)]
            found = lines.jobs_ahead(session, job)
            assert (found.jobs, round(found.seconds, 6), found.unknown) == (
                len(ahead), round(sum(o.estimated_run_seconds or 0.0 for o in ahead), 6),
                sum(o.estimated_run_seconds is None for o in ahead)), job.id
            position = queue_position(session, job)
            assert type(position) is int and position == len(ahead) + 1  # plain ints: the answer is JSON


def test_the_migration_counts_the_jobs_already_queued(database_url, session_factory):
    downgrade(database_url, "0011")  # before the lines were kept: jobs queued then have no change rows
    try:
        for priority, seconds in [(5, 10.0), (5, None), (9, 30.0)]:
            submit(session_factory, priority=priority, seconds=seconds)
        with session_factory() as session, session.begin():
            claim_next(session, submit(session_factory, priority=1), owner="w1", lease_seconds=60,
                       max_interruptions=3)
    finally:
        upgrade(database_url)
    assert_sums_match(session_factory)
    submit(session_factory, priority=5, seconds=5.0)  # and the triggers keep them from then on
    assert_sums_match(session_factory)
    with session_factory() as session:
        assert kept_sums(session)[("cpu", "evaluate", 5)] == (3, 15.0, 1)
