"""Model versions on real SQLite and PostgreSQL: numbered in order, also when two jobs finish together."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from db.models import ModelArtifact
from db.services.registry import register_model
from db.services.tenants import get_or_create_tenant

WAIT_SECONDS = 20


@pytest.fixture
def tenant_id(session_factory) -> int:
    with session_factory.begin() as session:
        return get_or_create_tenant(session, "acme").id


def register(session, tenant_id: int, name: str = "sentiment", **fields) -> ModelArtifact:
    return register_model(session, tenant_id=tenant_id, name=name, task="text-classification",
                          base_model="tiny", path="/models/x", **fields)


def versions(session_factory, tenant_id: int) -> list[tuple[str, int]]:
    with session_factory() as session:
        rows = session.execute(select(ModelArtifact.name, ModelArtifact.version)
                               .where(ModelArtifact.tenant_id == tenant_id).order_by(ModelArtifact.id))
        return [tuple(row) for row in rows]


def test_versions_count_up_per_name(session_factory, tenant_id):
    with session_factory.begin() as session:
        first = register(session, tenant_id, label_names=["neg", "pos"])
        register(session, tenant_id, "other")
        second = register(session, tenant_id)
    assert (first.version, second.version, first.label_names) == (1, 2, ["neg", "pos"])
    assert first.created_at is not None and first.metrics == {}
    assert versions(session_factory, tenant_id) == [("sentiment", 1), ("other", 1), ("sentiment", 2)]


def test_two_registrations_racing_for_one_name_both_succeed(session_factory, tenant_id):
    """The second reads max(version) while the first's version 1 is written but not committed."""
    first_written, second_inserting = threading.Event(), threading.Event()
    engine = session_factory.kw["bind"]

    def spot_second_insert(_conn, _cursor, statement, *_args):
        if first_written.is_set() and statement.lstrip().upper().startswith("INSERT INTO MODEL_ARTIFACTS"):
            second_inserting.set()

    def first() -> int:
        with session_factory.begin() as session:
            version = register(session, tenant_id).version
            first_written.set()
            assert second_inserting.wait(WAIT_SECONDS)
            time.sleep(0.5)  # the second INSERT now waits on this uncommitted row (or SQLite's write lock)
        return version

    def second() -> int:
        assert first_written.wait(WAIT_SECONDS)
        with session_factory.begin() as session:
            return register(session, tenant_id).version

    event.listen(engine, "before_cursor_execute", spot_second_insert)
    try:
        with ThreadPoolExecutor(2) as pool:
            racing = [pool.submit(first), pool.submit(second)]
            got = [future.result(timeout=2 * WAIT_SECONDS) for future in racing]
    finally:
        event.remove(engine, "before_cursor_execute", spot_second_insert)

    assert got == [1, 2]
    assert versions(session_factory, tenant_id) == [("sentiment", 1), ("sentiment", 2)]


def test_registration_rolls_back_with_the_callers_transaction(session_factory, tenant_id):
    with session_factory() as session:
        with session.begin():
            register(session, tenant_id)
            session.rollback()
    assert versions(session_factory, tenant_id) == []


def test_an_error_that_is_not_a_lost_race_is_raised_at_once(session_factory, tenant_id):
    with session_factory() as session, pytest.raises(IntegrityError):
        register(session, tenant_id + 1000)  # no such tenant: a foreign key, not a version clash
