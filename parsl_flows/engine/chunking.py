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

Workers all busy finish ``workers / task length`` tasks a second, and every one of them
costs the driver and the interchange their millisecond, whatever the number of workers.
So with many workers tasks get longer, not more numerous: no task (but a map's last, or
one of a single element) is shorter than ``workers /`` :data:`MAX_TASKS_PER_SECOND`
seconds, which lengthens the tail's tasks beyond about 12 workers and every task beyond
about 250.

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
>>> many = ChunkSizer(workers=1_000)
>>> many.observe(elements=20, seconds=1.0)  # 50 ms an element
>>> many.task_seconds, many.shortest_seconds  # 250 tasks a second across 1,000 workers
(4.0, 4.0)
>>> many.next_size(remaining=100_000)
80
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "MAX_TASKS_PER_SECOND",
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
#: The most tasks a second a map should cause, across all its workers.  Bare Parsl (its
#: driver side and the interchange) sustains about 1,200 to 1,500 empty tasks a second on
#: this project's 2-core machine, and parsl_flows' driver spends about a millisecond of
#: its own on each task (submitting it, counting its result): at 250 a second the driver
#: keeps most of a core for everything else, and the workers the cores they share with it.
MAX_TASKS_PER_SECOND = 250


class ChunkSizer:
    """Sizes the tasks of one map attempt (see the module docstring)."""

    def __init__(self, workers: int, fixed: int | None = None) -> None:
        self.workers = max(1, workers)
        self.fixed = fixed
        self._elements = 0
        self._seconds = 0.0
        # The length below which the busy workers would finish more tasks a second than
        # the driver and the interchange should handle (see MAX_TASKS_PER_SECOND).
        floor = self.workers / MAX_TASKS_PER_SECOND
        #: How long a task should last once elements have been measured.
        self.task_seconds = max(TARGET_SECONDS, floor)
        #: ... and how short it may get near the end.
        self.shortest_seconds = max(SHORTEST_SECONDS, floor)

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
        shortest = max(1, int(self.shortest_seconds / per_element))
        size = max(shortest, min(int(self.task_seconds / per_element), tail))
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
