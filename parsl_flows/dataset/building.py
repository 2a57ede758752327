"""Datasets of a step, of a run, and of any array (the public functions of the package).

Part of :mod:`parsl_flows.dataset`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import xarray as xr

from ..status import RunRecord, StepStatus
from .cf import global_attrs, mask_attrs, output_attrs
from .layout import _Layout, _records, _value_loader, with_indexes
from .netcdf import DATASET_FILE, _write_netcdf, forget_written, stored_values
from .reading import (
    ERROR_ATTRS,
    Known,
    _attempts,
    _errors,
    _from_memory,
    _provenance,
    _read_output,
)

logger = logging.getLogger(__name__)


def _attrs(**items: Any) -> dict[str, Any]:
    """Attributes netCDF can hold: no None values."""
    return {k: v for k, v in items.items() if v is not None}


def _step_variables(
    step_dir: Path,
    rec: StepStatus,
    dims: list[str],
    outputs: Sequence[str] | None,
    threads: int | None,
    known: Mapping[str, Known],
) -> dict[str, xr.Variable]:
    shape = tuple(rec.shape or ())
    size = int(np.prod(shape, dtype=np.int64))
    attrs = _attrs(step=rec.name, mapspec=rec.mapspec, exit_code=rec.exit_code)
    stored, stored_errors = stored_values(step_dir, rec)
    out: dict[str, xr.Variable] = {}
    for name in rec.outputs if outputs is None else outputs:
        got = stored.get(name) or _read_output(
            step_dir / "return_values" / name, shape, threads, known.get(name)
        )
        extra = tuple(f"{name}_dim_{k}" for k in range(got.element_dims))
        out[name] = xr.Variable(
            (*dims, *extra),
            got.data,
            attrs=output_attrs(name, rec.name, attrs, rec.attrs.get(name)),
        )
        out[f"{name}_mask"] = xr.Variable(tuple(dims), got.mask, attrs=mask_attrs(name, attrs))
    if stored_errors is None:
        stored_errors = _errors(step_dir, size, threads).reshape(shape)
    out[f"{rec.name}_error"] = xr.Variable(
        tuple(dims),
        stored_errors,
        attrs={**attrs, **ERROR_ATTRS},
    )
    out[f"{rec.name}_attempts"] = xr.Variable(
        tuple(dims),
        _attempts(rec, size).reshape(shape),
        attrs={**attrs, "long_name": "attempts per element; 0: never submitted", "units": "1"},
    )
    out.update(_provenance(step_dir, rec.name, tuple(dims), shape, attrs))
    return out


class InStore(Protocol):
    """A run or a step as users hold one (``Run``, ``StepRun``): all this needs is its folder."""

    @property
    def path(self) -> Path: ...


class ElementFolder(Protocol):
    """An array of element files (``FileBasedObjectArray``): its folder and shape."""

    folder: Path
    shape: tuple[int, ...]


def _dir(where: InStore | str | os.PathLike[str]) -> Path:
    return Path(where) if isinstance(where, str | os.PathLike) else Path(where.path)


def step_dataset(
    step_run: InStore | str | os.PathLike[str],
    run: InStore | None = None,
    *,
    outputs: Sequence[str] | None = None,
    threads: int | None = None,
    known: Mapping[str, Known] | None = None,
) -> xr.Dataset:
    """One map step's results as an ``xarray.Dataset`` (see the module docstring).

    ``run`` defaults to the run the step belongs to; ``outputs`` limits the outputs read
    (all by default); ``threads`` is how many threads read element files.  ``known`` gives
    numbers already known of an output, ``(indices, values)`` (the engine passes what its
    workers sent back): when they cover every element in the store, no file is read.

    >>> ds = step_dataset(run.step("modified_get_charge"))  # doctest: +SKIP
    >>> ds.charge.where(~ds.charge_mask).mean()  # doctest: +SKIP
    """
    step_dir = _dir(step_run)
    rec = StepStatus.load(step_dir)
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
    run_dir = _dir(run) if run is not None else step_dir.parents[1]
    run_rec: RunRecord | None = None
    if (run_dir / "run.json").exists():
        run_rec = RunRecord.load(run_dir)
        records = _records(run_dir)
    else:  # a step directory on its own: the mapspec's letters, positions as coordinates
        records = [rec]
    layout = _Layout(records, _value_loader(run_dir, records), last=rec.name)
    ids = layout.step_dims[rec.name]
    dims = [layout.dims[i].name for i in ids]
    variables = _step_variables(step_dir, rec, dims, outputs, threads, known or {})
    of_run = f" of run {run_rec.run_id} (workflow {run_rec.workflow})" if run_rec else ""
    ds = xr.Dataset(
        variables,
        coords=layout.coordinates(ids),
        attrs=global_attrs(
            f"results of map {rec.name}{of_run}",
            run_rec.created if run_rec else rec.started,
            run_id=run_rec.run_id if run_rec else None,
            workflow=run_rec.workflow if run_rec else None,
            step=rec.name,
            mapspec=rec.mapspec,
            exit_code=rec.exit_code,
            state=rec.state,
            finished=rec.finished,
        ),
    )
    return with_indexes(ds, layout.indexed(ids))


def run_dataset(
    run: InStore | str | os.PathLike[str],
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
    run_dir = _dir(run)
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
        step_dir = run_dir / "steps" / rec.dirname
        variables.update(_step_variables(step_dir, rec, dims, None, threads, {}))
        ids += [i for i in step_ids if i not in ids]
        steps.append(rec.name)
    ds = xr.Dataset(
        variables,
        coords=layout.coordinates(ids),
        attrs=global_attrs(
            f"results of the maps of run {run_rec.run_id} (workflow {run_rec.workflow})",
            run_rec.created,
            run_id=run_rec.run_id,
            workflow=run_rec.workflow,
            exit_code=run_rec.exit_code,
            status=run_rec.status,
            map_steps=" ".join(steps),
        ),
    )
    return with_indexes(ds, layout.indexed(ids))


def array_to_xarray(
    arr: ElementFolder | np.ndarray | Sequence[Any],
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
    >>> from parsl_flows.store import FileBasedObjectArray, element_path, write_pickle
    >>> folder = Path(tempfile.mkdtemp()) / "field"
    >>> for n in (0, 2):
    ...     write_pickle(element_path(folder, n), np.ones((3, 4)))
    >>> ds = array_to_xarray(FileBasedObjectArray(folder, (3,)))
    >>> ds.field.dims, ds.field.shape, ds.field_mask.values.tolist()
    (('dim_0', 'field_dim_0', 'field_dim_1'), (3, 3, 4), [False, True, False])
    """
    if hasattr(arr, "folder") and hasattr(arr, "shape"):  # element files
        arr = cast(ElementFolder, arr)
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
            name: xr.Variable(dims + extra, got.data, attrs={"long_name": name}),
            f"{name}_mask": xr.Variable(dims, got.mask, attrs=mask_attrs(name, {})),
        }
    )


def write_step_dataset(
    step_run: InStore | str | os.PathLike[str],
    run: InStore | None = None,
    *,
    threads: int | None = None,
    quiet: bool = False,
    known: Mapping[str, Known] | None = None,
) -> Path | None:
    """Write a map step's dataset to ``<step dir>/dataset.nc`` (netCDF4) and return its path.

    Numeric outputs, masks, errors, attempts, coordinates and attributes go in the file;
    object-valued outputs stay in their pickles and the file lists them in its
    ``pickled_outputs`` attribute (their masks say where: ``values_in``).  The file is
    written under a temporary name and renamed, so it is whole or absent.

    ``quiet=True`` is for the engine, after every step: a plain call or a map without
    elements is passed over, and a failure is logged, not raised (returns None).
    ``known``: as for :func:`step_dataset`.

    >>> path = write_step_dataset(run.step("modified_get_charge"))  # doctest: +SKIP
    >>> xr.open_dataset(path)  # doctest: +SKIP
    """
    step_dir = _dir(step_run)
    try:
        rec = StepStatus.load(step_dir)
        if quiet and (rec.kind != "map" or rec.shape is None):
            return None
        ds = step_dataset(step_dir, run, threads=threads, known=known)
        folders = {o: f"return_values/{o}" for o in rec.outputs}
        return _write_netcdf(ds, step_dir / DATASET_FILE, folders, keep=True)
    except Exception:
        if not quiet:
            raise
        logger.warning("could not write %s", step_dir / DATASET_FILE, exc_info=True)
        return None


def write_run_dataset(
    run: InStore | str | os.PathLike[str],
    *,
    threads: int | None = None,
    outcome: tuple[str, int | None] | None = None,
) -> Path:
    """Write :func:`run_dataset` to ``<run dir>/dataset.nc`` (as :func:`write_step_dataset`)."""
    run_dir = _dir(run)
    ds = run_dataset(run_dir, threads=threads, outcome=outcome)
    folders = {
        out: f"steps/{rec.dirname}/return_values/{out}"
        for rec in _records(run_dir)
        for out in rec.outputs
    }
    try:
        return _write_netcdf(ds, run_dir / DATASET_FILE, folders)
    finally:
        forget_written(run_dir)
