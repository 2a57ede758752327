"""``dataset.nc``: writing a dataset's numeric part to netCDF, and taking it back.

Part of :mod:`parsl_flows.dataset`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..element_folders import INDEX_NAME
from ..status import StepStatus
from .reading import DIRECT, _Output

logger = logging.getLogger(__name__)


#: netCDF4's HDF5 library is not thread-safe: two steps finishing at once in the driver's
#: threads crashed the process (a segfault) while both wrote their dataset.nc.  Every
#: netCDF write of this module holds this lock.
NETCDF_LOCK = threading.Lock()

#: The file a finished map step's dataset is written to, in its step directory.
DATASET_FILE = "dataset.nc"


#: The step datasets this process wrote, by file, while their run goes on: the run's
#: dataset, written when the run ends, takes them from here rather than reading the
#: files back (a fifth of a second for two maps of 100,000 elements).  One is used only
#: while its file is still the one written (the same size and time stamp).
_WRITTEN: dict[Path, tuple[tuple[int, int], xr.Dataset]] = {}


def stored_values(step_dir: Path, rec: StepStatus) -> tuple[dict[str, _Output], np.ndarray | None]:
    """The numeric outputs and the errors in the step's own ``dataset.nc``, if it is current.

    The engine writes each map's ``dataset.nc`` as the map ends; the run's dataset, built
    when the run ends, takes them from there instead of reading every element file a
    second time (seconds for a map of 100,000 elements).  The file is current when it
    was written for this very ending of the step (its ``finished`` and ``state``
    attributes match the step's record): a restart or resume ends the step anew.
    Outputs kept in pickles, and anything unreadable, are read from the elements
    (``({}, None)``: nothing taken from the file).
    """
    path = step_dir / DATASET_FILE
    if rec.finished is None:
        return {}, None
    try:
        stat = path.stat()
    except OSError:
        return {}, None
    written = _WRITTEN.get(path)
    if written is not None and written[0] == (stat.st_mtime_ns, stat.st_size):
        return _values(written[1], rec)
    try:
        with NETCDF_LOCK, xr.open_dataset(path, engine="netcdf4") as ds:
            return _values(ds, rec)
    except Exception:  # a damaged or foreign file: the element files are the truth
        logger.debug("not using %s", path, exc_info=True)
        return {}, None


def _values(ds: xr.Dataset, rec: StepStatus) -> tuple[dict[str, _Output], np.ndarray | None]:
    if ds.attrs.get("finished") != rec.finished or ds.attrs.get("state") != rec.state:
        return {}, None
    outputs = {
        name: _Output(
            ds[name].values,
            ds[f"{name}_mask"].values,
            ds[name].ndim - len(rec.shape or ()),
        )
        for name in rec.outputs
        if name in ds.data_vars and f"{name}_mask" in ds.data_vars
    }
    error = f"{rec.name}_error"
    return outputs, ds[error].values if error in ds.data_vars else None


def forget_written(run_dir: Path) -> None:
    """Drop what :data:`_WRITTEN` holds of the run in ``run_dir`` (its dataset is written)."""
    for path in [p for p in _WRITTEN if run_dir in p.parents]:
        del _WRITTEN[path]


def _write_netcdf(
    ds: xr.Dataset, path: Path, folders: dict[str, str], *, keep: bool = False
) -> Path:
    """Write the numeric part of ``ds`` to ``path`` atomically; name what stays in pickles.

    ``folders`` maps each output to its element folder, relative to ``path``'s directory.
    ``keep``: a step's dataset, kept in :data:`_WRITTEN` for its run's (which forgets the
    other runs' then: one run's maps at a time).
    """
    pickled = [
        name
        for name in folders
        if name in ds.data_vars and np.dtype(ds[name].dtype).kind not in "biuf"
    ]
    out = ds.drop_vars(pickled)
    for name in pickled:
        if f"{name}_mask" in out and name in folders:
            out[f"{name}_mask"].attrs["values_in"] = f"{folders[name]}/{INDEX_NAME}"
    out.attrs["pickled_outputs"] = " ".join(pickled)
    if pickled:
        out.attrs["pickled_outputs_note"] = (
            "outputs that are not numbers (or too big) stay in pickle files, one per worker "
            "task: <mask>.values_in is the folder's index, whose file_number[n] and slot[n] "
            "give element n (C order) as pickle.loads(pickle.load(open(names[file_number[n]], "
            "'rb'))['pickles'][slot[n]]); file_number -2: the file __<n>__.pickle; -1: a "
            "missing element (see the README's store layout). Loading a pickle runs code: "
            "only open stores you trust."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written on this host's disk, then moved into the store whole: HDF5 makes many small
    # writes and takes locks, which a shared filesystem does badly (or refuses).
    fd, local_name = tempfile.mkstemp(suffix=".nc", prefix="parsl-flows-")
    os.close(fd)
    local = Path(local_name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        direct = [str(n) for n in out.data_vars if out[n].encoding.get(DIRECT)]  # provenance
        texts = [  # the errors
            str(n) for n in out.data_vars if out[n].dtype.kind == "U" and str(n) not in direct
        ]
        with NETCDF_LOCK:
            out.drop_vars(texts + direct).to_netcdf(local, engine="netcdf4", format="NETCDF4")
            _add_texts(local, out, texts, direct)
        if local.stat().st_dev == path.parent.stat().st_dev:
            os.replace(local, path)
        else:
            shutil.copyfile(local, tmp)
            os.replace(tmp, path)
    finally:
        local.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    if keep:
        run_dir = path.parent.parent.parent  # <run>/steps/<step>/dataset.nc
        for other in [p for p in _WRITTEN if run_dir not in p.parents]:
            del _WRITTEN[other]
        stat = path.stat()
        _WRITTEN[path] = ((stat.st_mtime_ns, stat.st_size), out)
    return path


def _characters(values: np.ndarray) -> np.ndarray:
    """Text as fixed-width UTF-8 bytes (``S<width>``).  ASCII (host names, job ids) is
    narrowed from numpy's 4-byte characters at once: ``np.char.encode``, a string at a
    time, costs 25 ms per 100,000 elements."""
    values = np.ascontiguousarray(values)
    width = values.dtype.itemsize // 4
    if values.size:
        wide = values.view(np.uint32).reshape(-1, width)
        if int(wide.max()) < 128:
            return wide.astype(np.uint8).view(f"S{width}").reshape(values.shape)
    return np.char.encode(values, "utf-8")


def _add_texts(path: Path, ds: xr.Dataset, names: list[str], direct: list[str]) -> None:
    """Add the text variables ``names`` of ``ds`` (the steps' errors) to the netCDF file
    ``path``, as xarray writes them, but only their non-empty entries; and the variables
    ``direct`` (a map's provenance), as xarray writes them, at a fraction of its cost.

    netCDF stores each entry of a text variable apart: writing a map's errors, empty
    for all but the failed elements, cost 86 ms of a 110 ms file at 100,000 elements.
    An entry never written reads as "".  They come after the other variables in the
    file (``run.dataset()`` keeps the usual order).

    Through xarray, each variable costs about a millisecond to write, and as much again
    to this reopening (netCDF reads every variable's metadata): the five provenance
    variables of a map doubled the time of its ``dataset.nc``.  So they are added here,
    after the reopening: numbers as they are (floats with a NaN ``_FillValue``, as xarray
    does), hosts and jobs (few distinct values, one per element) as blocks of fixed-width
    UTF-8 characters (``char host(a, b, string2)``, ``_Encoding = "utf-8"``), which xarray
    reads back as text, as it writes them with ``dtype="S1"``.
    """
    if not names and not direct:
        return
    import netCDF4
    from xarray.conventions import encode_dataset_coordinates

    encoded, _ = encode_dataset_coordinates(ds)  # each variable's "coordinates" attribute
    with netCDF4.Dataset(path, "a") as nc:
        for name in direct:
            for dim, length in ds[name].sizes.items():  # none if only these lie on it
                if str(dim) not in nc.dimensions:
                    nc.createDimension(str(dim), length)
            _add_direct(nc, name, np.asarray(ds[name].values), ds[name].dims, encoded[name].attrs)
        for name in names:
            values = np.asarray(ds[name].values, dtype=object)
            dims = tuple(str(d) for d in ds[name].dims)
            variable = nc.createVariable(name, str, dims)  # type: ignore[type-var]
            variable.setncatts(dict(encoded[name].attrs))
            filled = np.flatnonzero(values != "")
            if len(filled) > values.size // 100:  # many failed: all at once is quicker
                variable[...] = values
                continue
            for n in filled.tolist():
                at = np.unravel_index(n, values.shape)
                variable[at] = values[at]


def _add_direct(
    nc: Any, name: str, values: np.ndarray, dims: tuple[Hashable, ...], attrs: dict[str, Any]
) -> None:
    """Variable ``name`` of a netCDF4 file ``nc`` open for writing (see ``_add_texts``)."""
    names = tuple(str(d) for d in dims)
    if values.dtype.kind == "U":
        data = _characters(values)
        width = data.dtype.itemsize
        dim = f"string{width}"  # xarray's name for it
        if dim not in nc.dimensions:
            nc.createDimension(dim, width)
        variable = nc.createVariable(name, "S1", (*names, dim))
        variable[...] = data.view("S1").reshape(*data.shape, width)  # before _Encoding
        attrs = {**attrs, "_Encoding": "utf-8"}
    else:
        fill = np.nan if values.dtype.kind == "f" else None
        variable = nc.createVariable(name, values.dtype, names, fill_value=fill)
        variable[...] = values
    variable.setncatts(attrs)
