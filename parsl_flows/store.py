"""The file-based store: a directory per run, a file per map element.

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
        return_values/<output>/__<n>__.pickle
        exception/__<n>__.pickle

A missing element file means the element is masked.  Every write goes to a temporary
name in the same folder and is renamed, so a crash never leaves a half-written file that
reads as valid.  Loading pickles runs code: only open stores you trust.

Writing and reading the files is :mod:`parsl_flows.files` (re-exported here); this module
adds :class:`FileBasedObjectArray`, a map output as users hold it.  No Parsl here: workers
and the driver both use it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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
    load_elements,
    load_pickle,
    present_indices,
    read_exception,
    read_json,
    refresh_folder,
    remove_element,
    write_element,
    write_json,
    write_pickle,
)
from .numbers_file import NUMERIC_KINDS, KnownNumbers, PartUnreadable, read_numbers

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
    """An array whose elements are pickle files in a folder; missing files are masked.

    Nothing is loaded until asked for: ``.mask`` lists the folder once, ``arr[i, j]``
    loads one element, ``.to_array()`` loads them all into a numpy masked array.

    The listing is this client's: on a shared filesystem, files other nodes wrote in the
    last minute may be missing from it (masked).  So the driver makes its own client's
    view current when a map ends, steps downstream read the folder only then, and
    ``.to_array()`` skips the listing when the map's numbers file says it holds every
    element (``numbers_file``).

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

    @property
    def mask(self) -> np.ndarray:
        """True where an element has no file (failed, skipped or not yet done)."""
        mask = np.ones(self.size, dtype=bool)
        mask[present_indices(self.folder)] = False
        return mask.reshape(self.shape)

    def present(self) -> np.ndarray:
        """The linear indices of the elements that exist."""
        return present_indices(self.folder)

    def _load(self, n: int) -> Any:
        value = load_elements(self.folder, [n], threads=1)[0]
        return np.ma.masked if value is MISSING_ELEMENT else value

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
        known = read_numbers(self.folder, self.size)  # what the map kept of its elements
        if isinstance(known, KnownNumbers) and known.complete:  # no need to list the folder
            wanted = np.flatnonzero(known.position[flat] >= 0)
        else:
            wanted = np.flatnonzero(np.isin(flat, present_indices(self.folder)))
        values = np.empty(flat.size, dtype=object)
        mask = np.ones(flat.size, dtype=bool)
        if known is not None:
            where = known.position[flat[wanted]]
            held = where >= 0
            if (
                isinstance(known, KnownNumbers)
                and known.kind in NUMERIC_KINDS
                and len(wanted)
                and held.all()
            ):  # every element there is one of the file's numbers: no object per element
                array = np.zeros(flat.size, dtype=known.values.dtype)
                array[wanted] = known.values[where]
                mask[wanted] = False
                return np.ma.MaskedArray(array.reshape(linear.shape), mask.reshape(linear.shape))
            with contextlib.suppress(PartUnreadable):  # then every file is read
                elements = known.elements(where[held])
                values[wanted[held]] = np.fromiter(elements, dtype=object, count=len(elements))
                mask[wanted[held]] = False
                wanted = wanted[~held]
        loaded = load_elements(self.folder, flat[wanted])  # in parallel: many small files
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
