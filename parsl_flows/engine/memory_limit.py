"""Memory per element on a worker: ``resources={"memory": ...}`` held for each call.

Part of the worker side (:mod:`parsl_flows.engine.worker`).  Around each element's call,
the worker process's ``RLIMIT_DATA`` is set to what the process holds at that moment plus
the step's memory, and put back after: each element may allocate up to its memory beyond
what its worker held.  An allocation past it fails at once with ``MemoryError`` inside
the element (numpy: ``Unable to allocate ...``), which the worker keeps as the element's
:class:`~parsl_flows.errors.OutOfMemoryError`; the worker, its other elements and the
machine carry on.

Why ``RLIMIT_DATA`` and not ``RLIMIT_AS``: since Linux 4.7 it counts the private writable
memory a process maps (heap, numpy arrays, ``bytearray``), not the address space it only
reserves.  Each new thread reserves 8 MB of stack and up to 64 MB of malloc arena: under
``RLIMIT_AS`` an element starting 16 threads failed with ``can't start new thread`` and
no memory used (measured here), and OpenBLAS, numba or torch start threads.  What it does
not count: memory shared with other processes (``multiprocessing.shared_memory``, shared
``mmap``) and files mapped into memory; a child process inherits the limit (its own
data, up to what the worker held plus the step's memory).  A batch system's own limit
(Slurm's ``--mem``) still holds all of that: see ``engine/memory_kills.py``.

Only in a worker process of its own: a thread of the driver (the thread pool) would limit
the driver itself, so nothing is enforced there.  Linux only (``/proc/self/statm``);
elsewhere the limit is not set.
"""

from __future__ import annotations

import contextlib
import os
import resource
from typing import Any

from ..errors import OutOfMemoryError

__all__ = ["MemoryLimit", "block_memory_mb", "out_of_memory"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATM: dict[int, int] = {}  # pid -> an open /proc/self/statm (a fork gets its own)


def _data_bytes() -> int | None:
    """This process's private data (``VmData`` + stack, ``/proc/self/statm``), in bytes.

    The file is kept open and read with ``pread`` (2 µs; opening it each time: 13 µs).
    """
    pid = os.getpid()
    try:
        fd = _STATM.get(pid)
        if fd is None:
            fd = _STATM[pid] = os.open("/proc/self/statm", os.O_RDONLY)
        return int(os.pread(fd, 256, 0).split()[5]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class MemoryLimit:
    """Hold the element run inside it to ``limit_mb`` MB beyond what its process holds.

    ``held_mb`` is what the process held when the element started (MB), for the message.
    Entering does nothing where the limit cannot be set (not Linux, a hard limit lower
    than what the process holds); ``active`` says whether it was.
    """

    def __init__(self, limit_mb: int) -> None:
        self.limit_mb = limit_mb
        self.held_mb = 0
        self.active = False
        self._before: tuple[int, int] | None = None

    def __enter__(self) -> MemoryLimit:
        held = _data_bytes()
        if held is None:
            return self
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        want = held + self.limit_mb * 2**20
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (want, hard))
        except (OSError, ValueError):
            return self
        self._before = (soft, hard)
        self.held_mb = held // 2**20
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._before is not None:
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_DATA, self._before)
            self._before = None


def _memory_error_in(raised: BaseException) -> MemoryError | None:
    """``raised`` if it is a MemoryError, else one it was raised from or during."""
    seen: set[int] = set()
    e: BaseException | None = raised
    while e is not None and id(e) not in seen:
        if isinstance(e, MemoryError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def out_of_memory(
    raised: BaseException, limit: MemoryLimit, step: Any, where: str
) -> OutOfMemoryError | None:
    """The element's :class:`OutOfMemoryError` if ``raised`` comes of running out of the
    memory ``limit`` held it to, else None (a MemoryError without a limit is the user's)."""
    memory_error = _memory_error_in(raised)
    if memory_error is None or not limit.active or isinstance(raised, OutOfMemoryError):
        return None
    name = getattr(step, "name", "?")
    error = OutOfMemoryError(
        f"{where} of step {name!r} ran out of memory: it allocated past its limit of "
        f"{limit.limit_mb}MB (resources={{'memory': ...}}, beyond the {limit.held_mb} MB its "
        f"worker held): {type(memory_error).__name__}: {memory_error}. Give it more with "
        f"@step(..., resources={{'memory': '{2 * limit.limit_mb}MB'}}), or more on each "
        "retry with retry_resources={'memory': 2} and max_restarts > 1",
        limit.limit_mb,
        os.environ.get("SLURM_JOB_ID", ""),
    )
    error.__cause__ = raised
    return error


#: What a block holds besides its elements, which Slurm's ``--mem`` counts too (measured on
#: the test bed: the batch shell, the worker pool's manager and its helper processes took
#: 131 MB; each worker's Python with Parsl and this library loaded 65 MB, more once numpy
#: and a step's own imports load).
POOL_MEMORY_MB = 150
WORKER_MEMORY_MB = 100


def block_memory_mb(memory_mb: int, workers: int = 1) -> int:
    """The ``--mem`` of a block of ``workers`` whose elements may each use ``memory_mb``.

    A step's memory is what each of its elements may allocate beyond what its worker
    holds, as the worker itself enforces it (``engine/memory_limit.py``); the block asks
    for that plus what its worker pool holds, so Slurm does not kill a block whose
    elements stay within their memory.

    >>> block_memory_mb(1024)
    1274
    """
    return workers * (memory_mb + WORKER_MEMORY_MB) + POOL_MEMORY_MB
