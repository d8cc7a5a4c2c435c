"""The sweeper against a real Redis and both databases: lost messages are re-sent, present ones are not."""

from __future__ import annotations

from datetime import timedelta

import redis
from sqlalchemy import select, update

from db.base import utcnow
from db.models import Job, JobEvent, OutboxMessage
from db.services.jobs import create_job
from db.services.tenants import get_or_create_tenant
from worker.broker import pending_job_ids
from worker.celery_app import make_celery
from worker.config import Settings
from worker.outbox import relay_outbox
from worker.sweeper import sweep


def submit(session_factory, count: int) -> list[int]:
    with session_factory() as session, session.begin():
        tenant = get_or_create_tenant(session, "acme")
        return [create_job(session, tenant_id=tenant.id, kind="evaluate", task="text-classification",
                           params={"model": "m", "dataset_id": i}, queue="sweeper-test")[0].id
                for i in range(count)]


def age_outbox(session_factory, seconds: float) -> None:
    with session_factory() as session, session.begin():
        session.execute(update(OutboxMessage).values(sent_at=utcnow() - timedelta(seconds=seconds)))


def strand_in_unacked(celery) -> None:
    """A consumer takes the queue's next message, then dies holding it (in kombu's unacked set)."""
    with celery.connection_for_read() as connection:
        queue = connection.SimpleQueue("sweeper-test", no_ack=False)
        queue.get(timeout=5)
        connection.default_channel.qos.restore_at_shutdown = False


def age_unacked(client, seconds: float) -> None:
    """Make the first unacked message look delivered `seconds` ago."""
    client.zadd("unacked_index", {client.zrange("unacked_index", 0, 0)[0]: client.time()[0] - seconds})


def test_sweeper_resends_only_the_messages_the_broker_lost(session_factory, redis_url):
    settings = Settings(redis_url=redis_url, redispatch_after_seconds=5, queue_evaluate="sweeper-test")
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    celery = make_celery(settings)
    kept, lost = submit(session_factory, 2), submit(session_factory, 2)
    assert relay_outbox(session_factory, celery) == 4
    assert pending_job_ids(redis_url, ["sweeper-test"], delivered_within_seconds=5) == set(kept + lost)
    client.flushall()
    for job_id in kept:  # these messages are still (again) in the broker
        celery.send_task("jobs.evaluate", args=[job_id], queue="sweeper-test", priority=4)
    age_outbox(session_factory, 60)
    assert sweep(session_factory, settings)["redispatched"] == 2
    relay_outbox(session_factory, celery)
    assert pending_job_ids(redis_url, ["sweeper-test"], delivered_within_seconds=5) == set(kept + lost)
    with session_factory() as session:
        rescued = session.scalars(select(JobEvent.job_id).where(JobEvent.type == "rescue")).all()
    assert sorted(rescued) == sorted(lost)
    assert sweep(session_factory, settings)["redispatched"] == 0  # freshly sent: nothing to do
    client.flushall()


def test_a_message_stranded_in_a_dead_consumers_unacked_set_is_resent(session_factory, redis_url):
    settings = Settings(redis_url=redis_url, redispatch_after_seconds=5, queue_evaluate="sweeper-test")
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    celery = make_celery(settings)
    [job_id] = submit(session_factory, 1)
    relay_outbox(session_factory, celery)
    strand_in_unacked(celery)
    assert client.hlen("unacked") == 1 and client.llen("sweeper-test") == 0
    assert pending_job_ids(redis_url, ["sweeper-test"], delivered_within_seconds=5) == {job_id}
    age_unacked(client, 60)
    age_outbox(session_factory, 60)
    assert sweep(session_factory, settings)["redispatched"] == 1
    client.flushall()


def test_a_queued_job_whose_message_started_another_job_is_not_resent(session_factory, redis_url):
    """A message starts the first job in line (claim_next), not always its own: a queued job without a
    message of its own is normal while its queue holds as many messages as queued jobs."""
    settings = Settings(redis_url=redis_url, redispatch_after_seconds=5, queue_evaluate="sweeper-test")
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    celery = make_celery(settings)
    first, second, started = submit(session_factory, 3)
    relay_outbox(session_factory, celery)
    client.flushall()
    for job_id in (started, second):  # first's message was the one that started `started`
        celery.send_task("jobs.evaluate", args=[job_id], queue="sweeper-test", priority=4)
    with session_factory() as session, session.begin():
        session.execute(update(Job).where(Job.id == started).values(status="running"))
    age_outbox(session_factory, 60)

    assert sweep(session_factory, settings)["redispatched"] == 0  # two messages, two queued jobs
    client.flushall()  # now one message for two queued jobs: the oldest without a message gets one
    celery.send_task("jobs.evaluate", args=[second], queue="sweeper-test", priority=4)
    assert sweep(session_factory, settings)["redispatched"] == 1
    with session_factory() as session:
        assert session.scalars(select(JobEvent.job_id).where(JobEvent.type == "rescue")).all() == [first]
    client.flushall()


def test_between_full_checks_a_sweep_reads_messages_only_when_a_queue_is_short(session_factory, redis_url,
                                                                             monkeypatch):
    from worker import sweeper

    settings = Settings(redis_url=redis_url, redispatch_after_seconds=5, queue_evaluate="sweeper-test")
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    celery = make_celery(settings)
    jobs = submit(session_factory, 3)
    assert sweeper.messages_short(session_factory, settings) is False  # none sent yet: none can be lost
    relay_outbox(session_factory, celery)
    age_outbox(session_factory, 60)
    assert sweeper.messages_short(session_factory, settings) is False

    def read_every_message(*_args, **_kwargs):
        raise AssertionError("read every message while each queued job's message was there")

    with monkeypatch.context() as patched:
        patched.setattr(sweeper, "pending_job_ids", read_every_message)
        assert sweep(session_factory, settings, full_check=False)["redispatched"] == 0

    client.flushall()  # the broker loses them: the count says so, and the sweep re-sends them
    assert sweeper.messages_short(session_factory, settings) is True
    assert sweep(session_factory, settings, full_check=False)["redispatched"] == 3
    relay_outbox(session_factory, celery)
    assert pending_job_ids(redis_url, ["sweeper-test"], delivered_within_seconds=5) == set(jobs)
    assert sweeper.messages_short(session_factory, settings) is False
    client.flushall()


def test_a_message_stranded_in_a_dead_consumers_unacked_set_makes_its_queue_short(session_factory, redis_url):
    from worker import sweeper

    settings = Settings(redis_url=redis_url, redispatch_after_seconds=5, queue_evaluate="sweeper-test")
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    celery = make_celery(settings)
    submit(session_factory, 1)
    relay_outbox(session_factory, celery)
    strand_in_unacked(celery)
    age_outbox(session_factory, 60)
    assert sweeper.messages_short(session_factory, settings) is False  # delivered a moment ago: in flight
    age_unacked(client, 60)
    assert sweeper.messages_short(session_factory, settings) is True
    assert sweep(session_factory, settings, full_check=False)["redispatched"] == 1
    client.flushall()
