"""Fixtures of the API tests: stored datasets, a queued job and the Celery queues in Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.api.helpers import LABELLED_CSV, UNLABELLED_CSV, evaluate_body, submit, upload

# kombu's Redis transport keeps one list per priority step, named "<queue>\x06\x16<step>"
# (step 0 is the bare queue name); a worker consuming the queue reads them all.
PRIORITY_SEPARATOR = "\x06\x16"


@pytest.fixture
def data_dir(app) -> Path:
    return Path(app.extensions["nightshift"].settings.data_dir)


@pytest.fixture
def labelled(client, auth) -> dict:
    """A dataset with text column `review` and label column `sentiment`."""
    response = upload(client, auth, LABELLED_CSV, "reviews.csv", text_column="review", label_column="sentiment")
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


@pytest.fixture
def unlabelled(client, auth) -> dict:
    """A dataset with only a text column, `review`."""
    response = upload(client, auth, UNLABELLED_CSV, "texts.csv", text_column="review")
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


@pytest.fixture
def queued_job(client, auth, labelled, tiny_model) -> dict:
    """A queued evaluate job that reads `labelled`."""
    return submit(client, auth, evaluate_body(labelled["id"], tiny_model))


@pytest.fixture
def queue_length(redis_url):
    """Return a function counting the messages waiting on a Celery queue, at every priority."""
    client = redis.Redis.from_url(redis_url)

    def length(queue: str) -> int:
        keys = [queue.encode(), *client.scan_iter(match=f"{queue}{PRIORITY_SEPARATOR}*")]
        return sum(client.llen(key) for key in keys)

    yield length
    client.close()
