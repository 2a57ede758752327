"""Where the elements of a map output are: task files, an index, and elements' own files.

Elements are the unit of result; files are the unit of storage.  A folder of elements
(``steps/NN-name/return_values/<output>``, or ``exception`` for what failed) holds:

``task-<name>.pickle``
    the elements one worker task computed, written whole by the worker at the task's end
    (a temporary name, then renamed): a pickle of ``{"indices": <numpy int64 array>,
    "pickles": [<bytes>, ...]}``, where ``pickles[k]`` is the pickle of element
    ``indices[k]``.  An output's task files and the task's ``exception`` file share the name.
``index.npz``
    the driver's record of where each element is, written when a step's attempt ends:
    ``names`` (the task files, by number), ``file_number`` and ``slot`` (per element, C order:
    the number of its file, or -1 for none, -2 for its own file; its place in that
    file), ``complete`` (the folder holds nothing else that counts; readers then need no
    listing) and ``size``.
``reused-<run>-<name>.pickle``
    a task file of an earlier run, hard-linked by a restart that reuses some of its
    elements: its ``indices`` are the earlier run's, so only the index says which of its
    elements count, and where.
``__<n>__.pickle``
    element ``n``'s own file: the layout of runs written before task files (one file per
    element), and of plain calls (element 0).

Element ``n`` is read without this library as::

    index = numpy.load("index.npz")
    k, slot = index["file_number"][n], index["slot"][n]
    with open(str(index["names"][k]), "rb") as f:     # k == -2: open __<n>__.pickle
        value = pickle.loads(pickle.load(f)["pickles"][slot])

(``cloudpickle`` may be needed for values that are lambdas or classes of a script.)

Without a complete index (a driver killed before writing it, an earlier run), the folder
is listed once: task files the index does not name are opened for their ``indices``,
and elements' own files count as they are.  A task file listed later wins over an
earlier one for the same element (newer first); in an ``exception`` folder, an element
that has a value is not failed (it succeeded in a later attempt).

No Parsl, no xarray: workers and the driver both use this module.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

from .files import (
    _DAMAGE,
    MISSING_ELEMENT,
    DamagedFileError,
    _read_batch,
    element_index,
    refresh_folder,
    write_bytes,
)

__all__ = [
    "INDEX_NAME",
    "NONE",
    "OWN",
    "Locations",
    "load_elements",
    "locate",
    "present_indices",
    "read_task_file",
    "save_index",
    "task_file_name",
    "write_task_file",
]

INDEX_NAME = "index.npz"
#: ``Locations.file`` of an element no file holds, and of one in its own file.
NONE, OWN = -1, -2
_TASK = re.compile(r"task-[^/]+\.pickle")
_ELEMENT_LINE = re.compile(r"^__(\d+)__\.pickle$", re.MULTILINE)


def task_file_name(name: str) -> str:
    """The file of task ``name`` in each of its step's element folders."""
    return f"task-{name}.pickle"


def write_task_file(folder: str, name: str, indices: list[int], pickles: list[bytes]) -> str:
    """Write the ``pickles`` of elements ``indices`` as task ``name``'s file in ``folder``
    (which exists), whole or not at all; the file's name."""
    file = task_file_name(name)
    data = pickle.dumps(
        {"indices": np.asarray(indices, dtype=np.int64), "pickles": pickles},
        pickle.HIGHEST_PROTOCOL,
    )
    try:
        write_bytes(Path(folder) / file, data, make_folder=False)
    except FileNotFoundError:  # the task's first file there
        write_bytes(Path(folder) / file, data)
    return file


def read_task_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, list[bytes]]:
    """A task file's ``(indices, pickles)``; a damaged one raises :class:`DamagedFileError`."""
    with open(path, "rb") as f:
        try:
            held = pickle.load(f)
            indices, pickles = np.asarray(held["indices"], dtype=np.int64), held["pickles"]
        except (*_DAMAGE, ValueError, KeyError, TypeError, IndexError) as e:
            raise DamagedFileError(Path(path), f"{type(e).__name__}: {e}") from e
    if len(indices) != len(pickles):
        raise DamagedFileError(Path(path), "its indices and values differ in number")
    return indices, pickles


class Locations:
    """Where each element of one folder is (see module): per element, a file and a slot."""

    def __init__(
        self,
        folder: Path,
        size: int,
        names: list[str] | None = None,
        file: np.ndarray | None = None,
        slot: np.ndarray | None = None,
        complete: bool = False,
    ) -> None:
        self.folder, self.size = folder, int(size)
        self.names: list[str] = list(names or [])
        self._number = {n: k for k, n in enumerate(self.names)}
        self.file = np.full(self.size, NONE, np.int32) if file is None else file
        self.slot = np.zeros(self.size, np.int32) if slot is None else slot
        #: Nothing in the folder counts but what these say: no listing needed.
        self.complete = complete

    def copy(self) -> Locations:
        return Locations(
            self.folder, self.size, self.names, self.file.copy(), self.slot.copy(), self.complete
        )

    def grow(self, size: int) -> None:
        if size > self.size:
            extra = size - self.size
            self.file = np.concatenate([self.file, np.full(extra, NONE, np.int32)])
            self.slot = np.concatenate([self.slot, np.zeros(extra, np.int32)])
            self.size = size

    def number(self, file: str) -> int:
        """The number of ``file`` among the names, added if new."""
        k = self._number.get(file)
        if k is None:
            k = self._number[file] = len(self.names)
            self.names.append(file)
        return k

    def put(self, file: str, indices: np.ndarray, slots: np.ndarray | None = None) -> None:
        """Elements ``indices`` are in ``file``, at ``slots`` (default: in order)."""
        indices = np.asarray(indices, dtype=np.int64)
        if not len(indices):
            return
        self.grow(int(indices.max()) + 1)
        self.file[indices] = self.number(file)
        self.slot[indices] = np.arange(len(indices)) if slots is None else slots

    def put_own(self, indices: np.ndarray) -> None:
        """Elements ``indices`` are in their own files."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices):
            self.grow(int(indices.max()) + 1)
            self.file[indices] = OWN

    def drop(self, indices: np.ndarray) -> None:
        """Elements ``indices`` are in no file (any more)."""
        indices = np.asarray(indices, dtype=np.int64)
        self.file[indices[indices < self.size]] = NONE

    def present(self) -> np.ndarray:
        """The elements some file holds, in order."""
        return np.flatnonzero(self.file != NONE).astype(np.int64)

    def held_by(self, file: str) -> np.ndarray:
        """The elements the index places in ``file``."""
        k = self._number.get(file)
        return np.empty(0, np.int64) if k is None else np.flatnonzero(self.file == k)

    def files_of(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The files holding ``indices`` (own files left out), each with its elements."""
        ks = self.file[np.asarray(indices, dtype=np.int64)]
        out: dict[str, np.ndarray] = {}
        for k in np.unique(ks[ks >= 0]).tolist():
            out[self.names[k]] = np.asarray(indices)[ks == k]
        return out


def save_index(loc: Locations) -> None:
    """Write ``loc`` as its folder's ``index.npz``, whole (the driver's, see module)."""
    used = np.unique(loc.file[loc.file >= 0])
    renumber = np.full(len(loc.names) + 1, NONE, np.int32)
    renumber[used] = np.arange(len(used), dtype=np.int32)
    file = np.where(loc.file >= 0, renumber[np.maximum(loc.file, 0)], loc.file).astype(np.int32)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        names=np.array([loc.names[k] for k in used.tolist()], dtype=str),
        file_number=file,
        slot=np.where(loc.file >= 0, loc.slot, 0).astype(np.int32),
        complete=np.array(loc.complete),
        size=np.array(loc.size, dtype=np.int64),
    )
    write_bytes(loc.folder / INDEX_NAME, buffer.getvalue())


# The last few indexes read, by (folder, the index file's inode, size and mtime): readers
# ask for one folder's locations many times (a worker's tasks, a reader's slices).  The
# stat is of the file opened (close-to-open: current on a shared filesystem).
_READ: dict[tuple[str, int, int, int], Locations] = {}
_READ_LIMIT = 8
_READ_LOCK = threading.Lock()


def _load_index(folder: Path) -> Locations | None:
    try:
        with open(folder / INDEX_NAME, "rb") as f:
            st = os.fstat(f.fileno())
            key = (str(folder), st.st_ino, st.st_size, st.st_mtime_ns)
            with _READ_LOCK:
                if key in _READ:
                    return _READ[key]
            with np.load(f, allow_pickle=False) as data:
                names = [str(n) for n in data["names"]]
                file, slot = data["file_number"].astype(np.int32), data["slot"].astype(np.int32)
                size, complete = int(data["size"]), bool(data["complete"])
                loc = Locations(folder, size, names, file, slot, complete)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError) as e:  # damaged: the listing will do
        import logging

        logging.getLogger(__name__).warning("ignoring the damaged index %s: %s", folder, e)
        return None
    if (
        len(loc.file) != loc.size
        or len(loc.slot) != loc.size
        or loc.file.max(initial=-1) >= len(loc.names)
    ):
        return None
    with _READ_LOCK:
        if len(_READ) >= _READ_LIMIT:
            _READ.pop(next(iter(_READ)))
        _READ[key] = loc
    return loc


def locate(
    folder: str | os.PathLike[str], size: int | None = None, fresh: bool = False
) -> Locations:
    """Where the elements of ``folder`` are: its index when complete, else the index and
    one listing of the folder.  ``size``: the array's number of elements, if known.

    ``fresh``: what the folder holds now, whatever the index says (a resume: tasks of the
    stopped driver may have written files after its index), from a listing made current
    first (``files.refresh_folder``)."""
    folder = Path(folder)
    index = _load_index(folder)
    if index is not None and index.complete and not fresh:
        loc = index.copy()
        loc.grow(size or 0)
        return loc
    loc = index.copy() if index is not None else Locations(folder, size or 0)
    loc.grow(size or 0)
    loc.complete = False
    if fresh:
        refresh_folder(folder)
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return loc
    listing = "\n".join(names)
    if listing.count("\n") == len(names) - 1:  # one line a name: one regex pass in C
        own = np.fromiter(map(int, _ELEMENT_LINE.findall(listing)), dtype=np.int64)
    else:
        own = np.array([i for n in names if (i := element_index(Path(n))) is not None], np.int64)
    if len(own):
        unplaced = own[own >= loc.size]
        loc.grow(int(own.max()) + 1)
        free = own[loc.file[own] == NONE]
        loc.put_own(np.union1d(free, unplaced))
    tasks = [n for n in names if _TASK.fullmatch(n) and n not in loc._number]
    if tasks:
        dated = []
        for name in tasks:
            try:
                dated.append((os.stat(folder / name).st_mtime_ns, name))
            except FileNotFoundError:
                continue
        for _, name in sorted(dated):  # a later file wins
            try:
                indices, _ = read_task_file(folder / name)
            except (OSError, DamagedFileError):
                continue  # unreadable: its elements are computed again
            loc.put(name, indices)
    if folder.name == "exception":  # an element with a value succeeded later
        values = folder.parent / "return_values"
        try:
            outs = sorted(os.listdir(values))
        except FileNotFoundError:
            outs = []
        if outs:
            done = locate(values / outs[0], loc.size)
            loc.drop(done.present())
    return loc


def present_indices(folder: str | os.PathLike[str], fresh: bool = False) -> np.ndarray:
    """The linear indices of the elements ``folder`` holds (see :func:`locate`).

    Without a complete index, the listing is this client's: on a shared filesystem it
    may miss files other nodes wrote in the last minute.  ``fresh`` first makes it
    current (``files.refresh_folder``); readers that only look leave it False.
    """
    return locate(folder, fresh=fresh).present()


# -- reading many elements ------------------------------------------------------------------

_BATCH = 512  # own files per thread task: few futures, yet every thread kept busy


def _default_threads() -> int:
    # Reading many small files waits mostly on the filesystem (on a cluster's shared one,
    # a lot); a few threads per core hide that latency without fighting over the GIL.
    return min(16, 2 * (os.cpu_count() or 1))


def _read_from_task(folder: Path, file: str, slots: list[int], elements: np.ndarray) -> list[Any]:
    path = folder / file
    try:
        _, pickles = read_task_file(path)
    except FileNotFoundError:
        return [MISSING_ELEMENT] * len(slots)
    except DamagedFileError as e:
        raise DamagedFileError(path, e.reason, elements) from e
    out = []
    for j in slots:
        try:
            out.append(cloudpickle.loads(pickles[j]))
        except IndexError:
            why = "it holds fewer elements than its index says"
            raise DamagedFileError(path, why, elements) from None
        except _DAMAGE as e:
            raise DamagedFileError(path, f"{type(e).__name__}: {e}", elements) from e
    return out


def load_elements(
    folder: str | os.PathLike[str],
    indices: Iterable[int],
    threads: int | None = None,
    locations: Locations | None = None,
) -> list[Any]:
    """The elements ``indices`` of a folder, in order, from wherever ``locations`` (by
    default, :func:`locate`) says; read by ``threads`` threads.

    An element no file holds is :data:`MISSING_ELEMENT`; callers mask it.

    >>> import tempfile
    >>> from parsl_flows.files import element_path, write_pickle
    >>> folder = Path(tempfile.mkdtemp())
    >>> for n in range(3):
    ...     write_pickle(element_path(folder, n), n * 10)
    >>> load_elements(folder, [2, 0])
    [20, 0]
    """
    folder = Path(folder)
    idx = np.fromiter((int(i) for i in indices), dtype=np.int64)
    loc = locations if locations is not None else locate(folder)
    loc.grow(int(idx.max()) + 1 if len(idx) else 0)
    out: list[Any] = [MISSING_ELEMENT] * len(idx)
    where = loc.file[idx]
    jobs: list[tuple[np.ndarray, Any]] = []
    own = np.flatnonzero(where == OWN)
    where_str = os.fspath(folder)
    for k in range(0, len(own), _BATCH):
        positions = own[k : k + _BATCH]
        jobs.append((positions, lambda p=positions: _read_batch(where_str, idx[p].tolist())))
    for k in np.unique(where[where >= 0]).tolist():
        positions = np.flatnonzero(where == k)
        elements, file = idx[positions], loc.names[k]
        slots = loc.slot[elements].tolist()
        jobs.append(
            (positions, lambda f=file, s=slots, e=elements: _read_from_task(folder, f, s, e))
        )
    threads = _default_threads() if threads is None else max(1, int(threads))
    if threads == 1 or len(jobs) <= 1:
        results = [read() for _, read in jobs]
    else:
        with ThreadPoolExecutor(min(threads, len(jobs)), thread_name_prefix="read-elements") as ex:
            results = list(ex.map(lambda job: job[1](), jobs))
    for (positions, _), values in zip(jobs, results, strict=True):
        for p, v in zip(positions.tolist(), values, strict=True):
            out[p] = v
    return out
