"""What runs on a Parsl worker: load a step, run it on some elements, write the results.

One Parsl task carries a :class:`TaskSpec`: the path of the pickled step, where each
parameter comes from, and a list of element indices.  The worker loads its inputs from
the store once per task, calls the step once per element, and returns one compact
:class:`TaskResult`: an array of codes, with messages only for the elements that failed.
A map task writes its elements' outputs (and exceptions) together, one file per output at
the task's end (``task_writer``); a plain call writes its own files.  The driver never
sees the values themselves, except plain numbers sent back with the codes.

The per-element path is kept lean: the call, one pickle, one record appended to the
task's journal.  Directories are made once per task, and input keys are worked out for
the whole task at once.

This module is imported on workers: it must stay light and importable everywhere.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..mapspec import MapSpec
from ..step import MissingOutputError, format_walltime
from ..store import (
    dumps,
    element_path,
    write_element,
    write_pickle,
)
from .failures import UnpicklableError, describe, store_failure
from .memory_limit import MemoryLimit, out_of_memory
from .task_inputs import cached_load, mapped_getters, whole
from .task_outputs import TaskOutputs
from .task_spec import (
    INFRASTRUCTURE,
    MISSING_OUTPUT,
    NOT_RUN,
    OK,
    USER_ERROR,
    Source,
    TaskResult,
    TaskSpec,
)
from .task_writer import TaskWriter
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


def _walltime_message(step: Any, n: int, task: TaskSpec) -> str:
    seconds = task.walltime_s or 0
    where = f"element {n}" if task.mapspec else "the call"
    return (
        f"{where} of step {getattr(step, 'name', '?')!r} ran past its walltime of "
        f"{format_walltime(seconds)} ({seconds} s, resources={{'walltime': ...}}) and was stopped"
    )


def _where(task: TaskSpec, n: int) -> str:
    return f"element {n}" if task.mapspec else "the call"


def _end_worker(
    exc_file: Path, message: str, writer: TaskWriter | None, n: int
) -> Callable[[], None]:
    """What to do when an element ignores its TimeoutError: record it, end this worker."""

    def end() -> None:
        error = TimeoutError(f"{message}; it did not stop when asked, so its worker was ended")
        with contextlib.suppress(BaseException):
            if writer is not None:
                writer.end_worker(n, USER_ERROR, error)
            else:
                write_pickle(exc_file, error)
        os._exit(70)  # Parsl sees a lost worker, starts a new one, and the task fails over

    return end


def run_task(task: TaskSpec) -> TaskResult:
    """Run ``task``'s elements one after the other; never raises for user errors."""
    step = cached_load(task.step_file)
    spec = MapSpec.from_string(task.mapspec) if task.mapspec else None
    mapped = set(spec.input_names) if spec else set()
    broadcast = {name: whole(src) for name, src in task.sources.items() if name not in mapped}
    getters = mapped_getters(task, spec)
    out_dirs = [(out, os.path.join(task.step_dir, "return_values", out)) for out in step.returns]
    if spec is None:  # a plain call writes its own files; a map's are made when written
        for _, folder in out_dirs:
            os.makedirs(folder, exist_ok=True)
    indices = np.asarray(task.indices, dtype=np.int64)
    codes = np.zeros(len(indices), dtype=np.int16)
    failures: dict[int, tuple[str, bool]] = {}
    kept = TaskOutputs(step.returns) if spec else None
    task_name = task.name or f"{task.indices[0]}-{uuid.uuid4().hex[:8]}"
    writer = TaskWriter(task.step_dir, task_name, step.returns, len(indices)) if spec else None
    start = time.perf_counter()
    # A time stamp after each element (a list append: ~0.1 µs an element); element k took
    # stamps[k + 1] - stamps[k], its inputs gathered, its call, its result pickled.
    stamps = [start]
    stamp, clock = stamps.append, time.perf_counter  # locals: no lookups per element
    for k, n in enumerate(task.indices):
        kwargs = dict(broadcast)
        for name, get in getters:
            kwargs[name] = get(k)
        code, message, retryable = _run_element(task, step, kwargs, out_dirs, n, kept, writer)
        if code:
            codes[k] = code
            failures[n] = (message, retryable)
        stamp(clock())
    if writer is not None:
        error = writer.finish()
        if error:  # nothing of the task is in the store: each element lost to it (402)
            for k, n in enumerate(task.indices):
                if codes[k] == OK:
                    codes[k] = INFRASTRUCTURE
                    failures[n] = (f"OSError: {error}", True)
            kept = None
    seconds = time.perf_counter() - start
    host = os.uname().nodename
    job = os.environ.get("SLURM_JOB_ID", "")
    values, kinds = kept.finish() if kept else ({}, {})
    files = task_name if spec else ""
    each = np.diff(np.asarray(stamps)).astype(np.float32)
    return TaskResult(
        indices, codes, seconds, failures, host, job, values, kinds, files, each, _peak_rss()
    )


def _peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (``ru_maxrss``: KiB on Linux,
    bytes on macOS).  Per process, not per task: a worker's figure never goes down."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _failed(
    task: TaskSpec,
    step: Any,
    n: int,
    raised: BaseException,
    writer: TaskWriter | None = None,
    code: int = 0,
    limit: MemoryLimit | None = None,
) -> tuple[int, str, bool]:
    """Keep what element ``n`` raised: (code, message, retryable), as ``_run_element``."""
    e = raised
    if isinstance(e, WalltimeExceeded):
        e = TimeoutError(_walltime_message(step, n, task))
    code = code or (MISSING_OUTPUT if isinstance(e, MissingOutputError) else USER_ERROR)
    retryable = code == INFRASTRUCTURE or task.retry_on is None or isinstance(e, task.retry_on)
    if limit is not None and (oom := out_of_memory(e, limit, step, _where(task, n))):
        # 402, and not worth running again as it was: the driver retries it only with
        # more memory (retry_resources)
        e, code, retryable = oom, INFRASTRUCTURE, False
    if writer is None:
        return code, store_failure(step.returns, task.step_dir, n, e), retryable
    message = describe(e)
    try:
        writer.add_failed(n, code, e, retryable)
    except OSError as store_error:
        message += f" (and its exception could not be stored: {store_error})"
    return code, message[:500], retryable


def _run_element(
    task: TaskSpec,
    step: Any,
    kwargs: dict[str, Any],
    out_dirs: list[tuple[str, str]],
    n: int,
    kept: TaskOutputs | None = None,
    writer: TaskWriter | None = None,
) -> tuple[int, str, bool]:
    """Compute element ``n`` and store its outputs or its exception: (code, message, retryable).

    A map's element goes to ``writer`` (its task's files) and its plain numbers to
    ``kept``; a plain call writes its own files.

    Anything the element raises, ``SystemExit`` and ``KeyboardInterrupt`` included, fails
    that element alone.  A store that cannot take the result (full, read-only) is an
    infrastructure failure (402), and no half-written file is left behind.
    """
    step_dir = task.step_dir
    # The step's memory, in a worker process only: in the driver's thread pool the limit
    # would hold the driver itself.
    limit = None
    if task.memory_mb and os.getpid() != task.driver_pid:
        limit = MemoryLimit(task.memory_mb)
    try:
        with limit or contextlib.nullcontext():  # put back before the failure is kept
            if task.walltime_s:
                message = _walltime_message(step, n, task)
                in_worker = os.getpid() != task.driver_pid
                exc_file = element_path(Path(step_dir) / "exception", n)
                hard_stop = _end_worker(exc_file, message, writer, n) if in_worker else None
                with Deadline(task.walltime_s, message, hard_stop):
                    returned = step.callable(**kwargs)
            else:
                returned = step.callable(**kwargs)
        outputs = step.output_values(returned)
    except BaseException as raised:  # SystemExit, KeyboardInterrupt: the element's, not ours
        # Not kept in a local of this frame, which the exception's traceback holds: that
        # cycle would leave each failure to the garbage collector.
        return _failed(task, step, n, raised, writer, limit=limit)
    if writer is not None:
        return _keep(task, step, n, outputs, kept, writer)
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
        unpicklable = _unpicklable(step, out, e)
        return USER_ERROR, store_failure(step.returns, step_dir, n, unpicklable), True
    return OK, "", True


def _unpicklable(step: Any, out: str, e: Exception) -> TypeError:
    return TypeError(
        f"step {getattr(step, 'name', '?')!r}: output {out!r} cannot be pickled, so it cannot "
        f"be stored: {type(e).__name__}: {e}. Return plain data (numbers, arrays, "
        "dataclasses), not open files, locks or generators"
    )


def _keep(
    task: TaskSpec,
    step: Any,
    n: int,
    outputs: dict[str, Any],
    kept: TaskOutputs | None,
    writer: TaskWriter,
) -> tuple[int, str, bool]:
    """A map element that returned ``outputs``: pickled into its task's files."""
    out = ""
    pickles: list[bytes] = []
    try:
        for out in step.returns:
            pickles.append(dumps(outputs[out]))
        writer.add_ok(n, pickles)
    except OSError as e:  # its journal cannot be written: the store is full or read-only
        full = OSError(e.errno, f"cannot write element {n}'s result to the store: {e}")
        return _failed(task, step, n, full, writer, INFRASTRUCTURE)
    except Exception as e:  # the value cannot be pickled
        return _failed(task, step, n, _unpicklable(step, out, e), writer)
    if kept is not None:
        kept.add(n, outputs)
    return OK, "", True
