"""Where the order lives: a wake-up message starts the first job in line in SQL, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select, update

from db.base import utcnow
from db.enums import JobStatus
from db.models import Job, OutboxMessage
from db.services.jobs import create_job, request_cancel
from db.services.leases import claim_next, finish_job, wake_next_in_line
from db.services.tenants import get_or_create_tenant


def submit(session_factory, tenant: str = "acme", *, priority: int = 5, kind: str = "evaluate",
           queue: str = "cpu") -> int:
    with session_factory() as session, session.begin():
        tenant_id = get_or_create_tenant(session, tenant).id
        job, _ = create_job(session, tenant_id=tenant_id, kind=kind, task="text-classification",
                            params={"model": "m", "dataset_id": 1}, queue=queue, priority=priority, max_attempts=2)
        return job.id


def start(session_factory, message_job_id: int, owner: str = "w1", cap: int = 0):
    with session_factory() as session, session.begin():
        return claim_next(session, message_job_id, owner=owner, lease_seconds=60, max_interruptions=3,
                          max_running_per_tenant=cap)


def test_higher_priority_first_then_the_oldest_whichever_message_arrives(session_factory):
    jobs = {name: submit(session_factory, priority=p) for name, p in
            [("low", 1), ("normal", 5), ("urgent", 9), ("normal-later", 5), ("urgent-later", 9)]}

    started = [start(session_factory, jobs["low"]).job_id for _ in jobs]  # every message is the low one's

    assert started == [jobs[n] for n in ("urgent", "urgent-later", "normal", "normal-later", "low")]
    assert start(session_factory, jobs["low"]) is None  # nothing left: a spare message is dropped


def test_at_equal_priority_the_tenant_with_fewer_running_jobs_goes_first(session_factory):
    busy = [submit(session_factory, "busy") for _ in range(4)]
    quiet = submit(session_factory, "quiet")

    first = start(session_factory, busy[0]).job_id
    second = start(session_factory, busy[1]).job_id

    assert first == busy[0]  # nobody running: the oldest
    assert second == quiet  # busy has one running, quiet none: quiet's one job does not wait behind busy's
    assert start(session_factory, busy[2]).job_id == busy[1]


def test_jobs_not_yet_due_cancelled_or_of_another_kind_or_queue_are_skipped(session_factory):
    later = submit(session_factory, priority=9)
    cancelled = submit(session_factory, priority=9)
    other_kind = submit(session_factory, priority=9, kind="batch_inference")
    other_queue = submit(session_factory, priority=9, queue="gpu")
    plain = submit(session_factory, priority=1)
    with session_factory() as session, session.begin():
        session.execute(update(Job).where(Job.id == later).values(not_before=utcnow() + timedelta(hours=1)))
        request_cancel(session, get_or_create_tenant(session, "acme").id, cancelled)

    assert start(session_factory, later).job_id == plain
    assert start(session_factory, other_kind).job_id == other_kind
    assert start(session_factory, other_queue).job_id == other_queue


def test_a_message_still_takes_over_its_own_job_after_a_lost_lease(session_factory):
    lost = submit(session_factory, priority=1)
    with session_factory() as session, session.begin():
        assert claim_next(session, lost, owner="dead", lease_seconds=-1, max_interruptions=3).job_id == lost
    waiting = submit(session_factory, priority=9)

    taken = start(session_factory, lost, owner="w2")

    assert taken.job_id == waiting  # the queue's first in line before any rescue by this message
    assert start(session_factory, lost, owner="w3").job_id == lost  # then its own expired job


def test_two_workers_claiming_at_once_start_two_different_jobs(session_factory):
    jobs = [submit(session_factory, priority=p) for p in (9, 5, 1)]
    results: list = []
    barrier = threading.Barrier(2)

    def worker(owner: str) -> None:
        barrier.wait()
        results.append(start(session_factory, jobs[-1], owner=owner))

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("w1", "w2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    started = sorted(lease.job_id for lease in results if lease is not None)
    assert started == [jobs[0], jobs[1]]  # the loser of a race takes the next in line
    with session_factory() as session, session.begin():  # the fences still hold: each lease ends its own job
        for lease in results:
            if lease is not None:
                assert finish_job(session, lease, JobStatus.SUCCEEDED)


def test_a_tenant_at_its_cap_gets_no_new_job_until_one_ends_and_then_is_woken(session_factory):
    busy = [submit(session_factory, "busy", priority=9) for _ in range(3)]
    quiet = submit(session_factory, "quiet", priority=1)

    running = start(session_factory, busy[0], cap=1)
    assert running.job_id == busy[0]
    assert start(session_factory, busy[1], cap=1).job_id == quiet  # busy is at its cap: the lower priority runs
    assert start(session_factory, busy[2], cap=1) is None  # nothing else may start: the message is dropped

    with session_factory() as session, session.begin():
        assert finish_job(session, running, JobStatus.SUCCEEDED)
        woken = wake_next_in_line(session, "cpu", "evaluate", cap=1)
        messages = session.scalars(select(OutboxMessage.job_id).where(OutboxMessage.sent_at.is_(None))).all()
    assert woken == busy[1] and messages.count(busy[1]) == 2  # its own message at submit, and this wake-up
    assert start(session_factory, busy[2], cap=1).job_id == busy[1]


def test_taking_over_a_lost_job_is_not_held_back_by_the_cap(session_factory):
    lost = submit(session_factory, "busy")
    with session_factory() as session, session.begin():
        claim_next(session, lost, owner="dead", lease_seconds=-1, max_interruptions=3)

    assert start(session_factory, lost, owner="w2", cap=1).job_id == lost
