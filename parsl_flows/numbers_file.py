"""A map output's plain numbers in one file, beside its element files.

A map of cheap elements that return plain numbers (floats, ints, ...) leaves 100,000
small files per output; a step that takes the whole output (``c.to_array()``), or a
map over it, read them back one by one: 15 to 20 µs a file, nearly two seconds of one
core for the mean of 100,000 elements.  Yet the driver already holds those numbers:
the workers send them back with their tasks' codes (``engine/numbers_back.py``).

So when a map ends, the driver writes them to ``steps/NN-name/numbers/<output>.npz``
(about 8 bytes an element), and readers take the elements it holds from there, the
others from their files.  The element files stay the store's truth, and two guards keep
the numbers file from contradicting them:

- the engine removes it (:func:`forget_numbers`) before it changes the folder (a resume,
  a restart): readers open it by name, which a shared filesystem answers from the file
  server (close-to-open), so no cached view can bring back a removed numbers file;
- it records the element folder's modification time when it was written, and a folder
  that changed since (an element added, removed or replaced from outside: the store only
  ever renames files into place) makes it stale, so it is ignored.  Filesystems stamp
  times from a clock that ticks every few milliseconds (a second on some), so the file is
  written only once the folder has been still for :data:`SETTLE_SECONDS`.

The folder's time is the weaker guard on a cluster: through one client of a shared
filesystem it may be a minute old (NFS ``acdirmax``), so a change made through another
client may go unseen that long.  So the writer makes its own view current first
(``files.refresh_folder``, itself a change of the folder: its stamp is then the latest),
and a reader goes by the file unless its client shows the folder *later* than that
stamp: a node whose view is older (cached when it wrote its own elements) has seen
nothing newer, and an equal-only test would send every node to the files for a minute
after each map.  Whether the file holds every element there (``complete``) is what the
driver knows from its tasks' codes, not a listing.

Only outputs of which every value had the same type are written, so an element read
from it is what its file holds: a ``float`` stays a ``float``, a ``numpy.float32`` a
``numpy.float32``.

Outputs of other values (small objects: dataclasses, strings, tuples) are read from
their task files (``element_folders``), a file per task rather than per element.

This module is imported on workers: standard library and numpy only.
"""

from __future__ import annotations

import io
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np

from .files import refresh_folder, write_bytes

__all__ = [
    "KINDS",
    "NUMERIC_KINDS",
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

#: The kinds whose arrays are what ``FileBasedObjectArray.to_array()`` gives for them (a
#: numeric dtype), without making an object per element: not bools, kept as objects.
NUMERIC_KINDS = frozenset(KINDS) - {"builtins.bool", "numpy.bool"}


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


def _positions(indices: np.ndarray, size: int) -> np.ndarray:
    """For each linear index of an array of ``size``, its place in ``indices``; -1 if none."""
    position = np.full(size, -1, dtype=np.int64)
    inside = indices < size
    position[indices[inside]] = np.flatnonzero(inside)
    return position


class KnownNumbers:
    """The elements of one folder that a numbers file holds: ``indices`` and ``values``."""

    def __init__(
        self, indices: np.ndarray, values: np.ndarray, kind: str, size: int, complete: bool = False
    ) -> None:
        self.indices, self.values, self.kind = indices, values, kind
        self.position = _positions(indices, size)
        #: Every element that has a file in the folder is one of ``indices``.
        self.complete = complete

    def elements(self, positions: np.ndarray) -> list[Any]:
        """The elements at ``positions`` of ``values``, as their files hold them."""
        return KINDS[self.kind](self.values[positions])


def write_numbers(
    folder: str | os.PathLike[str],
    indices: np.ndarray,
    values: np.ndarray,
    kind: str,
    *,
    complete: bool = False,
) -> bool:
    """Keep ``values`` (elements ``indices`` of ``folder``, all of type ``kind``) in the
    folder's numbers file.  Call it once the folder's elements are all written.

    ``complete``: the caller knows that ``indices`` are every element with a file in the
    folder (from its tasks' codes: a listing may be stale on a shared filesystem).  The
    file then says so, and readers take the elements present from it instead of listing
    the folder (a second for a million files).

    False, and nothing written, if the folder keeps changing (something still writes
    into it): readers then take the element files.
    """
    if kind not in KINDS:
        raise ValueError(f"a numbers file holds only {sorted(KINDS)}, not {kind!r}")
    stamp = _settled_mtime(folder)
    if stamp is None:
        return False
    _save_npz(
        numbers_path(folder),
        indices=np.asarray(indices, dtype=np.int64),
        values=np.asarray(values),
        kind=np.array(kind),
        folder_mtime_ns=np.array(stamp, dtype=np.int64),
        complete=np.array(bool(complete)),
    )
    return True


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``arrays`` into ``path``, whole or not at all."""
    buffer = io.BytesIO()
    np.savez(buffer, **cast(dict[str, Any], arrays))
    write_bytes(path, buffer.getvalue())


def _settled_mtime(folder: str | os.PathLike[str]) -> int | None:
    """The folder's modification time once it has not changed for SETTLE_SECONDS.

    Made current first: other nodes wrote the folder, and this client's cached time may
    be a minute old.  The stamp comes from the file server's clock, which may be ahead of
    this host's: no wait is longer than SETTLE_SECONDS for that.
    """
    refresh_folder(folder)
    stamp = os.stat(folder).st_mtime_ns
    for _ in range(_SETTLE_ROUNDS):
        age = (time.time_ns() - stamp) / 1e9
        if age < SETTLE_SECONDS:
            time.sleep(min(SETTLE_SECONDS - age, SETTLE_SECONDS))
        again = os.stat(folder).st_mtime_ns
        if again == stamp:
            return stamp
        stamp = again
    return None


def forget_numbers(folder: str | os.PathLike[str]) -> None:
    """Remove the numbers kept of ``folder``'s elements: they are about to change."""
    numbers_path(folder).unlink(missing_ok=True)


# The last few numbers files read, by (file, its inode, size and mtime, its folder's mtime):
# a worker runs many tasks over one input, and FileBasedObjectArray slices read it once
# per slice.  The file's own are taken from the file opened (close-to-open: current on a
# shared filesystem), so a numbers file written anew is never served from here.
_READ: dict[tuple[str, int, int, int, int, int], KnownNumbers] = {}
_READ_LIMIT = 4
_READ_LOCK = threading.Lock()


def read_numbers(folder: str | os.PathLike[str], size: int) -> KnownNumbers | None:
    """The numbers kept of ``folder``'s elements (an array of ``size``); None when there
    are none, or the folder changed since, or the file is unreadable."""
    return _read_kept(folder, size, numbers_path(folder))


_DAMAGED = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _read_kept(folder: str | os.PathLike[str], size: int, path: Path) -> KnownNumbers | None:
    try:
        with open(path, "rb") as f:  # by name: a removed numbers file is gone for any client
            file_stat = os.fstat(f.fileno())
            folder_mtime = os.stat(folder).st_mtime_ns
            key = (
                str(path),
                file_stat.st_ino,
                file_stat.st_size,
                file_stat.st_mtime_ns,
                folder_mtime,
                size,
            )
            with _READ_LOCK:
                if key in _READ:
                    return _READ[key]
            known = _load_kept(folder, size, f, folder_mtime)
    except OSError:
        return None
    if known is not None:
        with _READ_LOCK:
            if len(_READ) >= _READ_LIMIT:
                _READ.pop(next(iter(_READ)))
            _READ[key] = known
    return known


def _load_kept(
    folder: str | os.PathLike[str], size: int, f: Any, folder_mtime: int
) -> KnownNumbers | None:
    try:
        with np.load(f, allow_pickle=False) as data:
            if folder_mtime > int(data["folder_mtime_ns"]):
                return None  # the folder changed since: its files are the truth
            if "names" in data:  # a parts index of an earlier version: read the files
                return None
            complete = bool(data["complete"]) if "complete" in data else False
            known = KnownNumbers(data["indices"], data["values"], str(data["kind"]), size, complete)
            if known.kind not in KINDS or len(known.indices) != len(known.values):
                return None
    except _DAMAGED:  # the element files are still there
        return None
    return known
