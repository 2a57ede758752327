"""Element files and records on disk: writing them whole, reading them back, many at once.

Every write goes to a temporary name in the same folder and is renamed, so a crash never
leaves a half-written file that reads as valid; a damaged file (truncated, emptied) is
named when read (:class:`DamagedFileError`).  The layout these files make is described in
:mod:`parsl_flows.store`.  Loading pickles runs code: only open stores you trust.

No Parsl and no xarray here: workers and the driver both use these functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

from .ranges import compress

__all__ = [
    "DamagedFileError",
    "MISSING_ELEMENT",
    "STORE_ENV",
    "default_store",
    "drop_damaged",
    "dumps",
    "element_path",
    "file_exists",
    "filesystem_type",
    "is_intact",
    "load_pickle",
    "read_exception",
    "read_json",
    "refresh_folder",
    "write_bytes",
    "remove_element",
    "write_element",
    "write_json",
    "write_pickle",
]

STORE_ENV = "PARSL_FLOWS_STORE"
_ELEMENT = re.compile(r"__(\d+)__\.pickle")


def default_store(store: str | os.PathLike[str] | None = None) -> Path:
    """The store: ``store`` if given, else ``$PARSL_FLOWS_STORE``, else ``./parsl-flows-store``."""
    if store is None:
        store = os.environ.get(STORE_ENV) or "parsl-flows-store"
    return Path(store).expanduser().resolve()


def write_bytes(path: Path, data: bytes, make_folder: bool = True) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary name, then renamed).

    ``make_folder=False``: the folder exists (one metadata round trip fewer on a shared
    filesystem)."""
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_element(folder: str, n: int, data: bytes) -> None:
    """Write element ``n``'s pickled ``data`` into ``folder``, which must exist.

    The worker's hot path: no directory made, no ``Path`` objects, a temporary name of
    the element's own (two processes never write one element at once; each uses its pid).
    """
    path = f"{folder}/__{n}__.pickle"
    tmp = f"{folder}/.__{n}__.pickle.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_element(folder: str, n: int) -> None:
    """Remove element ``n``'s file from ``folder``, if it is there (the worker's path)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{folder}/__{n}__.pickle")


# Types whose pickle is the same from pickle and cloudpickle, made many times faster by
# pickle (exact types: a subclass may be a class of the user's __main__).
_PLAIN_TYPES = frozenset(
    {float, int, complex, str, bytes, bool, type(None)}
    | {np.float64, np.float32, np.int64, np.int32, np.complex128, np.bool_}
)


def dumps(value: Any) -> bytes:
    """The pickle of ``value``: cloudpickle (lambdas and classes of ``__main__`` travel),
    or plain pickle for plain numbers and strings, which it writes tens of times faster.

    >>> import pickle
    >>> pickle.loads(dumps(2.5)), pickle.loads(dumps(lambda: 3))()
    (2.5, 3)
    """
    if type(value) in _PLAIN_TYPES:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    return cloudpickle.dumps(value)


def write_pickle(path: Path, value: Any) -> None:
    """Pickle ``value`` to ``path`` atomically (cloudpickle, so lambdas and classes travel)."""
    write_bytes(path, dumps(value))


class DamagedFileError(ValueError):
    """A file of the store cannot be read back: truncated, emptied or overwritten.

    Our own writes are atomic, so this comes from outside: a disk error, a copy cut short,
    a person editing the store.  The message names the file and, for an element file,
    the element, and says how to get it computed again.
    """

    def __init__(self, path: Path, reason: str, elements: Iterable[int] | None = None) -> None:
        self.path, self.reason = Path(path), reason
        self.element = element_index(self.path)
        #: The elements a damaged task file held, as far as the store's index says.
        self.elements = [int(n) for n in elements] if elements is not None else []
        what = f"file {self.path}"
        fix = "; delete it, or start a new run"
        if self.element is not None:
            what = f"element {self.element} of {self.path.parent} (file {self.path})"
        if self.element is not None or self.elements:
            fix = "; delete the file, then run.resume() or a restart computes the element again"
        if self.elements:
            held = compress(np.asarray(self.elements, dtype=np.int64))
            what = f"task file {self.path} (elements {held} of {self.path.parent})"
            fix = fix.replace("the element", "them")
        super().__init__(f"cannot read {what}: it is damaged ({reason}){fix}")


# What unpickling a cut or overwritten file raises.  The last few can also come from a
# user's class rebuilding itself, so they count as damage only when the file is not whole;
# a class missing where the file is read (ImportError, AttributeError) is never damage.
_DAMAGE = (pickle.UnpicklingError, EOFError)
_MAYBE_DAMAGE = (ValueError, IndexError, KeyError, MemoryError, OverflowError)


def load_pickle(path: Path) -> Any:
    """Load one pickle of the store; a damaged file raises :class:`DamagedFileError`."""
    with open(path, "rb") as f:
        try:
            return cloudpickle.load(f)
        except _DAMAGE as e:
            raise DamagedFileError(path, f"{type(e).__name__}: {e}") from e
        except _MAYBE_DAMAGE as e:
            if is_intact(path):
                raise
            raise DamagedFileError(path, f"{type(e).__name__}: {e}") from e


def is_intact(path: Path) -> bool:
    """Whether ``path`` looks whole: not empty, and ending in pickle's STOP opcode.

    One small read instead of unpickling, so that a resume can check every file it keeps;
    a file cut anywhere short of its end fails it.
    """
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == pickle.STOP
    except OSError:  # empty (cannot seek before the start) or unreadable
        return False


def drop_damaged(folder: Path, indices: np.ndarray) -> list[int]:
    """Delete the element files of ``indices`` in ``folder`` that are damaged; which ones."""
    damaged = [int(n) for n in indices.tolist() if not is_intact(element_path(folder, int(n)))]
    for n in damaged:
        element_path(folder, n).unlink(missing_ok=True)
    return damaged


def read_exception(path: Path) -> str:
    """``"Type: message"`` of a stored exception, for logs (never raises)."""
    try:
        exc = load_pickle(path)
    except Exception as e:
        return f"(its exception file cannot be read: {e})"
    return f"{type(exc).__name__}: {exc}"[:500]


def write_json(path: Path, record: dict[str, Any]) -> None:
    write_bytes(path, json.dumps(record, indent=1, default=_json_default).encode())


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


def _json_default(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def element_path(folder: Path, n: int) -> Path:
    """The file of element ``n`` (C order) in an array folder."""
    return folder / f"__{n}__.pickle"


def element_index(path: Path) -> int | None:
    """The element number of an element file's path (None for other files)."""
    m = _ELEMENT.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def file_exists(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` exists, asked by opening it.

    On a shared filesystem another client's change may reach this one's cached attributes
    only a minute later (NFS ``acregmax``), so ``stat`` can find a file that another node
    removed; opening it asks the server (close-to-open).  A file another node just created
    may still be missed (a cached negative lookup), so False means "not seen yet": callers
    must treat it as "compute again", never as "failed".
    """
    try:
        os.close(os.open(path, os.O_RDONLY))
    except FileNotFoundError:
        return False
    except OSError:  # there, but not ours to open (a folder, no permission)
        return True
    return True


#: Filesystems only this machine writes to: no other client's changes to catch up with.
_LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "bcachefs", "tmpfs", "ramfs"}
    | {"overlay", "apfs", "hfs", "vfat", "exfat", "ntfs", "ntfs3"}
)


def on_local_filesystem(path: str | os.PathLike[str]) -> bool:
    """Is ``path`` on a filesystem of this machine (ext4, tmpfs, ...), not a shared one?

    What decides how often the driver rewrites its own files there, and whether a folder
    needs refreshing before it is listed."""
    return filesystem_type(path) in _LOCAL_FILESYSTEMS


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``, ``fuse.sshfs``...),
    from ``/proc/self/mountinfo``; None where that cannot tell (not Linux)."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    where = os.path.realpath(path)
    best, kind = "", None
    for line in lines:
        fields = line.split(" ")
        try:
            point = fields[4].replace("\\040", " ")
            fstype = fields[fields.index("-", 6) + 1]
        except (IndexError, ValueError):
            continue
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the innermost; the last mounted there
            best, kind = point, fstype
    return kind


def refresh_folder(folder: str | os.PathLike[str]) -> None:
    """Make this client's listing and time stamp of ``folder`` current, as far as it can.

    Through a client of a shared filesystem (NFS, sshfs), a listing or a folder's time stamp
    may be up to a minute old (``acdirmax``) when other nodes wrote into it.  A change this
    client makes itself revalidates them: so a file is created in the folder and removed.
    Best effort (a read-only store, a missing folder: nothing done): callers still treat
    what a listing misses as "compute again" and open what it finds.  Nothing is done on
    a local filesystem, whose folders would only get a new time stamp.
    """
    if on_local_filesystem(folder):
        return
    marker = os.path.join(folder, f".refresh.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(marker)
    except OSError:
        pass


# -- reading many elements ------------------------------------------------------------------

#: What :func:`load_elements` gives for an element without a file (callers mask it).
MISSING_ELEMENT: Any = object()
_READ_SIZE = 1 << 16


def _read_file(path: str) -> bytes:
    # os.open/os.read skip the buffered file object: about twice as fast as open() for
    # the small files most elements are.  A regular file returns fewer bytes than asked
    # only at its end, so one read does for files smaller than the buffer.
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, _READ_SIZE)
        if len(data) < _READ_SIZE:
            return data
        parts = [data]
        while chunk := os.read(fd, _READ_SIZE):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def _read_batch(folder: str, indices: list[int]) -> list[Any]:
    prefix = os.path.join(folder, "__")  # the names element_path gives
    out: list[Any] = []
    for n in indices:
        path = f"{prefix}{n}__.pickle"
        try:
            out.append(cloudpickle.loads(_read_file(path)))
        except FileNotFoundError:
            out.append(MISSING_ELEMENT)
        except _DAMAGE as e:
            raise DamagedFileError(Path(path), f"{type(e).__name__}: {e}") from e
    return out
