"""What travels between the driver and a worker: a task, and what it says of its elements.

A Parsl task carries a :class:`TaskSpec` (the step, its inputs, the elements to compute)
and comes back as one compact :class:`TaskResult`: a code per element, messages only for
those that failed.  Imported on workers: standard library and numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "INFRASTRUCTURE",
    "MISSING_OUTPUT",
    "NOT_RUN",
    "OK",
    "USER_ERROR",
    "Source",
    "TaskResult",
    "TaskSpec",
]

OK = 0
USER_ERROR = 401
INFRASTRUCTURE = 402
MISSING_OUTPUT = 403
#: Not an exit code: the element's task was lost before the element started.
NOT_RUN = -1


@dataclass(frozen=True)
class Source:
    """Where a parameter's value lives.

    ``kind`` is ``"value"`` (one pickle file: a workflow input or a plain step's output)
    or ``"array"`` (a map output: a folder of element files with ``shape``).
    """

    kind: str
    path: str
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """One Parsl task: a step, its inputs, and the elements to compute."""

    step_file: str
    step_dir: str
    indices: tuple[int, ...]
    shape: tuple[int, ...]  # the output shape; () for a plain call
    sources: dict[str, Source]
    mapspec: str | None = None
    retry_on: tuple[type[BaseException], ...] | None = None  # None: every error may be retried
    walltime_s: int | None = None  # the step's walltime, for each element
    driver_pid: int = 0  # a worker in this process is the driver's own thread (thread pool)
    #: A map task's name: its files are ``task-<name>.pickle`` (``element_folders``).
    name: str = ""
    #: The memory (MB) each element may allocate beyond what its worker holds: the step's
    #: ``resources`` memory, grown by ``retry_resources`` on later attempts (``memory_limit``).
    memory_mb: int | None = None


@dataclass(frozen=True)
class TaskResult:
    """What the driver learns about one task's elements.

    ``codes[k]`` is the code of element ``indices[k]``; ``failures`` maps a failed element
    to its message and whether a later attempt may succeed (the step's ``retry_on``).
    """

    indices: np.ndarray  # int64, in the order the elements ran
    codes: np.ndarray  # int16
    seconds: float = 0.0  # time spent in the elements' calls and writes
    failures: dict[int, tuple[str, bool]] = field(default_factory=dict)
    host: str = ""
    batch_job: str = ""  # the scheduler job the worker ran in (SLURM_JOB_ID), if any
    #: Per output of a map, the values of the elements that succeeded (``codes == OK``), in
    #: order, when every one is a plain number: the step's ``dataset.nc`` is then written
    #: without reading their files again.  An output with any other value is left out.
    values: dict[str, np.ndarray] = field(default_factory=dict)
    #: Per output in ``values``, the type of every one of its values (``numbers_file``
    #: kind names), or "" when they are not all of one type.
    kinds: dict[str, str] = field(default_factory=dict)
    #: The task files of a map task (``task-<name>.pickle``): each output's holds the
    #: elements that succeeded, in the order of ``indices``; the ``exception`` one those
    #: that failed (any code but OK and NOT_RUN), in that order.  "" for a plain call.
    name: str = ""
    #: float32, ``element_seconds[k]``: element ``indices[k]``'s seconds on the worker (its
    #: inputs gathered, its call, its result pickled); None when not measured (a result
    #: the driver makes itself).  The driver keeps them as the map's provenance.
    element_seconds: np.ndarray | None = None
    #: The worker process's peak resident memory in bytes when the task ended
    #: (``ru_maxrss``: the largest so far, this task's or an earlier one's); 0: unknown.
    peak_rss: int = 0

    @classmethod
    def of(cls, verdicts: list[tuple[int, int, str]], name: str = "") -> TaskResult:
        """A result the driver makes itself: ``(index, code, message)`` per element, in
        the order of the task files ``name`` holds them (see ``name``)."""
        return cls(
            np.array([n for n, _, _ in verdicts], dtype=np.int64),
            np.array([c for _, c, _ in verdicts], dtype=np.int16),
            failures={n: (m, True) for n, c, m in verdicts if c not in (OK, NOT_RUN)},
            name=name,
        )

    def count(self, *codes: int) -> int:
        return int(np.isin(self.codes, codes).sum())
