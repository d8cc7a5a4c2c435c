"""Row ids as the databases store them; any other integer names no row."""

from __future__ import annotations

MAX_ROW_ID = 2**63 - 1  # BIGINT on PostgreSQL, a 64-bit INTEGER on SQLite


def is_row_id(value: int) -> bool:
    """Return whether `value` can be a stored id (a larger one overflows the SQLite driver)."""
    return 0 < value <= MAX_ROW_ID
