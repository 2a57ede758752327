"""Map results as labelled data: xarray Datasets, netCDF files and tables of input samples.

A finished map is a folder of element files.  This module turns it into an
:class:`xarray.Dataset` whose dimensions are the map's indices, whose coordinates are the
values the map swept over, and which carries, for every output ``<name>``:

- ``<name>``: numeric when every present element is a number (or a numeric array of one
  shape, which adds the dimensions ``<name>_dim_0``, ...), object-valued otherwise;
- ``<name>_mask``: True where the element is missing (failed, or never submitted);

and for every map step ``<step>_error`` (``"ValueError: ..."``, empty where none) and
``<step>_attempts`` (how many attempts each element took; 0 if never submitted).

Dimensions follow the data: ``map_(get_charge, "electrostatics[i, j] -> charge[i, j]")``
over the output of ``"V_left[a], V_right[b] -> electrostatics[a, b]"`` lies on ``a`` and
``b``, with the ``V_left`` and ``V_right`` coordinates, and in :func:`run_dataset` every
map over the same input axis shares its dimension.  A dimension that cannot be shared
keeps a name of its own: the ``v`` of ``"p[u], q[v] -> r[u, v]"`` when ``p`` and ``q``
both lie on one dimension, or an ``i`` whose letter an earlier dimension took (it
becomes ``<step>_i``).  Inputs that are not 1-D numbers or text give positions.

Missing floats are NaN; missing integers and booleans hold 0 and False, so read them
through their mask (``ds.n.where(~ds.n_mask)``).  Object-valued outputs are read lazily,
an element file when the element is asked for; numeric ones are read at once, by several
threads (unless bigger than ``MAX_NUMERIC_BYTES`` in all: those stay lazy objects).
:func:`write_step_dataset` stores the numeric part as ``dataset.nc``, which any netCDF
reader opens; object-valued outputs stay in their pickles and the file names them.

>>> import numpy as np
>>> ds = array_to_xarray(np.ma.masked_array([1.5, 2.5, 3.5], mask=[0, 1, 0]), name="y")
>>> ds.y.values.tolist(), ds.y_mask.values.tolist()
([1.5, nan, 3.5], [False, True, False])
>>> float(ds.y.where(~ds.y_mask).mean())
2.5
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

# The documented way to give xarray a lazily read array (see xarray's "How to add a new
# backend"): a BackendArray wrapped in a LazilyIndexedArray.
from xarray.backends import BackendArray
from xarray.core import indexing

from .mapspec import MapSpec
from .ranges import expand
from .status import RunRecord, StepStatus
from .store import (
    MISSING_ELEMENT,
    FileBasedObjectArray,
    element_path,
    load_elements,
    load_pickle,
    present_indices,
)

if TYPE_CHECKING:
    from .run import Run, StepRun
    from .workflow import Call, Map, Workflow

__all__ = [
    "array_to_xarray",
    "input_samples",
    "load_elements",
    "run_dataset",
    "step_dataset",
    "write_run_dataset",
    "write_step_dataset",
]

logger = logging.getLogger(__name__)

#: netCDF4's HDF5 library is not thread-safe: two steps finishing at once in the driver's
#: threads crashed the process (a segfault) while both wrote their dataset.nc.  Every
#: netCDF write of this module holds this lock.
NETCDF_LOCK = threading.Lock()

#: The file a finished map step's dataset is written to, in its step directory.
DATASET_FILE = "dataset.nc"
#: dtype kinds stored as numbers: bool, int, uint, float, complex.
_NUMERIC_KINDS = "biufc"
#: dtype kinds a coordinate may have (numbers, strings, dates), all writable to netCDF.
_COORDINATE_KINDS = "biufUSMm"
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


def _read_output(folder: Path, shape: tuple[int, ...], threads: int | None) -> _Output:
    """Read an array folder: numbers at once, objects lazily (their files stay unread)."""
    size = int(np.prod(shape, dtype=np.int64))
    present = present_indices(folder)
    present = present[present < size]
    mask = np.ones(size, dtype=bool)
    mask[present] = False
    if present.size == 0:  # nothing to go by: an all-missing float array
        return _Output(np.full(shape, np.nan), mask.reshape(shape))
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


def _errors(step_dir: Path, size: int, threads: int | None) -> np.ndarray:
    folder = step_dir / "exception"
    idx = present_indices(folder)
    idx = idx[idx < size]
    texts = np.full(size, "", dtype=object)
    for n, exc in zip(idx.tolist(), load_elements(folder, idx, threads), strict=True):
        if exc is not MISSING_ELEMENT:
            texts[n] = _describe(exc)
    # Python strings, not a fixed-width numpy str array: one long message among 100,000
    # elements would otherwise cost 100,000 times its length.
    return texts


def _attempts(rec: StepStatus, size: int) -> np.ndarray:
    out = np.zeros(size, dtype=np.int64)
    for count, text in rec.element_attempts.items():
        idx = np.asarray(expand(text), dtype=np.int64)
        out[idx[idx < size]] = int(count)
    return out


# -- dimensions and coordinates: the layout of a run ---------------------------------------


@dataclass
class _Dim:
    """One dimension of a run's results, shared by every map output that lies on it."""

    size: int
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # input name -> values
    uses: list[tuple[str, str]] = field(default_factory=list)  # (step, index letter)
    name: str = ""
    coord_names: dict[str, str] = field(default_factory=dict)  # input name -> coord name


class _Layout:
    """Which dimension each axis of each map step's output lies on.

    Steps are taken in plan order.  An index of a map lies on the dimension of the
    upstream map output it reads (so ``charge[i, j]`` over ``electrostatics[a, b]`` lies
    on ``a`` and ``b``), else on the dimension of the workflow input or plain-step output
    axis it reads, shared with every earlier map that read that axis; else on a new one.
    Names go to dimensions in the order they appear: the index letter of their first use
    if free, else another letter they were used under, else ``<step>_<letter>``.
    """

    def __init__(
        self,
        records: Sequence[StepStatus],
        value_of: Callable[[str], Any],
        last: str | None = None,
    ) -> None:
        self.dims: list[_Dim] = []
        self.step_dims: dict[str, list[int]] = {}
        self._value_of = value_of
        by_origin: dict[tuple[str, int], int] = {}  # (array, axis) -> dim
        map_outputs: dict[str, str] = {}  # output -> the map step that made it
        reserved: set[str] = set()
        for rec in records:
            if rec.kind == "map":
                reserved |= {*rec.outputs, *(f"{o}_mask" for o in rec.outputs)}
                reserved |= {f"{rec.name}_error", f"{rec.name}_attempts"}
        for rec in records:
            if rec.kind == "map" and rec.shape is not None and rec.mapspec:
                self._add(rec, by_origin, map_outputs)
            if rec.name == last:
                break
        self._name(reserved)

    def _add(
        self, rec: StepStatus, by_origin: dict[tuple[str, int], int], map_outputs: dict[str, str]
    ) -> None:
        spec = MapSpec.from_string(rec.mapspec or "")
        ids: list[int] = []
        for k, idx in enumerate(spec.output_indices):
            size = int(rec.shape[k]) if rec.shape is not None else 0
            candidates: list[int] = []
            roots: list[tuple[str, int, int]] = []  # (array, axis, rank)
            for arr in spec.inputs:
                for p, axis in enumerate(arr.axes):
                    if axis != idx:
                        continue
                    upstream = map_outputs.get(arr.name)
                    if upstream is not None and p < len(self.step_dims[upstream]):
                        candidates.append(self.step_dims[upstream][p])
                    else:
                        roots.append((arr.name, p, arr.rank))
            candidates += [by_origin[(n, p)] for n, p, _ in roots if (n, p) in by_origin]
            free = [c for c in candidates if c not in ids and self.dims[c].size == size]
            if free:
                chosen = free[0]
            else:  # new, or taken by another index of this map ("p[i], q[j]" on one axis)
                like = [c for c in candidates if self.dims[c].size == size]
                self.dims.append(_Dim(size, dict(self.dims[like[0]].coords) if like else {}))
                chosen = len(self.dims) - 1
            dim = self.dims[chosen]
            for name, p, rank in roots:
                by_origin.setdefault((name, p), chosen)
                if rank == 1 and name not in dim.coords:
                    values = self._coordinate(name, size)
                    if values is not None:
                        dim.coords[name] = values
            dim.uses.append((rec.name, idx))
            ids.append(chosen)
        self.step_dims[rec.name] = ids
        for out in spec.output_names:
            map_outputs[out] = rec.name

    def _coordinate(self, name: str, size: int) -> np.ndarray | None:
        """The values of a mapped input if they make a coordinate: 1-D, numbers or text."""
        from .workflow import as_mapped_array

        try:
            value = self._value_of(name)
            if value is MISSING_ELEMENT:
                return None
            if isinstance(value, np.ma.MaskedArray) and np.ma.getmaskarray(value).any():
                return None
            arr = np.asarray(np.ma.getdata(as_mapped_array(value, 1)))
        except Exception:  # anything odd is a positional dimension, never an error
            return None
        if arr.ndim != 1 or arr.shape[0] != size:
            return None
        if arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr):
            arr = arr.astype(str)
        return arr if arr.dtype.kind in _COORDINATE_KINDS else None

    def _name(self, reserved: set[str]) -> None:
        taken = set(reserved)
        for dim in self.dims:
            options = [letter for _, letter in dim.uses]
            options += [f"{step}_{letter}" for step, letter in dim.uses]
            name = next((o for o in options if o not in taken), "")
            k = 2
            while not name or name in taken:
                name, k = f"{options[0]}_{k}", k + 1
            dim.name = name
            taken.add(name)
        dim_names = {d.name for d in self.dims}
        used: set[str] = set()
        for dim in self.dims:
            for inp in dim.coords:
                cname = inp
                if cname in used or cname in reserved or (cname in dim_names and cname != dim.name):
                    cname = f"{inp}_{dim.name}"
                dim.coord_names[inp] = cname
                used.add(cname)

    def coordinates(self, dim_ids: Iterable[int]) -> dict[str, xr.Variable]:
        """The coordinates of some dimensions: the swept values, else positions."""
        out: dict[str, xr.Variable] = {}
        for i in dim_ids:
            dim = self.dims[i]
            if not dim.coords:
                out[dim.name] = xr.Variable((dim.name,), np.arange(dim.size))
            for inp, values in dim.coords.items():
                out[dim.coord_names[inp]] = xr.Variable((dim.name,), values, attrs={"input": inp})
        return out

    def indexed(self, dim_ids: Iterable[int]) -> list[str]:
        """Coordinates that are not a dimension's own but can be selected by (``sel``)."""
        names = []
        for i in dim_ids:
            dim = self.dims[i]
            names += [c for c in dim.coord_names.values() if c != dim.name]
        return names


# -- datasets -------------------------------------------------------------------------------


def _records(run_dir: Path) -> list[StepStatus]:
    return [StepStatus.load(run_dir / "steps" / d) for d in RunRecord.load(run_dir).steps]


def _value_loader(run_dir: Path, records: Sequence[StepStatus]) -> Callable[[str], Any]:
    """Reads a workflow input, or a plain step's output, by name (for coordinates)."""
    call_dirs = {
        out: run_dir / "steps" / rec.dirname
        for rec in records
        if rec.kind == "call"
        for out in rec.outputs
    }

    def value_of(name: str) -> Any:
        path = run_dir / "inputs" / f"{name}.pickle"
        if name in call_dirs:
            path = element_path(call_dirs[name] / "return_values" / name, 0)
        try:
            return load_pickle(path)
        except FileNotFoundError:
            return MISSING_ELEMENT

    return value_of


def _attrs(**items: Any) -> dict[str, Any]:
    """Attributes netCDF can hold: no None values."""
    return {k: v for k, v in items.items() if v is not None}


def _stored_values(step_dir: Path, rec: StepStatus) -> dict[str, _Output]:
    """The numeric outputs and errors of the step's own ``dataset.nc``, if it is current.

    The engine writes each map's ``dataset.nc`` as the map ends; the run's dataset, built
    when the run ends, takes them from there instead of reading every element file a
    second time (seconds for a map of 100,000 elements).  The file is current when it
    was written for this very ending of the step (its ``finished`` and ``state``
    attributes match the step's record): a restart or resume ends the step anew.
    Outputs kept in pickles, and anything unreadable, are read from the elements.
    """
    path = step_dir / DATASET_FILE
    if rec.finished is None or not path.exists():
        return {}
    try:
        with NETCDF_LOCK, xr.open_dataset(path, engine="netcdf4") as ds:
            if ds.attrs.get("finished") != rec.finished or ds.attrs.get("state") != rec.state:
                return {}
            found: dict[str, _Output] = {}
            for name in [*rec.outputs, f"{rec.name}_error"]:
                mask = f"{name}_mask"
                if name in ds.data_vars and (mask in ds.data_vars or name.endswith("_error")):
                    data = ds[name].values
                    flags = ds[mask].values if mask in ds.data_vars else np.zeros(0, bool)
                    found[name] = _Output(data, flags, data.ndim - len(rec.shape or ()))
            return found
    except Exception:  # a damaged or foreign file: the element files are the truth
        logger.debug("not using %s", path, exc_info=True)
        return {}


def _step_variables(
    step_dir: Path,
    rec: StepStatus,
    dims: list[str],
    outputs: Sequence[str] | None,
    threads: int | None,
) -> dict[str, xr.Variable]:
    shape = tuple(rec.shape or ())
    size = int(np.prod(shape, dtype=np.int64))
    attrs = _attrs(step=rec.name, mapspec=rec.mapspec, exit_code=rec.exit_code)
    stored = _stored_values(step_dir, rec)
    out: dict[str, xr.Variable] = {}
    for name in rec.outputs if outputs is None else outputs:
        got = stored.get(name) or _read_output(step_dir / "return_values" / name, shape, threads)
        extra = tuple(f"{name}_dim_{k}" for k in range(got.element_dims))
        out[name] = xr.Variable((*dims, *extra), got.data, attrs=dict(attrs))
        out[f"{name}_mask"] = xr.Variable(
            tuple(dims), got.mask, attrs={**attrs, "long_name": f"{name} is missing"}
        )
    errors = stored.get(f"{rec.name}_error")
    out[f"{rec.name}_error"] = xr.Variable(
        tuple(dims),
        errors.data if errors is not None else _errors(step_dir, size, threads).reshape(shape),
        attrs={**attrs, "long_name": "exception type and message; empty where none"},
    )
    out[f"{rec.name}_attempts"] = xr.Variable(
        tuple(dims),
        _attempts(rec, size).reshape(shape),
        attrs={**attrs, "long_name": "attempts per element; 0: never submitted"},
    )
    return out


def _with_indexes(ds: xr.Dataset, names: Iterable[str]) -> xr.Dataset:
    for name in names:
        if name in ds.coords and name not in ds.indexes:
            try:
                ds = ds.set_xindex(name)
            except Exception:  # e.g. values no index takes; the coordinate is still there
                logger.debug("no index for coordinate %s", name, exc_info=True)
    return ds


def _as_step_run(step_run: StepRun | str | os.PathLike[str]) -> StepRun:
    from .run import StepRun

    return step_run if isinstance(step_run, StepRun) else StepRun(Path(step_run))


def step_dataset(
    step_run: StepRun | str | os.PathLike[str],
    run: Run | None = None,
    *,
    outputs: Sequence[str] | None = None,
    threads: int | None = None,
) -> xr.Dataset:
    """One map step's results as an ``xarray.Dataset`` (see the module docstring).

    ``run`` defaults to the run the step belongs to; ``outputs`` limits the outputs read
    (all by default); ``threads`` is how many threads read element files.

    >>> ds = step_dataset(run.step("modified_get_charge"))  # doctest: +SKIP
    >>> ds.charge.where(~ds.charge_mask).mean()  # doctest: +SKIP
    """
    step_run = _as_step_run(step_run)
    rec = step_run.record
    if rec.kind != "map":
        raise ValueError(
            f"step {rec.name!r} is a plain call, not a map; its output is one value: "
            f"step.outputs.return_values.<name>.fetch_value()"
        )
    if rec.shape is None or not rec.mapspec:
        raise ValueError(
            f"map {rec.name!r} has no elements yet ({rec.state}"
            f"{': ' + rec.message if rec.message else ''}), so it has no dataset"
        )
    unknown = [o for o in outputs or () if o not in rec.outputs]
    if unknown:
        raise KeyError(f"map {rec.name!r} has no output {unknown[0]!r} (outputs: {rec.outputs})")
    run_dir = Path(run.path) if run is not None else step_run.path.parents[1]
    run_rec: RunRecord | None = None
    if (run_dir / "run.json").exists():
        run_rec = RunRecord.load(run_dir)
        records = _records(run_dir)
    else:  # a step directory on its own: the mapspec's letters, positions as coordinates
        records = [rec]
    layout = _Layout(records, _value_loader(run_dir, records), last=rec.name)
    ids = layout.step_dims[rec.name]
    dims = [layout.dims[i].name for i in ids]
    variables = _step_variables(step_run.path, rec, dims, outputs, threads)
    ds = xr.Dataset(
        variables,
        coords=layout.coordinates(ids),
        attrs=_attrs(
            run_id=run_rec.run_id if run_rec else None,
            workflow=run_rec.workflow if run_rec else None,
            step=rec.name,
            mapspec=rec.mapspec,
            exit_code=rec.exit_code,
            state=rec.state,
            finished=rec.finished,
        ),
    )
    return _with_indexes(ds, layout.indexed(ids))


def run_dataset(
    run: Run | str | os.PathLike[str],
    *,
    threads: int | None = None,
    outcome: tuple[str, int | None] | None = None,
) -> xr.Dataset:
    """Every map step of a run in one ``xarray.Dataset``; maps share their dimensions.

    Maps that never started (skipped for missing inputs) are left out.  ``outcome`` is
    the run's status and exit code when ``run.json`` does not hold them yet: the engine
    writes the run's ``dataset.nc`` before it records the end, so that a finished run
    always has it.

    >>> ds = run_dataset(run)  # doctest: +SKIP
    >>> ds.charge.sel(a=3)  # doctest: +SKIP
    """
    run_dir = Path(run.path if not isinstance(run, str | os.PathLike) else run)
    run_rec = RunRecord.load(run_dir)
    if outcome is not None:
        run_rec.status, run_rec.exit_code = outcome
    records = _records(run_dir)
    layout = _Layout(records, _value_loader(run_dir, records))
    variables: dict[str, xr.Variable] = {}
    ids: list[int] = []
    steps = []
    for rec in records:
        if rec.name not in layout.step_dims:
            continue
        step_ids = layout.step_dims[rec.name]
        dims = [layout.dims[i].name for i in step_ids]
        variables.update(_step_variables(run_dir / "steps" / rec.dirname, rec, dims, None, threads))
        ids += [i for i in step_ids if i not in ids]
        steps.append(rec.name)
    ds = xr.Dataset(
        variables,
        coords=layout.coordinates(ids),
        attrs=_attrs(
            run_id=run_rec.run_id,
            workflow=run_rec.workflow,
            exit_code=run_rec.exit_code,
            status=run_rec.status,
            map_steps=" ".join(steps),
        ),
    )
    return _with_indexes(ds, layout.indexed(ids))


def array_to_xarray(
    arr: FileBasedObjectArray | np.ndarray | Sequence[Any],
    name: str | None = None,
    *,
    threads: int | None = None,
) -> xr.Dataset:
    """An array as a Dataset with ``<name>`` and ``<name>_mask``.

    A map output in a run (``step.outputs.return_values.charge``) gets its step's
    dimensions, coordinates, errors and attempts, as :func:`step_dataset` gives them.
    Any other array (a ``FileBasedObjectArray`` elsewhere, a numpy or masked array) lies
    on ``dim_0``, ``dim_1``, ...; ``name`` defaults to the folder's name, else ``"array"``.

    >>> import tempfile
    >>> from parsl_flows.store import write_pickle
    >>> folder = Path(tempfile.mkdtemp()) / "field"
    >>> for n in (0, 2):
    ...     write_pickle(element_path(folder, n), np.ones((3, 4)))
    >>> ds = array_to_xarray(FileBasedObjectArray(folder, (3,)))
    >>> ds.field.dims, ds.field.shape, ds.field_mask.values.tolist()
    (('dim_0', 'field_dim_0', 'field_dim_1'), (3, 3, 4), [False, True, False])
    """
    if isinstance(arr, FileBasedObjectArray):
        step_dir = arr.folder.parent.parent
        if arr.folder.parent.name == "return_values" and (step_dir / "status.json").exists():
            rec = StepStatus.load(step_dir)
            if rec.kind == "map" and rec.shape is not None and arr.folder.name in rec.outputs:
                return step_dataset(step_dir, outputs=[arr.folder.name], threads=threads)
        name = name or arr.folder.name
        got = _read_output(arr.folder, arr.shape, threads)
    else:
        name = name or "array"
        got = _from_memory(arr)
    dims = tuple(f"dim_{k}" for k in range(got.mask.ndim))
    extra = tuple(f"{name}_dim_{k}" for k in range(got.element_dims))
    return xr.Dataset(
        {
            name: xr.Variable(dims + extra, got.data),
            f"{name}_mask": xr.Variable(dims, got.mask),
        }
    )


# -- netCDF ---------------------------------------------------------------------------------


def _write_netcdf(ds: xr.Dataset, path: Path, folders: dict[str, str]) -> Path:
    """Write the numeric part of ``ds`` to ``path`` atomically; name what stays in pickles.

    ``folders`` maps each output to its element folder, relative to ``path``'s directory.
    """
    pickled = [
        name
        for name in folders
        if name in ds.data_vars and np.dtype(ds[name].dtype).kind not in "biuf"
    ]
    out = ds.drop_vars(pickled)
    for name in pickled:
        if f"{name}_mask" in out and name in folders:
            out[f"{name}_mask"].attrs["values_in"] = f"{folders[name]}/__{{n}}__.pickle"
    out.attrs["pickled_outputs"] = " ".join(pickled)
    if pickled:
        out.attrs["pickled_outputs_note"] = (
            "outputs that are not numbers (or too big) stay in pickle files, one per "
            "element: <mask>.values_in, n the C-order index of the element; a missing file "
            "is a missing element. Loading a pickle runs code: only open stores you trust."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with NETCDF_LOCK:
            out.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_step_dataset(
    step_run: StepRun | str | os.PathLike[str],
    run: Run | None = None,
    *,
    threads: int | None = None,
    quiet: bool = False,
) -> Path | None:
    """Write a map step's dataset to ``<step dir>/dataset.nc`` (netCDF4) and return its path.

    Numeric outputs, masks, errors, attempts, coordinates and attributes go in the file;
    object-valued outputs stay in their pickles and the file lists them in its
    ``pickled_outputs`` attribute (their masks say where: ``values_in``).  The file is
    written under a temporary name and renamed, so it is whole or absent.

    ``quiet=True`` is for the engine, after every step: a plain call or a map without
    elements is passed over, and a failure is logged, not raised (returns None).

    >>> path = write_step_dataset(run.step("modified_get_charge"))  # doctest: +SKIP
    >>> xr.open_dataset(path)  # doctest: +SKIP
    """
    step_run = _as_step_run(step_run)
    try:
        rec = step_run.record
        if quiet and (rec.kind != "map" or rec.shape is None):
            return None
        ds = step_dataset(step_run, run, threads=threads)
        folders = {o: f"return_values/{o}" for o in rec.outputs}
        return _write_netcdf(ds, step_run.path / DATASET_FILE, folders)
    except Exception:
        if not quiet:
            raise
        logger.warning("could not write %s", step_run.path / DATASET_FILE, exc_info=True)
        return None


def write_run_dataset(
    run: Run | str | os.PathLike[str],
    *,
    threads: int | None = None,
    outcome: tuple[str, int | None] | None = None,
) -> Path:
    """Write :func:`run_dataset` to ``<run dir>/dataset.nc`` (as :func:`write_step_dataset`)."""
    run_dir = Path(run.path if not isinstance(run, str | os.PathLike) else run)
    ds = run_dataset(run_dir, threads=threads, outcome=outcome)
    folders = {
        out: f"steps/{rec.dirname}/return_values/{out}"
        for rec in _records(run_dir)
        for out in rec.outputs
    }
    return _write_netcdf(ds, run_dir / DATASET_FILE, folders)


# -- input samples ---------------------------------------------------------------------------


def _lineage(plan: Workflow, node: Map) -> dict[str, tuple[str, tuple[str | None, ...]]]:
    """What produced each element of ``node``: ``label -> (root, axes)``.

    A root is a workflow input or a plain step's output.  ``axes`` gives, for each mapped
    axis of the root, the index of ``node`` it follows (None: the whole axis); ``()`` is a
    value every element shares.  Maps upstream are followed through, their index letters
    translated into ``node``'s.  A root reached twice in different ways gets a second
    label such as ``"x[:]"``.
    """
    from .workflow import Map

    producers = plan.producers()
    entries: dict[str, tuple[str, tuple[str | None, ...]]] = {}
    seen_calls: set[str] = set()

    def add(root: str, axes: tuple[str | None, ...]) -> None:
        if axes and all(a is None for a in axes):
            axes = ()  # the whole array: the same for every element
        if (root, axes) in entries.values():
            return
        label = root
        if label in entries:  # "x[v]": x again, along another index; "x[:]": all of it
            label = f"{root}[{', '.join(a or ':' for a in axes) or ':'}]"
        entries.setdefault(label, (root, axes))

    def whole(name: str) -> None:
        src = producers.get(name)
        if src is None:
            add(name, ())
        elif isinstance(src, Map):
            visit_map(src, {u: None for u in src.mapspec.output_indices})
        else:
            visit_call(src)

    def visit_call(c: Call) -> None:
        if c.name not in seen_calls:
            seen_calls.add(c.name)
            for p in c.parameters:
                whole(p)

    def visit_map(m: Map, translate: dict[str, str | None]) -> None:
        spec = m.mapspec
        for arr in spec.inputs:
            axes = tuple(None if a is None else translate[a] for a in arr.axes)
            src = producers.get(arr.name)
            if isinstance(src, Map):
                up = src.mapspec.output_indices
                visit_map(src, {u: axes[p] if p < len(axes) else None for p, u in enumerate(up)})
            else:
                add(arr.name, axes)
                if src is not None:
                    visit_call(src)
        for p in m.parameters:
            if p not in spec.input_names:
                whole(p)

    visit_map(node, {i: i for i in node.mapspec.output_indices})
    return entries


def input_samples(array_or_step: FileBasedObjectArray | StepRun) -> list[dict[str, Any]]:
    """The input values that produced each element of a map output, in C order.

    One dict per element: the mapped inputs it received (traced back through upstream
    maps to the workflow inputs, so ``charge[i, j]`` lists ``V_left`` and ``V_right``),
    the inputs every element shared, and ``<output>_mask`` (True: the element is
    missing).  Masked elements are included, so the list lines up with
    ``arr.to_array().ravel()``.  ``pandas.DataFrame(input_samples(charge))`` is a
    table of samples.  Loading the inputs runs pickled code: only for stores you trust.

    >>> charge = run.step("modified_get_charge").outputs.return_values.charge  # doctest: +SKIP
    >>> df = pd.DataFrame(flows.input_samples(charge))  # doctest: +SKIP
    >>> df.assign(charge=charge.to_array().filled(np.nan).ravel())  # doctest: +SKIP
    """
    from .run import Run, StepRun
    from .workflow import Map, as_mapped_array

    if isinstance(array_or_step, FileBasedObjectArray):
        folder = array_or_step.folder
        if (
            folder.parent.name != "return_values"
            or not (folder.parents[1] / "status.json").exists()
        ):
            raise ValueError(
                f"{array_or_step!r} is not a map output in a run, so nothing records the "
                "inputs that produced it; pass step.outputs.return_values.<name>"
            )
        step_run, outputs = StepRun(folder.parents[1]), [folder.name]
    elif isinstance(array_or_step, StepRun):
        step_run, outputs = array_or_step, list(array_or_step.record.outputs)
    else:
        raise TypeError(
            "input_samples() takes a map output (step.outputs.return_values.<name>) or a "
            f"step of a run, not {type(array_or_step).__name__}"
        )
    rec = step_run.record
    run = Run(step_run.path.parents[1])
    plan = run.plan
    node = plan.node(rec.name)
    if not isinstance(node, Map) or rec.shape is None:
        raise ValueError(f"step {rec.name!r} is not a map with elements; it has no samples")
    entries = _lineage(plan, node)
    value_of = _value_loader(run.path, _records(run.path))
    values = {root: value_of(root) for root in {r for r, _ in entries.values()}}
    order = node.mapspec.output_indices
    shared: dict[str, Any] = {}
    arrays: dict[str, tuple[np.ndarray, tuple[str | None, ...]]] = {}
    for label, (root, axes) in entries.items():
        if values[root] is MISSING_ELEMENT:  # an input left to its default
            continue
        if axes:
            arrays[label] = (as_mapped_array(values[root], len(axes)), axes)
        else:
            shared[label] = values[root]
    shape = tuple(rec.shape)
    masks = {
        f"{o}_mask": FileBasedObjectArray(step_run.path / "return_values" / o, shape).mask.ravel()
        for o in outputs
    }
    samples = []
    for n, key in enumerate(np.ndindex(*shape)):
        pos = dict(zip(order, key, strict=True))
        sample = {
            label: shared[label]
            if label in shared
            else arrays[label][0][tuple(slice(None) if a is None else pos[a] for a in axes)]
            for label, (_, axes) in entries.items()
            if label in shared or label in arrays
        }
        sample.update({m: bool(mask[n]) for m, mask in masks.items()})
        samples.append(sample)
    return samples
