"""The file-based store: a directory per run, a file per worker task and output.

Layout (DESIGN.md section 4)::

    <store>/runs/<run-id>/
      run.json                 plan summary, status, timestamps (written atomically)
      plan.pickle              the plan with its environment (for resume and restart)
      inputs/<name>.pickle     one pickle per input
      log.txt                  the run's log
      steps/<NN>-<name>/
        status.json            exit code, counts, submitted elements, timings
        step.pickle            the step's code, as the workers load it
        log.txt
        return_values/<output>/task-<name>.pickle   a task's elements (a map)
        return_values/<output>/index.npz            where each element is (a map)
        return_values/<output>/__0__.pickle         a plain call's output
        exception/...                               the same, for what failed
        numbers/<output>.npz                        a map output's plain numbers, at once

An element that no file holds is masked.  Every write goes to a temporary name in the
same folder and is renamed, so a crash never leaves a half-written file that reads as
valid.  Runs written before task files hold one file per element,
``return_values/<output>/__<n>__.pickle``, and stay readable.  Loading pickles runs
code: only open stores you trust.

Which file holds an element is :mod:`parsl_flows.element_folders`; writing and reading
files is :mod:`parsl_flows.files` (both re-exported here); this module
adds :class:`FileBasedObjectArray`, a map output as users hold it.  No Parsl here: workers
and the driver both use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .element_folders import Locations, load_elements, locate, present_indices
from .files import (
    MISSING_ELEMENT,
    STORE_ENV,
    DamagedFileError,
    default_store,
    drop_damaged,
    dumps,
    element_index,
    element_path,
    file_exists,
    is_intact,
    load_pickle,
    read_exception,
    read_json,
    refresh_folder,
    remove_element,
    write_element,
    write_json,
    write_pickle,
)
from .numbers_file import NUMERIC_KINDS, read_numbers

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "MISSING_ELEMENT",
    "STORE_ENV",
    "DamagedFileError",
    "FileBasedObjectArray",
    "default_store",
    "drop_damaged",
    "dumps",
    "element_index",
    "element_path",
    "file_exists",
    "is_intact",
    "load_elements",
    "load_pickle",
    "present_indices",
    "read_exception",
    "read_json",
    "refresh_folder",
    "remove_element",
    "write_element",
    "write_json",
    "write_pickle",
]


class FileBasedObjectArray:
    """An array whose elements are in a folder of the store; elements no file holds are masked.

    Nothing is loaded until asked for: ``.mask`` reads where the elements are (the
    folder's index, see ``element_folders``), ``arr[i, j]`` loads one element (one task
    file read), ``.to_array()`` loads them all into a numpy masked array, from the map's
    numbers file when it holds them (``numbers_file``).

    Without a complete index (a run whose driver was killed, a run written before task
    files), the folder is listed: on a shared filesystem, files other nodes wrote in the
    last minute may be missing from that listing (masked).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_pickle(element_path(folder, 1), 2.5)
    >>> arr = FileBasedObjectArray(folder, (2,))
    >>> arr.mask.tolist(), arr[1], arr.to_array().tolist()
    ([True, False], 2.5, [None, 2.5])
    """

    def __init__(self, folder: str | os.PathLike[str], shape: Iterable[int]) -> None:
        self.folder = Path(folder)
        self.shape = tuple(int(s) for s in shape)

    def __repr__(self) -> str:
        return f"FileBasedObjectArray(shape={self.shape}, folder='{self.folder}')"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def locations(self) -> Locations:
        """Where each element is (``element_folders.locate``)."""
        return locate(self.folder, self.size)

    @property
    def mask(self) -> np.ndarray:
        """True where no file holds an element (failed, skipped or not yet done)."""
        present = self.present()
        mask = np.ones(self.size, dtype=bool)
        mask[present[present < self.size]] = False
        return mask.reshape(self.shape)

    def present(self) -> np.ndarray:
        """The linear indices of the elements that exist."""
        return self.locations().present()

    def _load(self, n: int) -> Any:
        value = load_elements(self.folder, [n], threads=1)[0]
        return np.ma.masked if value is MISSING_ELEMENT else value

    def load_many(self, flat: Iterable[int]) -> list[Any]:
        """The elements ``flat`` (linear indices), each task file read once; masked where
        none holds an element."""
        values = load_elements(self.folder, flat)
        return [np.ma.masked if v is MISSING_ELEMENT else v for v in values]

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) == len(self.shape) and all(isinstance(k, int | np.integer) for k in key):
            idx = tuple(int(k) + (s if k < 0 else 0) for k, s in zip(key, self.shape, strict=True))
            for k, s in zip(idx, self.shape, strict=True):
                if not 0 <= k < s:
                    raise IndexError(f"index {key} is out of bounds for shape {self.shape}")
            return self._load(int(np.ravel_multi_index(idx, self.shape)))
        # Anything else (slices, partial keys): select the linear indices, load those.
        linear = np.arange(self.size).reshape(self.shape)[key]
        if np.ndim(linear) == 0:
            return self._load(int(linear))
        return self._assemble(np.asarray(linear))

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def _assemble(self, linear: np.ndarray) -> np.ma.MaskedArray:
        flat = linear.ravel()
        values = np.empty(flat.size, dtype=object)
        mask = np.ones(flat.size, dtype=bool)
        known = read_numbers(self.folder, self.size)  # a map's plain numbers, at once
        if known is not None and known.complete:  # every element there is one of them
            wanted = np.flatnonzero(known.position[flat] >= 0)
            where = known.position[flat[wanted]]
            if known.kind in NUMERIC_KINDS and len(wanted):  # no object per element
                array = np.zeros(flat.size, dtype=known.values.dtype)
                array[wanted] = known.values[where]
                mask[wanted] = False
                return np.ma.MaskedArray(array.reshape(linear.shape), mask.reshape(linear.shape))
            elements = known.elements(where)
            values[wanted] = np.fromiter(elements, dtype=object, count=len(elements))
            mask[wanted] = False
            return _as_masked(values.reshape(linear.shape), mask.reshape(linear.shape))
        loc = self.locations()
        wanted = np.flatnonzero(loc.file[flat] != -1)
        loaded = load_elements(self.folder, flat[wanted], locations=loc)
        for pos, value in zip(wanted.tolist(), loaded, strict=True):
            if value is not MISSING_ELEMENT:
                values[pos] = value
                mask[pos] = False
        return _as_masked(values.reshape(linear.shape), mask.reshape(linear.shape))

    def to_array(self) -> np.ma.MaskedArray:
        """All elements as a numpy masked array (numeric dtype when every element is a number)."""
        return self._assemble(np.arange(self.size).reshape(self.shape))

    def fetch_value(self) -> np.ma.MaskedArray:
        """Same as :meth:`to_array`."""
        return self.to_array()

    def to_xarray(self, name: str | None = None) -> xr.Dataset:
        """The elements as an ``xarray.Dataset``: ``<name>`` and ``<name>_mask``.

        A map output in a run also gets its step's dimensions, coordinates, errors and
        attempts (see ``parsl_flows.dataset``).

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "y"
        >>> write_pickle(element_path(folder, 1), 2.5)
        >>> ds = FileBasedObjectArray(folder, (2,)).to_xarray()
        >>> ds.y.values.tolist(), ds.y_mask.values.tolist()
        ([nan, 2.5], [True, False])
        """
        from .dataset import array_to_xarray

        return array_to_xarray(self, name=name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FileBasedObjectArray, (str(self.folder), self.shape))


def _as_masked(values: np.ndarray, mask: np.ndarray) -> np.ma.MaskedArray:
    """A masked array, numeric when every present value is a real or complex number."""
    present = values[~mask]
    if present.size and all(
        isinstance(v, int | float | complex | np.number) and not isinstance(v, bool)
        for v in present
    ):
        numeric = np.asarray(present.tolist())
        out = np.zeros(values.shape, dtype=numeric.dtype)
        out[~mask] = numeric
        return np.ma.MaskedArray(out, mask=mask)
    return np.ma.MaskedArray(values, mask=mask)
