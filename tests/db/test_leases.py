"""Claim, fencing, cancellation, rescue and idempotency on real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from db.base import utcnow
from db.enums import JobStatus
from db.errors import Conflict
from db.models import Job, JobEvent, OutboxMessage
from db.services.jobs import create_job, request_cancel
from db.services.leases import LostAttempt, claim_job, end_lost_attempt, finish_job, renew_lease
from db.services.tenants import get_or_create_tenant


MAX_INTERRUPTIONS = 3


def claim(session_factory, job_id, owner="w1", lease_seconds=60):
    with session_factory() as session, session.begin():
        return claim_job(session, job_id, owner=owner, lease_seconds=lease_seconds,
                         max_interruptions=MAX_INTERRUPTIONS)


def lose(session, job, how=LostAttempt.LEASE_EXPIRED, **kwargs):
    return end_lost_attempt(session, job, how, delay_seconds=0, max_interruptions=MAX_INTERRUPTIONS, **kwargs)


def test_submission_writes_job_and_outbox_message_together(session_factory, job_id):
    with session_factory() as session:
        messages = session.scalars(select(OutboxMessage).where(OutboxMessage.job_id == job_id)).all()
    assert [(m.task_name, m.queue, m.sent_at) for m in messages] == [("jobs.evaluate", "cpu", None)]


def test_second_claim_of_a_live_job_is_refused(session_factory, job_id):
    first = claim(session_factory, job_id, "w1")
    second = claim(session_factory, job_id, "w2")
    assert first is not None and first.epoch == 1 and first.attempt == 1
    assert second is None


def test_expired_lease_is_reclaimed_with_a_new_epoch_and_old_writes_are_fenced(session_factory, job_id):
    old = claim(session_factory, job_id, "w1", lease_seconds=-1)  # already expired
    new = claim(session_factory, job_id, "w2")
    assert new is not None and new.epoch == old.epoch + 1
    with session_factory() as session, session.begin():
        assert renew_lease(session, old, lease_seconds=60) == (False, False)
        assert not finish_job(session, old, JobStatus.SUCCEEDED)
        assert finish_job(session, new, JobStatus.SUCCEEDED)
    with session_factory() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.epoch, job.attempts, job.interruptions) == ("succeeded", 2, 1, 1)


def test_finished_job_cannot_be_claimed_again(session_factory, job_id):
    lease = claim(session_factory, job_id)
    with session_factory() as session, session.begin():
        finish_job(session, lease, JobStatus.FAILED, error_code="bad_data", error_message="row 3 is empty")
    assert claim(session_factory, job_id) is None


def test_cancel_of_queued_job_means_it_never_starts(session_factory, job_id):
    with session_factory() as session, session.begin():
        tenant_id = session.get(Job, job_id).tenant_id
        job = request_cancel(session, tenant_id, job_id)
        assert job.status == "cancelled"
    assert claim(session_factory, job_id) is None


def test_cancel_of_running_job_is_seen_by_its_heartbeat(session_factory, job_id):
    lease = claim(session_factory, job_id)
    with session_factory() as session, session.begin():
        request_cancel(session, session.get(Job, job_id).tenant_id, job_id)
    with session_factory() as session, session.begin():
        assert renew_lease(session, lease, lease_seconds=60) == (True, True)
        assert session.get(Job, job_id).status == "running"


def test_cancel_of_finished_job_is_a_conflict(session_factory, job_id):
    lease = claim(session_factory, job_id)
    with session_factory() as session, session.begin():
        finish_job(session, lease, JobStatus.SUCCEEDED)
    with session_factory() as session, pytest.raises(Conflict):
        request_cancel(session, session.get(Job, job_id).tenant_id, job_id)


def rescues_and_outbox(session_factory, job_id):
    with session_factory() as session:
        rescues = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "rescue")).all()
        outbox = session.scalars(select(OutboxMessage).where(OutboxMessage.job_id == job_id)).all()
    return rescues, outbox


def test_a_lost_worker_is_not_charged_to_the_job_and_has_its_own_cap(session_factory, job_id):
    for lost in range(1, MAX_INTERRUPTIONS + 1):
        lease = claim(session_factory, job_id, f"w{lost}", lease_seconds=-1)
        assert lease is not None and lease.attempt == 1  # two attempts allowed, yet three losses
        with session_factory() as session, session.begin():
            expected = "requeued" if lost < MAX_INTERRUPTIONS else "failed"
            assert lose(session, session.get(Job, job_id)) == expected
    with session_factory() as session:
        job = session.get(Job, job_id)
    assert (job.status, job.error_code, job.attempts, job.interruptions) == ("failed", "worker_lost", 0, 3)
    assert "NIGHTSHIFT_MAX_INTERRUPTIONS" in job.error_message
    rescues, outbox = rescues_and_outbox(session_factory, job_id)
    assert [r.data["action"] for r in rescues] == ["lease_expired"] * 2 and len(outbox) == 3
    assert claim(session_factory, job_id) is None


def test_a_dead_job_process_is_charged_until_max_attempts_then_fails_with_reason(session_factory, job_id):
    for attempt, expected in ((1, "requeued"), (2, "failed")):
        lease = claim(session_factory, job_id, f"w{attempt}")
        assert lease.attempt == attempt
        with session_factory() as session, session.begin():
            outcome = lose(session, session.get(Job, job_id), LostAttempt.PROCESS_DIED, detail="signal 9 (SIGKILL)")
            assert outcome == expected
    with session_factory() as session:
        job = session.get(Job, job_id)
    assert (job.status, job.error_code, job.attempts, job.interruptions) == ("failed", "process_died", 2, 0)
    assert "max_attempts" in job.error_message and "signal 9" in job.error_message
    rescues, outbox = rescues_and_outbox(session_factory, job_id)
    assert [r.data["action"] for r in rescues] == ["process_died"] and len(outbox) == 2


def test_a_late_report_of_a_dead_process_changes_nothing_after_a_takeover(session_factory, job_id):
    claim(session_factory, job_id, "w1", lease_seconds=-1)
    with session_factory() as session:
        stale = session.get(Job, job_id)  # what the first worker knew of its job
    new = claim(session_factory, job_id, "w2")
    with session_factory() as session, session.begin():
        assert lose(session, stale, LostAttempt.PROCESS_DIED) is None
    with session_factory() as session:
        job = session.get(Job, job_id)
    assert (job.status, job.epoch, job.lease_owner) == ("running", new.epoch, "w2")


def test_a_job_past_its_hard_limit_fails_with_time_limit_not_a_retry(session_factory, job_id):
    claim(session_factory, job_id, lease_seconds=-1)
    with session_factory() as session, session.begin():
        session.execute(update(Job).where(Job.id == job_id).values(started_at=utcnow() - timedelta(hours=2)))
    with session_factory() as session, session.begin():
        assert lose(session, session.get(Job, job_id), hard_limit_seconds=3600) == "failed"
    with session_factory() as session:
        job = session.get(Job, job_id)
    assert (job.status, job.error_code, job.attempts) == ("failed", "time_limit", 1)


def test_rescue_leaves_a_live_lease_alone(session_factory, job_id):
    claim(session_factory, job_id, lease_seconds=60)
    with session_factory() as session, session.begin():
        job = session.get(Job, job_id)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() + timedelta(minutes=1)))
        assert lose(session, job) is None


def test_idempotency_key_returns_the_same_job(session_factory):
    with session_factory() as session, session.begin():
        tenant = get_or_create_tenant(session, "acme")
        kwargs = dict(tenant_id=tenant.id, kind="evaluate", task="text-classification",
                      params={"model": "m", "dataset_id": 1}, queue="cpu", idempotency_key="k-1")
        first, created_first = create_job(session, **kwargs)
        again, created_again = create_job(session, **kwargs)
        assert (created_first, created_again) == (True, False) and first.id == again.id
        with pytest.raises(Conflict):
            create_job(session, **{**kwargs, "params": {"model": "other", "dataset_id": 1}})


def test_two_sweepers_rescue_an_expired_lease_once(session_factory, job_id):
    claim(session_factory, job_id, lease_seconds=-1)
    with session_factory() as first, session_factory() as second:
        stale_a, stale_b = first.get(Job, job_id), second.get(Job, job_id)  # both read the same row
        first.commit(), second.commit()
        assert lose(first, stale_a) == "requeued"
        first.commit()
        assert lose(second, stale_b) is None
        second.commit()
    with session_factory() as session:
        outbox = session.scalars(select(OutboxMessage).where(OutboxMessage.job_id == job_id)).all()
    assert len(outbox) == 2  # the submission's message and one rescue, not two


def test_taking_over_an_expired_lease_is_recorded_as_a_rescue(session_factory, job_id):
    claim(session_factory, job_id, "w1", lease_seconds=-1)
    assert claim(session_factory, job_id, "w2").attempt == 1  # the lost attempt is refunded
    with session_factory() as session:
        rescues = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "rescue")).all()
        job = session.get(Job, job_id)
    assert [(r.data["action"], r.epoch) for r in rescues] == [("lease_expired", 2)]
    assert (job.attempts, job.interruptions) == (1, 1)


def test_an_illegal_status_move_cannot_be_written(session_factory, job_id):
    from db.enums import IllegalTransition
    from db.services.jobs import status_guard

    with pytest.raises(IllegalTransition):
        status_guard(JobStatus.SUCCEEDED, JobStatus.RUNNING)
