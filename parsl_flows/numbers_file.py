"""A map output's plain numbers in one file, beside its element files.

A map of cheap elements that return plain numbers (floats, ints, ...) leaves 100,000
small files per output; a step that takes the whole output (``c.to_array()``), or a
map over it, read them back one by one: 15 to 20 µs a file, nearly two seconds of one
core for the mean of 100,000 elements.  Yet the driver already holds those numbers:
the workers send them back with their tasks' codes (``engine/numbers_back.py``).

So when a map ends, the driver writes them to ``steps/NN-name/numbers/<output>.npz``
(about 8 bytes an element), and readers take the elements it holds from there, the
others from their files.  The element files stay the store's truth: the numbers file
records the element folder's modification time when it was written, and a folder that
changed since (an element added, removed or replaced: the store only ever renames files
into place) makes it stale, so it is ignored.  Filesystems stamp times from a clock that
ticks every few milliseconds, so the file is written only once the folder has been still
for :data:`SETTLE_SECONDS`: any later change then bears a later time.

Only outputs of which every value had the same type are written, so an element read
from it is what its file holds: a ``float`` stays a ``float``, a ``numpy.float32`` a
``numpy.float32``.

This module is imported on workers: standard library and numpy only.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "KINDS",
    "KnownNumbers",
    "forget_numbers",
    "kind_of",
    "numbers_path",
    "read_numbers",
    "write_numbers",
]


def _python(values: np.ndarray) -> list[Any]:
    return values.tolist()  # float64 -> float, int64 -> int, bool_ -> bool, ...


def _numpy(values: np.ndarray) -> list[Any]:
    return list(values)  # numpy scalars of the array's dtype


#: The element types a numbers file may hold (``module.name``), and how an array of them
#: turns back into the elements themselves.
KINDS = {
    "builtins.float": _python,
    "builtins.int": _python,
    "builtins.bool": _python,
    "builtins.complex": _python,
    "numpy.float64": _numpy,
    "numpy.float32": _numpy,
    "numpy.int64": _numpy,
    "numpy.int32": _numpy,
    "numpy.bool": _numpy,
}


#: How long an element folder must have been left alone before its numbers are written.
SETTLE_SECONDS = 0.05
_SETTLE_ROUNDS = 20


def kind_of(value: Any) -> str:
    """The kind name of ``value``'s type (a key of :data:`KINDS` for the types it holds)."""
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


def numbers_path(folder: str | os.PathLike[str]) -> Path:
    """Where the numbers of the element folder ``.../return_values/<output>`` are kept."""
    folder = Path(folder)
    return folder.parent.parent / "numbers" / f"{folder.name}.npz"


class KnownNumbers:
    """The elements of one folder that a numbers file holds: ``indices`` and ``values``."""

    def __init__(self, indices: np.ndarray, values: np.ndarray, kind: str, size: int) -> None:
        self.indices, self.values, self.kind = indices, values, kind
        #: For each linear index of the array, its position in ``values``; -1 if unknown.
        self.position = np.full(size, -1, dtype=np.int64)
        inside = indices < size
        self.position[indices[inside]] = np.flatnonzero(inside)

    def elements(self, positions: np.ndarray) -> list[Any]:
        """The elements at ``positions`` of ``values``, as their files hold them."""
        return KINDS[self.kind](self.values[positions])


def write_numbers(
    folder: str | os.PathLike[str], indices: np.ndarray, values: np.ndarray, kind: str
) -> bool:
    """Keep ``values`` (elements ``indices`` of ``folder``, all of type ``kind``) in the
    folder's numbers file.  Call it once the folder's elements are all written.

    False, and nothing written, if the folder keeps changing (something still writes
    into it): readers then take the element files.
    """
    if kind not in KINDS:
        raise ValueError(f"a numbers file holds only {sorted(KINDS)}, not {kind!r}")
    path = numbers_path(folder)
    stamp = _settled_mtime(folder)
    if stamp is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.npz")
    try:
        np.savez(
            tmp,
            indices=np.asarray(indices, dtype=np.int64),
            values=np.asarray(values),
            kind=np.array(kind),
            folder_mtime_ns=np.array(stamp, dtype=np.int64),
        )
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


def _settled_mtime(folder: str | os.PathLike[str]) -> int | None:
    """The folder's modification time once it has not changed for SETTLE_SECONDS."""
    stamp = os.stat(folder).st_mtime_ns
    for _ in range(_SETTLE_ROUNDS):
        age = (time.time_ns() - stamp) / 1e9
        if age < SETTLE_SECONDS:
            time.sleep(SETTLE_SECONDS - age)
        again = os.stat(folder).st_mtime_ns
        if again == stamp:
            return stamp
        stamp = again
    return None


def forget_numbers(folder: str | os.PathLike[str]) -> None:
    """Remove the numbers file of ``folder``: its elements are about to change."""
    numbers_path(folder).unlink(missing_ok=True)


# The last few numbers files read, by (file, its mtime, its folder's mtime): a worker runs
# many tasks over one input, and FileBasedObjectArray slices read it once per slice.
_READ: dict[tuple[str, int, int, int], KnownNumbers] = {}
_READ_LIMIT = 4
_READ_LOCK = threading.Lock()


def read_numbers(folder: str | os.PathLike[str], size: int) -> KnownNumbers | None:
    """The numbers kept for ``folder`` (an array of ``size`` elements); None when there
    are none, or the folder changed since they were written, or the file is unreadable."""
    path = numbers_path(folder)
    try:
        file_mtime = os.stat(path).st_mtime_ns
        folder_mtime = os.stat(folder).st_mtime_ns
    except OSError:
        return None
    key = (str(path), file_mtime, folder_mtime, size)
    with _READ_LOCK:
        if key in _READ:
            return _READ[key]
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["folder_mtime_ns"]) != folder_mtime:
                return None  # the folder changed: its files are the truth
            kind = str(data["kind"])
            known = KnownNumbers(data["indices"], data["values"], kind, size)
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
    ):  # damaged: the files are still there
        return None
    if known.kind not in KINDS or len(known.indices) != len(known.values):
        return None
    with _READ_LOCK:
        if len(_READ) >= _READ_LIMIT:
            _READ.pop(next(iter(_READ)))
        _READ[key] = known
    return known
