"""What runs on a Parsl worker: load a step, run it on some elements, write the results.

One Parsl task carries a :class:`TaskSpec`: the path of the pickled step, where each
parameter comes from, and a list of element indices.  The worker loads its inputs from
the store once per task, calls the step once per element, writes each element's outputs
(or its exception) as its own file, and returns one compact :class:`TaskResult`: an
array of codes, with messages only for the elements that failed.  The driver never sees
the values themselves.

The per-element path is kept lean: the call, one pickle, one file written to a
temporary name and renamed.  Directories are made once per task, input keys are worked
out for the whole task at once, and stale exception files are the driver's to remove
before it submits.

This module is imported on workers: it must stay light and importable everywhere.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..mapspec import MapSpec
from ..numbers_file import (
    KnownNumbers,
    KnownParts,
    PartUnreadable,
    read_numbers,
)
from ..shapes import as_element_array, as_mapped_array
from ..step import MissingOutputError, format_walltime
from ..store import (
    FileBasedObjectArray,
    dumps,
    element_path,
    load_pickle,
    write_element,
    write_pickle,
)
from .failures import UnpicklableError, store_failure
from .task_outputs import TaskOutputs
from .walltime import Deadline, WalltimeExceeded

__all__ = [
    "INFRASTRUCTURE",
    "MISSING_OUTPUT",
    "NOT_RUN",
    "OK",
    "USER_ERROR",
    "Source",
    "TaskResult",
    "TaskSpec",
    "UnpicklableError",  # stored exceptions name it here: keep them loadable
    "run_task",
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
    #: Per output not in ``values``, the part (``numbers_file``) that keeps the pickles of
    #: the elements that succeeded, in order.
    parts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, verdicts: list[tuple[int, int, str]]) -> TaskResult:
        """A result the driver makes itself: ``(index, code, message)`` per element."""
        return cls(
            np.array([n for n, _, _ in verdicts], dtype=np.int64),
            np.array([c for _, c, _ in verdicts], dtype=np.int16),
            failures={n: (m, True) for n, c, m in verdicts if c not in (OK, NOT_RUN)},
        )

    def count(self, *codes: int) -> int:
        return int(np.isin(self.codes, codes).sum())


# Workers are long-lived processes: keep recently used steps and inputs in memory so a
# task of many elements, or many tasks of one map, load them once.
_CACHE: dict[tuple[str, float], Any] = {}
_CACHE_LIMIT = 16


def _cached(key: tuple[str, float], make: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_LIMIT:  # evict the oldest entry
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = make()
    return _CACHE[key]


def _cached_load(path: str) -> Any:
    return _cached((path, os.stat(path).st_mtime), lambda: load_pickle(Path(path)))


def _mapped_array(path: str, rank: int, whole_items: bool) -> np.ndarray:
    """The value in ``path`` as an array of ``rank`` mapped axes, kept for later tasks.

    ``whole_items``: each element takes one item, which keeps its own type (a float of a
    list stays a float); else slices are taken, of a numeric array where it can be one.
    """
    key = (f"{path}#mapped{rank}{'items' if whole_items else ''}", os.stat(path).st_mtime)
    convert = as_element_array if whole_items else as_mapped_array
    arr: np.ndarray = _cached(key, lambda: convert(_cached_load(path), rank))
    return arr


def _whole(source: Source) -> Any:
    if source.kind == "array":
        return FileBasedObjectArray(source.path, source.shape)
    return _cached_load(source.path)


def _walltime_message(step: Any, n: int, task: TaskSpec) -> str:
    seconds = task.walltime_s or 0
    where = f"element {n}" if task.mapspec else "the call"
    return (
        f"{where} of step {getattr(step, 'name', '?')!r} ran past its walltime of "
        f"{format_walltime(seconds)} ({seconds} s, resources={{'walltime': ...}}) and was stopped"
    )


def _end_worker(exc_file: Path, message: str) -> Callable[[], None]:
    """What to do when an element ignores its TimeoutError: record it, end this worker."""

    def end() -> None:
        with contextlib.suppress(BaseException):
            write_pickle(
                exc_file,
                TimeoutError(f"{message}; it did not stop when asked, so its worker was ended"),
            )
        os._exit(70)  # Parsl sees a lost worker, starts a new one, and the task fails over

    return end


def run_task(task: TaskSpec) -> TaskResult:
    """Run ``task``'s elements one after the other; never raises for user errors."""
    step = _cached_load(task.step_file)
    spec = MapSpec.from_string(task.mapspec) if task.mapspec else None
    mapped = set(spec.input_names) if spec else set()
    broadcast = {name: _whole(src) for name, src in task.sources.items() if name not in mapped}
    getters = _mapped_getters(task, spec)
    out_dirs = [(out, os.path.join(task.step_dir, "return_values", out)) for out in step.returns]
    for _, folder in out_dirs:
        os.makedirs(folder, exist_ok=True)
    indices = np.asarray(task.indices, dtype=np.int64)
    codes = np.zeros(len(indices), dtype=np.int16)
    failures: dict[int, tuple[str, bool]] = {}
    kept = TaskOutputs(step.returns) if spec else None
    start = time.perf_counter()
    for k, n in enumerate(task.indices):
        kwargs = dict(broadcast)
        for name, get in getters:
            kwargs[name] = get(k)
        code, message, retryable = _run_element(task, step, kwargs, out_dirs, n, kept)
        if code:
            codes[k] = code
            failures[n] = (message, retryable)
    seconds = time.perf_counter() - start
    host = os.uname().nodename
    job = os.environ.get("SLURM_JOB_ID", "")
    values, kinds, parts = kept.finish(dict(out_dirs)) if kept else ({}, {}, {})
    return TaskResult(indices, codes, seconds, failures, host, job, values, kinds, parts)


def _mapped_getters(task: TaskSpec, spec: MapSpec | None) -> list[tuple[str, Callable[[int], Any]]]:
    """For each mapped input, a function from an element's position in the task to what
    that element gets.

    Worked out for the whole task at once, with numpy: the flat index of each element's
    item in each input.  A value input is made an array once per task (and kept for the
    next tasks); a map output stays a ``FileBasedObjectArray``, read one file per element.
    An input of which elements take whole slices (an axis the output does not have) is
    indexed by each element's key instead.
    """
    if spec is None:
        return []
    axes = np.unravel_index(np.asarray(task.indices, dtype=np.int64), task.shape)
    position = {index: k for k, index in enumerate(spec.output_indices)}
    keys: list[tuple[int, ...]] | None = None
    getters: list[tuple[str, Callable[[int], Any]]] = []
    for arr in spec.inputs:
        source = task.sources[arr.name]
        picks = tuple(None if a is None else position[a] for a in arr.axes)
        whole_items = None not in picks
        data: Any = (
            FileBasedObjectArray(source.path, source.shape)
            if source.kind == "array"
            else _mapped_array(source.path, arr.rank, whole_items)
        )
        if not whole_items:
            if keys is None:
                keys = list(zip(*(a.tolist() for a in axes), strict=True))
            getters.append((arr.name, _KeyPick(data, picks, keys)))
            continue
        axis_of = [p for p in picks if p is not None]
        shape = tuple(data.shape[: len(axis_of)])
        flat = np.asarray(np.ravel_multi_index(tuple(axes[p] for p in axis_of), shape)).tolist()
        if isinstance(data, FileBasedObjectArray):
            getters.append((arr.name, _pick_from_map(data, flat)))
        else:
            items = data.reshape(-1, *data.shape[len(axis_of) :])
            getters.append((arr.name, _ItemPick(items.__getitem__, flat)))
    return getters


class _ItemPick:
    """What an element gets of an input it takes one item of: ``get(flat[k])``."""

    def __init__(self, get: Callable[[int], Any], flat: list[int]) -> None:
        self.get = get
        self.flat = flat

    def __call__(self, k: int) -> Any:
        return self.get(self.flat[k])


def _pick_from_map(data: FileBasedObjectArray, flat: list[int]) -> Callable[[int], Any]:
    """Items of a map output: from what the map kept of them (``numbers_file``) where it
    can, else one file an element."""
    known = read_numbers(data.folder, data.size)
    if known is not None:
        with contextlib.suppress(PartUnreadable):
            return _KnownPick(known, flat, data._load)
    return _ItemPick(data._load, flat)


class _KnownPick:
    """An element's item of a map output with a numbers file: from the file's values, or
    (an element it does not hold, reused from an earlier run, say) from its own file."""

    def __init__(
        self, known: KnownNumbers | KnownParts, flat: list[int], load: Callable[[int], Any]
    ) -> None:
        where = known.position[np.asarray(flat, dtype=np.int64)]
        held = where >= 0
        self.items: list[Any] = [_UNKNOWN] * len(flat)
        for k, value in zip(
            np.flatnonzero(held).tolist(), known.elements(where[held]), strict=True
        ):
            self.items[k] = value
        self.flat, self.load = flat, load

    def __call__(self, k: int) -> Any:
        value = self.items[k]
        return self.load(self.flat[k]) if value is _UNKNOWN else value


_UNKNOWN = object()


class _KeyPick:
    """What an element gets of an input it takes slices of: the input at the element's key.

    ``picks[j]`` is the output axis that gives the input's axis ``j`` (None: all of it).
    """

    def __init__(
        self, data: Any, picks: tuple[int | None, ...], keys: list[tuple[int, ...]]
    ) -> None:
        self.data = data
        self.picks = picks
        self.keys = keys

    def __call__(self, k: int) -> Any:
        key = self.keys[k]
        return self.data[tuple(slice(None) if p is None else key[p] for p in self.picks)]


def _failed(task: TaskSpec, step: Any, n: int, raised: BaseException) -> tuple[int, str, bool]:
    """Keep what element ``n`` raised: (code, message, retryable), as ``_run_element``."""
    e = raised
    if isinstance(e, WalltimeExceeded):
        e = TimeoutError(_walltime_message(step, n, task))
    code = MISSING_OUTPUT if isinstance(e, MissingOutputError) else USER_ERROR
    retryable = task.retry_on is None or isinstance(e, task.retry_on)
    return code, store_failure(step.returns, task.step_dir, n, e), retryable


def _run_element(
    task: TaskSpec,
    step: Any,
    kwargs: dict[str, Any],
    out_dirs: list[tuple[str, str]],
    n: int,
    kept: TaskOutputs | None = None,
) -> tuple[int, str, bool]:
    """Compute element ``n`` and store its outputs or its exception: (code, message, retryable).

    What the element gave, and the pickles written, are added to ``kept`` (a map's task).

    Anything the element raises, ``SystemExit`` and ``KeyboardInterrupt`` included, fails
    that element alone.  A store that cannot take the result (full, read-only) is an
    infrastructure failure (402), and no half-written file is left behind.
    """
    step_dir = task.step_dir
    try:
        if task.walltime_s:
            message = _walltime_message(step, n, task)
            in_worker = os.getpid() != task.driver_pid
            exc_file = element_path(Path(step_dir) / "exception", n)
            hard_stop = _end_worker(exc_file, message) if in_worker else None
            with Deadline(task.walltime_s, message, hard_stop):
                returned = step.callable(**kwargs)
        else:
            returned = step.callable(**kwargs)
        outputs = step.output_values(returned)
    except BaseException as raised:  # SystemExit, KeyboardInterrupt: the element's, not ours
        # Not kept in a local of this frame, which the exception's traceback holds: that
        # cycle would leave each failure to the garbage collector.
        return _failed(task, step, n, raised)
    out = ""
    written: list[tuple[str, bytes]] = []
    try:
        for out, folder in out_dirs:
            value = outputs[out]
            data = dumps(value)
            write_element(folder, n, data)
            written.append((out, data))
    except OSError as e:  # the store is full or read-only
        full = OSError(e.errno, f"cannot write element {n}'s result to the store: {e}")
        return INFRASTRUCTURE, store_failure(step.returns, step_dir, n, full), True
    except Exception as e:  # the value cannot be pickled
        unpicklable = TypeError(
            f"step {getattr(step, 'name', '?')!r}: output {out!r} ({type(value).__name__}) "
            f"cannot be pickled, so it cannot be stored: {type(e).__name__}: {e}. Return plain "
            "data (numbers, arrays, dataclasses), not open files, locks or generators"
        )
        return USER_ERROR, store_failure(step.returns, step_dir, n, unpicklable), True
    if kept is not None:
        kept.add(n, outputs, written)
    return OK, "", True
