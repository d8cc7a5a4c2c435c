"""Migrations and the status machine."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from db.base import Base
from db.enums import IllegalTransition, JobStatus, check_transition
from db.migrate import downgrade, upgrade
from db.session import make_engine


def test_migrations_create_every_table_and_downgrade_cleanly(database_url):
    engine = make_engine(database_url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    downgrade(database_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(database_url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


@pytest.mark.parametrize("terminal", ["succeeded", "failed", "cancelled"])
def test_terminal_states_have_no_way_out(terminal):
    for target in JobStatus:
        with pytest.raises(IllegalTransition):
            check_transition(terminal, target)


def test_queued_cannot_jump_to_succeeded():
    with pytest.raises(IllegalTransition):
        check_transition("queued", "succeeded")
    check_transition("queued", "running")
    check_transition("running", "queued")


def test_migrations_create_the_indexes_the_models_declare(database_url):
    engine = make_engine(database_url)
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        migrated = {index["name"] for index in inspector.get_indexes(table.name) if not index.get("unique")}
        assert migrated == {index.name for index in table.indexes}, table.name
    engine.dispose()
