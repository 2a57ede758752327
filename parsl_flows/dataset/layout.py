"""Where each map output lies: the dimensions and coordinates of a run's results.

Part of :mod:`parsl_flows.dataset`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import xarray as xr

from ..files import (
    MISSING_ELEMENT,
    element_path,
    load_pickle,
)
from ..mapspec import MapSpec
from ..status import RunRecord, StepStatus
from ..workflow import as_mapped_array
from .cf import coordinate_attrs, position_attrs

logger = logging.getLogger(__name__)

_X = TypeVar("_X", xr.Dataset, xr.DataArray)

#: dtype kinds a coordinate may have (numbers, strings, dates), all writable to netCDF.
_COORDINATE_KINDS = "biufUSMm"


# -- dimensions and coordinates: the layout of a run ---------------------------------------


@dataclass
class _Dim:
    """One dimension of a run's results, shared by every map output that lies on it."""

    size: int
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # input name -> values
    uses: list[tuple[str, str]] = field(default_factory=list)  # (step, index letter)
    name: str = ""
    coord_names: dict[str, str] = field(default_factory=dict)  # input name -> coord name
    coord_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)  # input name -> attrs


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
        self._given = {  # what the plain steps say of their outputs (@step(attrs=...))
            out: rec.attrs.get(out) for rec in records if rec.kind == "call" for out in rec.outputs
        }
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
                self.dims.append(
                    _Dim(
                        size,
                        dict(self.dims[like[0]].coords) if like else {},
                        coord_attrs=dict(self.dims[like[0]].coord_attrs) if like else {},
                    )
                )
                chosen = len(self.dims) - 1
            dim = self.dims[chosen]
            for name, p, rank in roots:
                by_origin.setdefault((name, p), chosen)
                if rank == 1 and name not in dim.coords:
                    got = self._coordinate(name, size)
                    if got is not None:
                        dim.coords[name], dim.coord_attrs[name] = got
            dim.uses.append((rec.name, idx))
            ids.append(chosen)
        self.step_dims[rec.name] = ids
        for out in spec.output_names:
            map_outputs[out] = rec.name

    def _coordinate(self, name: str, size: int) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The values of a mapped input if they make a coordinate (1-D, numbers or text),
        and its attributes (:func:`cf.coordinate_attrs`)."""
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
        if arr.dtype.kind not in _COORDINATE_KINDS:
            return None
        return arr, coordinate_attrs(name, value, self._given.get(name))

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
                out[dim.name] = xr.Variable(
                    (dim.name,), np.arange(dim.size), attrs=position_attrs(dim.name)
                )
            for inp, values in dim.coords.items():
                out[dim.coord_names[inp]] = xr.Variable(
                    (dim.name,), values, attrs=dict(dim.coord_attrs[inp])
                )
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


def element_grid(step_dir: Path) -> xr.DataArray:
    """Each element's flat index laid on a map step's dimensions, with its coordinates.

    What ``step_dataset`` would label the step's results with, without reading any of
    them: ``grid.sel(V_left=0.3)`` or ``grid.isel(a=2)`` says which elements those are.
    """
    rec = StepStatus.load(step_dir)
    if rec.kind != "map" or rec.shape is None or not rec.mapspec:
        raise ValueError(f"step {rec.name!r} is not a map with elements ({rec.state})")
    run_dir = step_dir.parents[1]
    records = _records(run_dir) if (run_dir / "run.json").exists() else [rec]
    layout = _Layout(records, _value_loader(run_dir, records), last=rec.name)
    ids = layout.step_dims[rec.name]
    shape = tuple(int(s) for s in rec.shape)
    flat = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
    grid = xr.DataArray(
        flat, dims=[layout.dims[i].name for i in ids], coords=layout.coordinates(ids)
    )
    return with_indexes(grid, layout.indexed(ids))


def with_indexes(labelled: _X, names: Iterable[str]) -> _X:
    """``labelled`` with an index on each coordinate ``names`` (``V_left`` on ``a``), so
    ``sel(V_left=...)`` works; a coordinate no index takes stays a plain coordinate."""
    for name in names:
        if name in labelled.coords and name not in labelled.indexes:
            try:
                labelled = labelled.set_xindex(name)
            except Exception:  # e.g. values no index takes; the coordinate is still there
                logger.debug("no index for coordinate %s", name, exc_info=True)
    return labelled
