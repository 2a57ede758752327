"""Task sizes (engine/chunking.py): sized to the measured work, with a short but bounded tail."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsl_flows.engine.chunking import (
    MAX_TASKS_PER_SECOND,
    SHORTEST_SECONDS,
    TARGET_SECONDS,
    ChunkSizer,
)


def sizes(sizer: ChunkSizer, total: int) -> list[int]:
    out, left = [], total
    while left:
        size = sizer.next_size(left)
        out.append(size)
        left -= size
    return out


@settings(deadline=None)
@given(
    total=st.integers(1, 100_000),
    workers=st.integers(1, 5000),
    per_element=st.floats(1e-6, 10.0),
)
def test_measured_tasks_cover_the_work_last_a_second_and_end_in_a_bounded_tail(
    total: int, workers: int, per_element: float
) -> None:
    sizer = ChunkSizer(workers)
    sizer.observe(elements=100, seconds=100 * per_element)
    got = sizes(sizer, total)
    assert sum(got) == total and min(got) >= 1
    floor = workers / MAX_TASKS_PER_SECOND  # shorter tasks: too many a second
    longest = max(1, int(max(TARGET_SECONDS, floor) / per_element))
    shortest = max(1, int(max(SHORTEST_SECONDS, floor) / per_element))
    assert max(got) <= longest or max(got) == shortest  # an element longer than a second
    # Only the last task may be shorter than the shortest: no run of tiny tasks at the end.
    assert all(size >= min(shortest, total) for size in got[:-1])


def test_the_tail_gives_every_worker_a_share() -> None:
    sizer = ChunkSizer(workers=4)
    sizer.observe(elements=1000, seconds=1000 / 65536)  # 65,536 elements in a second
    assert sizer.next_size(remaining=80_000) == 10_000  # 80,000 / (4 workers x 2 tasks)
    assert sizer.next_size(remaining=1_000_000) == 65536  # a second's worth
    assert sizer.next_size(remaining=5000) == 3276  # 50 ms' worth, not 5000 / 8


def test_an_explicit_chunksize_is_kept() -> None:
    sizer = ChunkSizer(workers=2, fixed=7)
    sizer.observe(elements=10, seconds=100.0)
    assert sizes(sizer, 30) == [7, 7, 7, 7, 2]


def test_first_tasks_are_small_until_something_is_measured() -> None:
    sizer = ChunkSizer(workers=2)
    assert sizer.next_size(remaining=100_000) == 16
    assert sizer.next_size(remaining=20) == 5  # 20 / (2 workers x 2 tasks)


@pytest.mark.parametrize("workers", [2, 8, 96, 1000, 10_000])
@pytest.mark.parametrize("per_element", [1e-6, 1e-3, 0.05])
def test_many_workers_make_longer_tasks_not_more(workers: int, per_element: float) -> None:
    """Busy workers finish ``workers / task length`` tasks a second; the chunker keeps that
    under MAX_TASKS_PER_SECOND from the first measured task to the last but one (to a
    whole element: a task one element longer would be long enough)."""
    sizer = ChunkSizer(workers)
    sizer.observe(elements=1000, seconds=1000 * per_element)
    got = sizes(sizer, total=10_000_000)
    assert all(workers / ((size + 1) * per_element) <= MAX_TASKS_PER_SECOND for size in got[:-1])
    # A few workers are not slowed down: a second a task, 50 ms at the end, as before.
    if workers <= 12:
        assert (sizer.task_seconds, sizer.shortest_seconds) == (TARGET_SECONDS, SHORTEST_SECONDS)


def test_96_workers_of_50_ms_elements() -> None:
    """The scale benchmark's case (benchmarks/scale_workers.py): a second a task as with few
    workers, but the tail's tasks last 0.384 s, not 50 ms (1,920 tasks a second)."""
    sizer = ChunkSizer(workers=96)
    sizer.observe(elements=16, seconds=0.8)
    assert sizer.next_size(remaining=38_400) == 20
    assert sizer.next_size(remaining=500) == 7  # 0.384 s, not 500 / (96 x 2) = 2 elements
