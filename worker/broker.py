"""Read what the Redis broker holds, so the sweeper can tell a lost message from a waiting one."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable

import redis

# This module reads kombu's private Redis layout (the names below), which kombu may change in any
# release: pyproject.toml pins kombu to the versions it was tested with, and a test keeps the two equal.
KOMBU_TESTED = ">=5.4,<5.8"
# kombu's Redis transport keeps one list per priority step: "queue" and "queue\x06\x16N".
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"  # delivery tag -> delivery time


def priority_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps for `queue`, one per priority step (step 0 is the bare name)."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def queue_lengths(redis_url: str, queues: Iterable[str], *, timeout: float = 2.0) -> dict[str, int]:
    """Return the messages waiting on each queue, at every priority; raise redis.RedisError if Redis is down."""
    client = redis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return {queue: sum(client.llen(key) for key in priority_keys(queue)) for queue in queues}
    finally:
        client.close()


def pending_job_ids(redis_url: str, queues: Iterable[str], *, delivered_within_seconds: float) -> set[int]:
    """Return the ids of jobs whose message waits in `queues` or was delivered only recently.

    A message delivered longer ago whose job is still queued sits in the `unacked` hash of a
    consumer that died (or is busy with another job): Redis would hand it out again only after the
    visibility timeout, hours later, so it does not count as pending.
    """
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = [key for queue in set(queues) for key in priority_keys(queue)]
        raw = [m for key in keys for m in client.lrange(key, 0, -1)]
        since = client.time()[0] - delivered_within_seconds
        recent = client.zrangebyscore(UNACKED_INDEX_KEY, since, "+inf")
        if recent:
            raw += [_unwrap_unacked(v) for v in client.hmget(UNACKED_KEY, recent) if v is not None]
    finally:
        client.close()
    return {job_id for message in raw if (job_id := _job_id(message)) is not None}


def pending_counts(redis_url: str, queues: Iterable[str], *, delivered_within_seconds: float) -> dict[str, int]:
    """Return how many messages each of `queues` holds that `pending_job_ids` would count, without reading them.

    The lists' lengths, and the queue of each message delivered within `delivered_within_seconds` (the
    few in flight): a handful of commands however long the queues are.
    """
    counts = queue_lengths(redis_url, set(queues), timeout=5)
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        since = client.time()[0] - delivered_within_seconds
        recent = client.zrangebyscore(UNACKED_INDEX_KEY, since, "+inf")
        for value in client.hmget(UNACKED_KEY, recent) if recent else ():
            queue = _unacked_queue(value)
            if queue in counts:
                counts[queue] += 1
    finally:
        client.close()
    return counts


def _unacked_queue(value: bytes | None) -> str | None:
    """The queue (routing key) of an entry of kombu's unacked hash: [message, exchange, routing key]."""
    try:
        return json.loads(value)[2]
    except (ValueError, IndexError, TypeError):
        return None


def _unwrap_unacked(value: bytes) -> bytes | None:
    try:
        return json.dumps(json.loads(value)[0]).encode()
    except (ValueError, IndexError, TypeError):
        return None


def _job_id(message: bytes | None) -> int | None:
    """Return the job id a Celery message carries, or None for anything else."""
    if not message:
        return None
    try:
        envelope = json.loads(message)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        if envelope.get("headers", {}).get("task", "").startswith("jobs.") and args:
            return int(args[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return None
