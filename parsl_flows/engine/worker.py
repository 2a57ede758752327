"""What runs on a Parsl worker: load a step, run it on some elements, write the results.

One Parsl task carries a :class:`TaskSpec`: the path of the pickled step, where each
parameter comes from, and a list of element indices.  The worker loads its inputs from
the store, calls the step once per element, writes each element's outputs (or its
exception) as its own file, and returns one small :class:`ElementResult` per element.
The driver never sees the values themselves.

This module is imported on workers: it must stay light and importable everywhere.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..mapspec import MapSpec
from ..store import FileBasedObjectArray, element_path, load_pickle, write_pickle

__all__ = ["OK", "USER_ERROR", "MISSING_OUTPUT", "ElementResult", "Source", "TaskSpec", "run_task"]

OK = 0
USER_ERROR = 401
INFRASTRUCTURE = 402
MISSING_OUTPUT = 403


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


@dataclass(frozen=True)
class ElementResult:
    """What the driver learns about one element: its code, a short message, its duration."""

    index: int
    code: int
    message: str = ""
    seconds: float = 0.0
    host: str = field(default="")
    retryable: bool = True  # may a later attempt succeed? (the step's retry_on decides)
    batch_job: str = ""  # the scheduler job the worker ran in (SLURM_JOB_ID), if any


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


def _mapped_array(path: str, rank: int) -> np.ndarray:
    from ..workflow import as_mapped_array

    key = (f"{path}#mapped{rank}", os.stat(path).st_mtime)
    arr: np.ndarray = _cached(key, lambda: as_mapped_array(_cached_load(path), rank))
    return arr


def _element_of(source: Source, key: tuple[int | slice, ...], rank: int) -> Any:
    """The part of a mapped input that one element receives."""
    if source.kind == "array":
        arr = FileBasedObjectArray(source.path, source.shape)
        return arr[key]
    return _mapped_array(source.path, rank)[key]


def _whole(source: Source) -> Any:
    if source.kind == "array":
        return FileBasedObjectArray(source.path, source.shape)
    return _cached_load(source.path)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _storable(exc: BaseException) -> BaseException:
    """The exception itself if it pickles, else a stand-in that keeps its type and text."""
    import cloudpickle

    tb = "".join(traceback.format_exception(exc))
    with contextlib.suppress(AttributeError):  # some exception types forbid new attributes
        exc.remote_traceback = tb  # type: ignore[attr-defined]
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
        return exc
    except Exception:
        return UnpicklableError(type(exc).__name__, str(exc), tb)


class UnpicklableError(Exception):
    """Stands in for a user exception that could not be pickled."""

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback


def run_task(task: TaskSpec) -> list[ElementResult]:
    """Run ``task``'s elements one after the other; never raises for user errors."""
    from ..step import MissingOutputError

    step = _cached_load(task.step_file)
    step_dir = Path(task.step_dir)
    spec = MapSpec.from_string(task.mapspec) if task.mapspec else None
    mapped = set(spec.input_names) if spec else set()
    broadcast = {name: _whole(src) for name, src in task.sources.items() if name not in mapped}
    host = os.uname().nodename
    batch_job = os.environ.get("SLURM_JOB_ID", "")
    results = []
    for n in task.indices:
        start = time.perf_counter()
        exc_file = element_path(step_dir / "exception", n)
        try:
            kwargs = dict(broadcast)
            if spec is not None:
                key = MapSpec.output_key(n, task.shape)
                for name, in_key in spec.input_keys(key).items():
                    kwargs[name] = _element_of(task.sources[name], in_key, spec.input(name).rank)
            outputs = step.output_values(step.callable(**kwargs))
            for out, value in outputs.items():
                write_pickle(element_path(step_dir / "return_values" / out, n), value)
            exc_file.unlink(missing_ok=True)
            code, message, retryable = OK, "", True
        except Exception as e:
            code = MISSING_OUTPUT if isinstance(e, MissingOutputError) else USER_ERROR
            message = _describe(e)
            for out in step.returns:  # an element is whole or absent, never half-written
                element_path(step_dir / "return_values" / out, n).unlink(missing_ok=True)
            write_pickle(exc_file, _storable(e))
            retryable = task.retry_on is None or isinstance(e, task.retry_on)
        seconds = time.perf_counter() - start
        results.append(ElementResult(n, code, message, seconds, host, retryable, batch_job))
    return results
