"""How many elements go in one Parsl task: sized to the work, as it is measured.

A Parsl task costs about a millisecond of the driver's and the interchange's time, on the
same cores as the workers; an element of a cheap step costs a hundred times less.  So
tasks should be big, but not so big that a worker idles at the end while another
finishes a long task, nor that the first results wait.

:class:`ChunkSizer` starts small, so that every worker gets work and the first results
come back at once; measures how long elements take (the workers report it per task);
then makes tasks of about :data:`TARGET_SECONDS` each, and smaller again near the end so
that each worker still has :data:`TAIL_TASKS_PER_WORKER` tasks of the rest, but never
shorter than :data:`SHORTEST_SECONDS`: tasks of a few elements at the very end cost more
in Parsl's round trips (a few milliseconds each, one after the other) than the workers'
uneven finish they would save.  An explicit ``chunksize=N`` of a map keeps every task at
``N`` elements.

>>> sizer = ChunkSizer(workers=2)
>>> sizer.next_size(remaining=100_000)   # nothing measured yet: small first tasks
16
>>> sizer.observe(elements=32, seconds=0.0032)  # 100 µs an element
>>> sizer.next_size(remaining=100_000)   # about a second a task
10000
>>> sizer.next_size(remaining=20_000)    # near the end: a share for every worker
5000
>>> sizer.next_size(remaining=1_200)     # the very end: tasks of 50 ms at least
500
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "SHORTEST_SECONDS",
    "TAIL_TASKS_PER_WORKER",
    "TARGET_SECONDS",
    "ChunkSizer",
    "worker_count",
]

#: How long one task should last once elements have been measured.
TARGET_SECONDS = 1.0
#: Near the end, the rest is split so that each worker gets at least this many tasks.
TAIL_TASKS_PER_WORKER = 2
#: ... in tasks no shorter than this, once elements have been measured.
SHORTEST_SECONDS = 0.05
#: Elements per task before anything is measured.
FIRST_SIZE = 16
#: Tasks in flight per worker: one running and one waiting, so no worker waits for the driver.
IN_FLIGHT_PER_WORKER = 2


class ChunkSizer:
    """Sizes the tasks of one map attempt (see the module docstring)."""

    def __init__(self, workers: int, fixed: int | None = None) -> None:
        self.workers = max(1, workers)
        self.fixed = fixed
        self._elements = 0
        self._seconds = 0.0

    @property
    def in_flight(self) -> int:
        """How many tasks to keep submitted at a time."""
        return self.workers * IN_FLIGHT_PER_WORKER

    def observe(self, elements: int, seconds: float) -> None:
        """A task of ``elements`` elements spent ``seconds`` in them on its worker."""
        self._elements += elements
        self._seconds += seconds

    def next_size(self, remaining: int) -> int:
        """Elements for the next task, ``remaining`` being what is left to submit."""
        if self.fixed is not None:
            return max(1, min(self.fixed, remaining))
        tail = max(1, remaining // (self.workers * TAIL_TASKS_PER_WORKER))
        if self._elements == 0:
            return max(1, min(FIRST_SIZE, tail))
        per_element = max(self._seconds / self._elements, 1e-6)
        shortest = max(1, int(SHORTEST_SECONDS / per_element))
        size = max(shortest, min(int(TARGET_SECONDS / per_element), tail))
        return min(size, remaining)


def worker_count(executor: Any) -> int:
    """How many workers ``executor`` has, or will have once its blocks are up."""
    threads = getattr(executor, "max_threads", None)
    if isinstance(threads, int):
        return threads
    per_node = getattr(executor, "workers_per_node", None)
    provider = getattr(executor, "provider", None)
    if isinstance(per_node, int | float) and provider is not None and per_node != float("inf"):
        nodes = int(getattr(provider, "nodes_per_block", 1) or 1)
        blocks = int(getattr(provider, "max_blocks", 1) or 1)
        return max(1, int(per_node) * nodes * blocks)
    return os.cpu_count() or 1
