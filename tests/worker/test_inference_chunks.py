"""How a batch-inference job sizes the chunks it commits."""

from __future__ import annotations

from worker.jobs.inference import CHUNK_SECONDS, FIRST_CHUNK_ROWS, MAX_CHUNK_ROWS, _ChunkSizes


def test_a_fixed_chunk_size_is_kept():
    sizes = _ChunkSizes(500)
    sizes.measured(500, 0.01)
    assert sizes.next() == 500


def test_chunks_are_sized_to_take_about_chunk_seconds():
    sizes = _ChunkSizes(None)
    assert sizes.next() == FIRST_CHUNK_ROWS
    sizes.measured(FIRST_CHUNK_ROWS, FIRST_CHUNK_ROWS / 100)  # 100 rows/s
    assert sizes.next() == int(100 * CHUNK_SECONDS)
    sizes.measured(3000, 3000 / 2)  # a slow stretch: 2 rows/s
    assert sizes.next() == FIRST_CHUNK_ROWS  # never below the first size
    sizes.measured(256, 0.0001)  # very fast
    assert sizes.next() == MAX_CHUNK_ROWS
