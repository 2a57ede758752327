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
from collections.abc import Hashable, Iterator, Sequence
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
    try:  # numbers as they were given, whatever units a step gave them (no times)
        with (
            NETCDF_LOCK,
            xr.open_dataset(
                path, engine="netcdf4", decode_times=False, decode_timedelta=False
            ) as ds,
        ):
            return _values(ds, rec, path)
    except Exception:  # a damaged or foreign file: the element files are the truth
        logger.debug("not using %s", path, exc_info=True)
        return {}, None


def _values(
    ds: xr.Dataset, rec: StepStatus, path: Path | None = None
) -> tuple[dict[str, _Output], np.ndarray | None]:
    """What ``stored_values`` takes of ``ds``, the dataset in memory or the file ``path``."""
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
    if error not in ds.data_vars:
        return outputs, None
    texts = _read_texts(path, error) if path is not None else None
    return outputs, ds[error].values if texts is None else texts


def _read_texts(path: Path, name: str) -> np.ndarray | None:
    """Text variable ``name`` of the netCDF file ``path``, written as characters: an
    object array, "" where the entry is empty; None for netCDF strings (files written
    before parsl_flows wrote characters).

    Read a block at a time, only the entries that are not empty decoded: xarray makes
    two arrays as wide as the longest text, over every element (two gigabytes for a
    million elements if one error is a thousand bytes long).  Caller holds NETCDF_LOCK.
    """
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        variable = nc.variables[name]
        if variable.dtype != np.dtype("S1"):
            return None
        variable.set_auto_chartostring(False)
        variable.set_auto_mask(False)  # no fill value to look for: NUL is an empty entry
        *shape, width = variable.shape
        texts = np.full(shape, "", dtype=object)
        for cell in _cells(shape, _text_chunks(shape, width, _TEXT_BLOCK_BYTES)):
            block = np.asarray(variable[cell]).view(np.uint8).reshape(-1, width)
            found = np.flatnonzero(block[:, 0])  # no text begins with NUL
            if not found.size:
                continue
            at = np.unravel_index(found, tuple(c.stop - c.start for c in cell))
            at = tuple(i + c.start for i, c in zip(at, cell, strict=True))
            for k, *where in zip(found.tolist(), *(i.tolist() for i in at), strict=True):
                texts[tuple(where)] = block[k].tobytes().rstrip(b"\0").decode("utf-8")
        return texts


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
        texts = [  # the errors (the only text left once object-valued outputs are out)
            str(n) for n in out.data_vars if out[n].dtype.kind in "UO" and str(n) not in direct
        ]
        # Text coordinates as characters too: netCDF's variable-length strings are not
        # in CF's classic model, which many tools (and the CF checker) hold to.
        characters = {
            str(n): {"dtype": "S1"}
            for n in out.coords
            if out[n].dtype.kind in "UO" and str(n) not in texts
        }
        with NETCDF_LOCK:
            out.drop_vars(texts + direct).to_netcdf(
                local, engine="netcdf4", format="NETCDF4", encoding=characters
            )
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
    ``path``, writing only the entries that are not empty; and the variables ``direct``
    (a map's provenance), as xarray writes them, at a fraction of its cost.

    Text is written as xarray writes it with ``dtype="S1"``: fixed-width UTF-8 characters
    with a string-length dimension (``char host(a, b, string2)``, ``_Encoding = "utf-8"``),
    which xarray reads back as text, and the CF conventions and their checker accept
    (netCDF's variable-length strings they do not).  An error variable is as wide as its
    longest text, and most of its entries are empty: it is stored compressed, and only
    the chunks that hold a text are written (an entry never written reads as "").
    They come after the other variables in the file (``run.dataset()`` keeps the usual
    order).

    Through xarray, each variable costs about a millisecond to write, and as much again
    to this reopening (netCDF reads every variable's metadata): the five provenance
    variables of a map doubled the time of its ``dataset.nc``.  So they are added here,
    after the reopening: numbers as they are (floats with a NaN ``_FillValue``, as xarray
    does), hosts and jobs (few distinct values, one per element) as characters.
    """
    if not names and not direct:
        return
    import netCDF4
    from xarray.conventions import encode_dataset_coordinates

    encoded, _ = encode_dataset_coordinates(ds)  # each variable's "coordinates" attribute
    with netCDF4.Dataset(path, "a") as nc:
        for name in direct + names:
            for dim, length in ds[name].sizes.items():  # none if only these lie on it
                if str(dim) not in nc.dimensions:
                    nc.createDimension(str(dim), length)
        for name in direct:
            _add_direct(nc, name, np.asarray(ds[name].values), ds[name].dims, encoded[name].attrs)
        for name in names:
            _add_errors(nc, name, np.asarray(ds[name].values), ds[name].dims, encoded[name].attrs)


#: Errors are stored compressed in chunks of about this many bytes, and written a chunk
#: at a time: only the chunks that hold a text are written at all (netCDF's own chunks,
#: over all rows, were each unpacked and packed again for every block written) ...
_TEXT_CHUNK_BYTES = 1 << 20
#: ... and read in blocks of about this many.
_TEXT_BLOCK_BYTES = 8 << 20


def _text_chunks(shape: Sequence[int], width: int, size: int) -> tuple[int, ...]:
    """Blocks of a text variable of ``shape`` and ``width`` characters of about ``size``
    bytes (or one entry): rows of the first axis, else parts of rows, and so on."""
    chunks = [*shape, width]
    for axis in range(len(shape)):
        rest = int(np.prod(chunks[axis + 1 :], dtype=np.int64))
        chunks[axis] = max(1, min(shape[axis], size // rest))
        if rest <= size:
            break
    return tuple(chunks[:-1])


def _cells(shape: Sequence[int], block: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """The blocks of shape ``block`` that tile an array of ``shape``, in C order."""
    counts = [-(-n // b) for n, b in zip(shape, block, strict=True)]
    for cell in np.ndindex(*counts):
        yield tuple(
            slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(cell, block, shape, strict=True)
        )


def _add_errors(
    nc: Any, name: str, values: np.ndarray, dims: tuple[Hashable, ...], attrs: dict[str, Any]
) -> None:
    """Text variable ``name`` of a netCDF4 file ``nc`` open for writing, as characters,
    only its non-empty entries written (see ``_add_texts``)."""
    flat = values.reshape(-1)
    filled = np.flatnonzero(flat != "")
    data = [str(flat[n]).encode("utf-8") for n in filled.tolist()]
    width = max((len(d) for d in data), default=1)
    dim = f"string{width}"  # xarray's name for it
    if dim not in nc.dimensions:
        nc.createDimension(dim, width)
    names = (*(str(d) for d in dims), dim)
    shape = values.shape
    chunks = None if 0 in shape else (*_text_chunks(shape, width, _TEXT_CHUNK_BYTES), width)
    variable = nc.createVariable(name, "S1", names, zlib=True, complevel=1, chunksizes=chunks)
    variable.setncatts({**attrs, "_Encoding": "utf-8"})
    variable.set_auto_chartostring(False)  # blocks of bytes, as they are
    if chunks is None or not filled.size:
        return
    chunk = np.asarray(chunks[:-1])  # a chunk never written costs nothing, to write or read
    padded = np.array(data, dtype=f"S{width}").view(np.uint8).reshape(-1, width)
    at = np.stack(np.unravel_index(filled, shape), axis=1)  # each text's index
    by_chunk: dict[tuple[int, ...], list[int]] = {}
    for k, cell in enumerate(map(tuple, (at // chunk).tolist())):
        by_chunk.setdefault(cell, []).append(k)
    for cell, texts in by_chunk.items():
        low = np.asarray(cell) * chunk
        high = np.minimum(low + chunk, shape)
        block = np.zeros((*(high - low).tolist(), width), dtype=np.uint8)
        block[tuple((at[texts] - low).T)] = padded[texts]
        variable[tuple(map(slice, low.tolist(), high.tolist()))] = block.view("S1")


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
