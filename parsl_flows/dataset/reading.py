"""Reading one map output from its element files: numbers at once, objects lazily.

Also the per-element errors, attempt counts and provenance of a step.  Part of
:mod:`parsl_flows.dataset`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

# The documented way to give xarray a lazily read array (see xarray's "How to add a new
# backend"): a BackendArray wrapped in a LazilyIndexedArray.
from xarray.backends import BackendArray
from xarray.core import indexing

from ..element_folders import load_elements, present_indices
from ..files import MISSING_ELEMENT
from ..provenance import PROVENANCE_FILE, Provenance
from ..ranges import expand
from ..status import StepStatus

logger = logging.getLogger(__name__)

#: dtype kinds stored as numbers: bool, int, uint, float, complex.
_NUMERIC_KINDS = "biufc"
#: dtype kinds a coordinate may have (numbers, strings, dates), all writable to netCDF.
#: Numeric outputs larger than this in all stay object-valued (read lazily, left out of
#: ``dataset.nc``), so building a dataset never fills the driver's memory.
MAX_NUMERIC_BYTES = 1 << 30

# -- one output as one variable ------------------------------------------------------------


def _is_number(v: Any) -> bool:
    if isinstance(v, np.ndarray):
        return v.ndim == 0 and v.dtype.kind in _NUMERIC_KINDS
    return isinstance(v, int | float | complex | np.number | np.bool_)


def _stack_numeric(values: list[Any]) -> np.ndarray | None:
    """``values`` as one numeric array ``(len(values), *element_shape)``, or None if they
    are not all numbers, or not all numeric arrays of one shape."""
    first = values[0]
    if isinstance(first, np.ndarray) and first.ndim > 0:
        shape = first.shape
        if all(
            isinstance(v, np.ndarray) and v.shape == shape and v.dtype.kind in _NUMERIC_KINDS
            for v in values
        ):
            return np.stack(values)
        return None
    if not all(_is_number(v) for v in values):
        return None
    try:
        arr = np.asarray(values)
    except (OverflowError, ValueError):
        return None
    return arr if arr.dtype.kind in _NUMERIC_KINDS and arr.ndim == 1 else None


def _fill(dtype: np.dtype) -> Any:
    """What a missing element holds: NaN for floats, 0 or False otherwise."""
    return np.nan if dtype.kind in "fc" else dtype.type(0)


class _ElementFiles(BackendArray):  # type: ignore[misc]
    """An object-valued output read from its element files only when indexed."""

    def __init__(self, folder: Path, shape: tuple[int, ...], present: np.ndarray) -> None:
        self.folder = folder
        self.shape = shape
        self.dtype = np.dtype(object)
        self._present = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=bool)
        self._present[present] = True

    def __getitem__(self, key: Any) -> Any:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._read
        )

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        linear = np.arange(self._present.size).reshape(self.shape)[key]
        flat = np.ravel(linear)
        wanted = flat[self._present[flat]]
        found = dict(zip(wanted.tolist(), load_elements(self.folder, wanted), strict=True))
        out = np.empty(flat.size, dtype=object)
        for pos, n in enumerate(flat.tolist()):
            v = found.get(n)
            # Fill one by one: numpy would take list-valued elements apart.
            out[pos] = None if v is MISSING_ELEMENT else v
        return out.reshape(np.shape(linear))


@dataclass
class _Output:
    """One output read from the store: its data (numeric, or object-valued) and mask."""

    data: Any  # np.ndarray, or a lazily read object array
    mask: np.ndarray
    element_dims: int = 0


#: Values already known of some elements of an output: ``(indices, values)``, the values
#: a numeric array (what the workers sent back, ``TaskResult.values``).
Known = tuple[np.ndarray, np.ndarray]


def _read_output(
    folder: Path, shape: tuple[int, ...], threads: int | None, known: Known | None = None
) -> _Output:
    """Read an array folder: numbers at once, objects lazily (their files stay unread).

    Numbers ``known`` for every element that has a file are taken as they are, without
    reading a file; else every file is read.
    """
    size = int(np.prod(shape, dtype=np.int64))
    present = present_indices(folder)
    present = present[present < size]
    mask = np.ones(size, dtype=bool)
    mask[present] = False
    if present.size == 0:  # nothing to go by: an all-missing float array
        return _Output(np.full(shape, np.nan), mask.reshape(shape))
    if known is not None and (got := _from_known(known, present, mask)) is not None:
        return _Output(got.reshape(shape), mask.reshape(shape))
    first = load_elements(folder, present[:1], threads=1)[0]
    numeric = _is_number(first) or _is_array_of_numbers(first)
    if not numeric or np.asarray(first).nbytes * present.size > MAX_NUMERIC_BYTES:
        return _Output(_lazy(folder, shape, present), mask.reshape(shape))
    values = load_elements(folder, present, threads)
    gone = [k for k, v in enumerate(values) if v is MISSING_ELEMENT]
    if gone:  # deleted since the listing (a resumed step): masked like any missing file
        mask[present[gone]] = True
        keep = np.ones(len(values), dtype=bool)
        keep[gone] = False
        present = present[keep]
        values = [v for v in values if v is not MISSING_ELEMENT]
    if not values:
        return _Output(np.full(shape, np.nan), mask.reshape(shape))
    stacked = _stack_numeric(values)
    if stacked is None:  # mixed: already read, so keep the objects in memory
        objects = np.empty(size, dtype=object)
        for n, v in zip(present.tolist(), values, strict=True):
            objects[n] = v
        return _Output(objects.reshape(shape), mask.reshape(shape))
    extra = stacked.shape[1:]
    data = np.full((size, *extra), _fill(stacked.dtype), dtype=stacked.dtype)
    data[present] = stacked
    return _Output(data.reshape(shape + extra), mask.reshape(shape), len(extra))


def _from_known(known: Known, present: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The flat data of an output from ``known`` values, or None if they do not cover
    every element in ``present`` (some came from an earlier run: resumed, reused)."""
    indices, values = known
    if values.ndim != 1 or values.dtype.kind not in _NUMERIC_KINDS or len(indices) != len(values):
        return None
    covered = np.zeros(mask.size, dtype=bool)
    inside = indices < mask.size
    covered[indices[inside]] = True
    if not covered[present].all() or values.itemsize * present.size > MAX_NUMERIC_BYTES:
        return None
    data = np.full(mask.size, _fill(values.dtype), dtype=values.dtype)
    data[indices[inside]] = values[inside]
    data[mask] = _fill(values.dtype)  # an element without a file is missing, whatever was sent
    return data


def _is_array_of_numbers(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind in _NUMERIC_KINDS


def _lazy(folder: Path, shape: tuple[int, ...], present: np.ndarray) -> Any:
    return indexing.LazilyIndexedArray(_ElementFiles(folder, shape, present))


def _from_memory(values: Any) -> _Output:
    """An in-memory array (numpy, masked or not, or nested lists) as an output."""
    if not isinstance(values, np.ndarray):
        values = np.asarray(values)
    mask = np.ma.getmaskarray(values)
    data = np.ma.getdata(values)
    if data.dtype.kind in _NUMERIC_KINDS:
        data = np.array(data)
        data[mask] = _fill(data.dtype)
        return _Output(data, mask)
    flat = data.ravel()
    present = np.flatnonzero(~mask.ravel())
    stacked = _stack_numeric([flat[n] for n in present]) if present.size else None
    if stacked is None:
        return _Output(np.array(data), mask)
    extra = stacked.shape[1:]
    out = np.full((flat.size, *extra), _fill(stacked.dtype), dtype=stacked.dtype)
    out[present] = stacked
    return _Output(out.reshape(data.shape + extra), mask, len(extra))


# -- errors and attempts -------------------------------------------------------------------


def _describe(exc: Any) -> str:
    """``"ValueError: message"`` for a stored exception."""
    if not isinstance(exc, BaseException):
        return repr(exc)
    if type(exc).__name__ == "UnpicklableError" and hasattr(exc, "type_name"):
        return str(exc)  # already "<original type>: <message>"
    return f"{type(exc).__name__}: {exc}"


#: An error text longer than this many bytes of UTF-8 is cut (ending in "…"): in
#: ``dataset.nc`` every element's text is as wide as the longest one.  The whole exception
#: stays in the step's ``exception`` output.
MAX_ERROR_BYTES = 1000

#: The attributes of a step's ``<step>_error``.
ERROR_ATTRS = {
    "long_name": "exception type and message; empty where none",
    # ASCII: netCDF keeps other text attributes as strings, which not every tool reads
    "comment": f"a text longer than {MAX_ERROR_BYTES} bytes (UTF-8) is cut, ending in an "
    "ellipsis (U+2026); the exceptions themselves are the step's output 'exception'",
}


def _cut(text: str) -> str:
    """``text`` at most :data:`MAX_ERROR_BYTES` long in UTF-8."""
    if len(text) * 4 <= MAX_ERROR_BYTES:  # short for sure: no encoding needed
        return text
    data = text.encode("utf-8")
    if len(data) <= MAX_ERROR_BYTES:
        return text
    return data[: MAX_ERROR_BYTES - 3].decode("utf-8", "ignore") + "…"


def _errors(step_dir: Path, size: int, threads: int | None) -> np.ndarray:
    folder = step_dir / "exception"
    idx = present_indices(folder)
    idx = idx[idx < size]
    texts = np.full(size, "", dtype=object)
    for n, exc in zip(idx.tolist(), load_elements(folder, idx, threads), strict=True):
        if exc is not MISSING_ELEMENT:
            texts[n] = _cut(_describe(exc))
    # Python strings, not a fixed-width numpy str array: one long message among 100,000
    # elements would otherwise cost 100,000 times its length.
    return texts


def _attempts(rec: StepStatus, size: int) -> np.ndarray:
    out = np.zeros(size, dtype=np.int64)
    for count, text in rec.element_attempts.items():
        idx = np.asarray(expand(text), dtype=np.int64)
        out[idx[idx < size]] = int(count)
    return out


# -- provenance ----------------------------------------------------------------------------

#: In a variable's ``encoding``: ``dataset.nc`` gets it from parsl_flows' own netCDF writes
#: (``netcdf._add_texts``), not xarray's; xarray itself ignores the key.
DIRECT = "parsl_flows_direct"

_NOT_RECORDED = (
    "not recorded (never run; its task lost; finished after the last write of "
    "provenance.npz by a driver that was then killed; reused from a run without one)"
)
#: Per provenance variable ``<step>_<suffix>``: its attributes.
PROVENANCE_ATTRS: dict[str, dict[str, str]] = {
    "seconds": {
        "long_name": "seconds of compute of the element",
        "units": "s",
        "description": "wall-clock time of the element on its worker, measured there "
        "(time.perf_counter): its inputs gathered, its call, its result pickled into its "
        f"task's files; NaN where {_NOT_RECORDED}",
    },
    "host": {
        "long_name": "node that computed the element",
        "description": f"os.uname().nodename of its worker; empty where {_NOT_RECORDED}",
    },
    "job": {
        "long_name": "batch job id",
        "description": "the scheduler job its worker ran in ($SLURM_JOB_ID); empty where "
        f"it ran in none (a local run), or where {_NOT_RECORDED}",
    },
    "attempt": {
        "long_name": "attempt that produced the element",
        "description": "which attempt of the step (numbered as in its log and status.json "
        "'attempts') ran the task that produced its result, or its last error; unlike "
        "<step>_attempts (tries in the step's last execution) it survives a resume, and a "
        f"reused element keeps its earlier run's number; 0 where {_NOT_RECORDED}",
    },
    "run": {
        "long_name": "run that computed the element",
        "description": "the id of the run whose worker computed the element: this run, or "
        "the earlier run it was taken from (a restart, reuse='store'; an element that run "
        f"took from another keeps that other run's id); empty where {_NOT_RECORDED}",
    },
    "peak_rss": {
        "long_name": "peak resident memory of the worker process",
        "units": "bytes",
        "description": "getrusage(RUSAGE_SELF).ru_maxrss of the worker process, read when "
        "the element's task ended: that process's peak so far, per task, not the "
        "element's own use (the same for every element of a task, never lower than for "
        "the worker's earlier tasks; with a thread pool, the driver's); an upper bound "
        f"on what the element needed; NaN where {_NOT_RECORDED}",
    },
}


def _provenance(
    step_dir: Path,
    name: str,
    dims: tuple[str, ...],
    shape: tuple[int, ...],
    attrs: dict[str, Any],
) -> dict[str, xr.Variable]:
    """``<name>_seconds``, ``_host``, ``_job``, ``_attempt``, ``_run`` and ``_peak_rss`` of a map
    step, from its ``provenance.npz`` (``parsl_flows.provenance``), not recorded where it
    has none.  Host, job and run are text, written to netCDF as fixed-width UTF-8 characters
    (``dtype="S1"``: few distinct values, 100,000 of them), by ``netcdf._add_texts``."""
    size = int(np.prod(shape, dtype=np.int64))
    data = _read_provenance(step_dir, size).columns()  # new arrays: the cache's stay
    return {
        f"{name}_{key}": xr.Variable(
            dims,
            values.reshape(shape),
            attrs={**attrs, **PROVENANCE_ATTRS[key]},
            encoding={DIRECT: True, **({"dtype": "S1"} if values.dtype.kind == "U" else {})},
        )
        for key, values in data.items()
    }


#: The provenance files read last, by (step folder, elements) and the file's inode, size
#: and time stamp: the engine's helper reads a map's for its ``dataset.nc``, then again
#: for the run's (``numpy.load`` of an npz takes 5 ms per 100,000 elements).
_READ_PROVENANCE: dict[tuple[Path, int], tuple[tuple[int, int, int], Provenance]] = {}
_READ_LIMIT = 16
_READ_LOCK = threading.Lock()


def _read_provenance(step_dir: Path, size: int) -> Provenance:
    """The provenance of a step's ``size`` elements (nothing recorded without a file);
    not to be changed (it may be the one of :data:`_READ_PROVENANCE`)."""
    try:
        st = (step_dir / PROVENANCE_FILE).stat()
    except OSError:
        return Provenance(step_dir, size)
    key, version = (step_dir, size), (st.st_ino, st.st_size, st.st_mtime_ns)
    with _READ_LOCK:
        cached = _READ_PROVENANCE.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    got = Provenance.read(step_dir, size) or Provenance(step_dir, size)
    with _READ_LOCK:
        while len(_READ_PROVENANCE) >= _READ_LIMIT:
            del _READ_PROVENANCE[next(iter(_READ_PROVENANCE))]
        _READ_PROVENANCE[key] = (version, got)
    return got
