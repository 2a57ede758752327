"""Rewrite an ended run's element files as task files: the same values in far fewer files.

Runs written before task files hold one file per map element
(``steps/NN-name/return_values/<output>/__<n>__.pickle``, and ``exception/__<n>__.pickle``
for what failed), and a run of today's code resumed or restarted from one keeps them.  On
a cluster's shared filesystem every file costs an inode of the quota and a metadata round
trip to list, back up or delete, so :func:`compact_run` packs a map folder's element files
into task files (``task-compact-<first>-<uuid8>.pickle``, up to :data:`BATCH_ELEMENTS`
elements or about :data:`BATCH_BYTES` each) and writes the folder's complete
``index.npz`` (see :mod:`parsl_flows.element_folders`).  A plain call's ``__0__.pickle``
stays: one file either way.

Nothing is deleted before what replaces it is whole and an index that points at it is
written.  Per folder, in this order: the map's numbers file is forgotten (it is keyed on
the folder's time, which compaction changes; readers then take the task files); the task
files are written (a temporary name, then renamed), synced, read back and compared with
the element files' bytes; the index naming them is written and synced; only then are the
element files removed.  Killed at any point, the run reads the same values: until the
new index, every element file is still there (a reader that lists the folder may find
an element, equally, in a new task file); from it on, the index places every element.
Compacting again finishes the job: task files no index names are written anew, then
removed; element files the index no longer reads (a kill while removing) are removed
once their bytes are found where the index places them.

Only a run that ended (``finished`` or ``failed``) is compacted: a running one changes
under it, an interrupted one is resumed first.  The run's lock (:mod:`parsl_flows.lock`)
is held throughout, so no driver resumes it meanwhile, and a driver that holds it refuses
the compaction.  A process reading the run meanwhile (a restart reusing its elements)
may find an element file gone: compact runs nothing is reading from.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .element_folders import (
    INDEX_NAME,
    NONE,
    OWN,
    Locations,
    locate,
    read_task_file,
    save_index,
    write_task_file,
)
from .files import DamagedFileError, default_store, element_path
from .lock import RunLock, RunLockedError, driver_alive
from .numbers_file import forget_numbers
from .status import RunRecord, StepStatus

__all__ = [
    "BATCH_BYTES",
    "BATCH_ELEMENTS",
    "CompactError",
    "CompactRefused",
    "Compacted",
    "compact_run",
    "compact_store",
    "count_files",
]

#: At most this many elements per task file written ...
BATCH_ELEMENTS = 10_000
#: ... and about this many bytes of pickles (a file is read whole to read one element).
BATCH_BYTES = 64 << 20
_PREFIX = "compact"  # task files are task-compact-<first element>-<uuid8>.pickle
_OURS = re.compile(rf"task-{_PREFIX}-\d+-[0-9a-f]{{8}}\.pickle")
_OWN_FILE = re.compile(r"__(\d+)__\.pickle")
# write_bytes's temporary names (".<name>.<pid>.<hex8>.tmp") of our task files and indexes:
# what a compaction killed mid-write leaves.  No reader lists them.
_OUR_TMP = re.compile(
    rf"\.(task-{_PREFIX}-[^/]+\.pickle|{re.escape(INDEX_NAME)})\.\d+\.[0-9a-f]{{8}}\.tmp"
)
_ENDED = ("finished", "failed")

Progress = Callable[[str], None]


class CompactRefused(RuntimeError):
    """The run cannot be compacted now: it has not ended, or a live driver holds it.
    The message names the run and what to do first."""


class CompactError(RuntimeError):
    """A task file did not read back as written (a failing disk): nothing was removed."""


@dataclass
class Compacted:
    """What compacting one run did (or, for ``skipped``, why it did nothing)."""

    run_id: str
    files_before: int = 0
    files_after: int = 0
    removed: int = 0  # element files (and leftovers of an interrupted compaction) removed
    task_files: int = 0
    indexes: int = 0
    already: bool = False  # nothing to do: every map folder was compact
    skipped: str = ""  # why the run was left alone (--all): not ended, or driven
    failed: str = ""  # the error that stopped its compaction (--all); what it did is kept
    notes: list[str] = field(default_factory=list)


def count_files(run_dir: Path) -> int:
    """How many files the run's folder holds (what a quota counts)."""
    return sum(len(files) for _, _, files in os.walk(run_dir))


# -- one folder ------------------------------------------------------------------------------
@dataclass
class _Survey:
    """What one map folder holds, as far as compaction cares (read-only)."""

    folder: Path
    loc: Locations
    indexed: set[str]  # the task files its index.npz names ...
    index_complete: bool  # ... and whether that index is complete
    own: np.ndarray  # the elements that have an own file there
    ours: list[str]  # our task files there (task-compact-*)
    tmp: list[str]  # temporary files of a killed compaction

    @property
    def needs_work(self) -> bool:
        """Whether compacting the folder would change anything (files, or its index)."""
        unindexed = [n for n in self.ours if n not in self.indexed]
        listed = not self.index_complete and len(self.loc.present()) > 0
        return bool(len(self.own) or unindexed or self.tmp or listed)


def _read_index_names(folder: Path) -> tuple[set[str], bool]:
    """The task files a folder's index names, and whether it is complete (none: no index)."""
    try:
        with np.load(folder / INDEX_NAME, allow_pickle=False) as data:
            return {str(n) for n in data["names"]}, bool(data["complete"])
    except (OSError, ValueError, KeyError, EOFError):
        return set(), False


def _survey(folder: Path, size: int, fresh: bool) -> _Survey:
    names = os.listdir(folder)
    own = sorted(int(m.group(1)) for n in names if (m := _OWN_FILE.fullmatch(n)))
    indexed, complete = _read_index_names(folder)
    return _Survey(
        folder,
        locate(folder, size, fresh=fresh),
        indexed,
        complete,
        np.asarray(own, dtype=np.int64),
        sorted(n for n in names if _OURS.fullmatch(n)),
        sorted(n for n in names if _OUR_TMP.fullmatch(n)),
    )


def _sync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk: a crash of the machine, not only of
    this process, must not lose a file whose originals are about to be removed."""
    with contextlib.suppress(OSError):  # a filesystem that cannot sync a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _batches(
    folder: Path, elements: np.ndarray, max_elements: int, max_bytes: int, damaged: list[int]
) -> Iterator[tuple[list[int], list[bytes]]]:
    """The element files of ``elements`` read in batches; damaged ones (cut short) are left
    out, into ``damaged``, and stay as they are: readers report them as they did."""
    indices: list[int] = []
    pickles: list[bytes] = []
    size = 0
    for n in elements.tolist():
        try:
            data = element_path(folder, n).read_bytes()
        except FileNotFoundError:
            continue
        if data[-1:] != pickle.STOP:  # cut short (the test of ``files.is_intact``)
            damaged.append(n)
            continue
        if indices and (len(indices) >= max_elements or size + len(data) > max_bytes):
            yield indices, pickles
            indices, pickles, size = [], [], 0
        indices.append(n)
        pickles.append(data)
        size += len(data)
    if indices:
        yield indices, pickles


def _write_checked(folder: Path, indices: list[int], pickles: list[bytes]) -> str:
    """Write one task file, sync it and read it back; its name.  One that differs from
    what was written is removed at once (no index names it) and raises CompactError."""
    name = f"{_PREFIX}-{indices[0]}-{uuid.uuid4().hex[:8]}"
    file = write_task_file(os.fspath(folder), name, indices, pickles)
    _sync(folder / file)
    try:
        got, back = read_task_file(folder / file)
        same = np.array_equal(got, np.asarray(indices, dtype=np.int64)) and back == pickles
    except (OSError, DamagedFileError):
        same = False
    if not same:
        (folder / file).unlink(missing_ok=True)
        raise CompactError(f"{folder / file} did not read back as written: nothing removed")
    return file


def _bytes_at(folder: Path, file: str, slot: int, cache: dict[str, list[bytes]]) -> bytes | None:
    if file not in cache:
        try:
            cache[file] = read_task_file(folder / file)[1]
        except (OSError, DamagedFileError):
            cache[file] = []
    pickles = cache[file]
    return pickles[slot] if 0 <= slot < len(pickles) else None


def _compact_folder(
    s: _Survey,
    values_present: np.ndarray | None,
    limits: tuple[int, int],
    lock: RunLock,
    result: Compacted,
    progress: Progress,
) -> None:
    """Compact one map folder (see module for the order); ``values_present``: for an
    ``exception`` folder, the elements that have a value (their failures do not count),
    None for an output's folder."""
    folder, loc = s.folder, s.loc
    for name in s.tmp:  # a killed compaction's half-written files: no reader lists them
        (folder / name).unlink(missing_ok=True)
        result.removed += 1
    own = set(s.own.tolist())
    # Elements the listing placed in a task file of an interrupted compaction (no index
    # names it): their element files are still there, so they are written anew.
    leftover = [loc.names.index(n) for n in s.ours if n not in s.indexed and n in loc.names]
    moving = np.flatnonzero((loc.file == OWN) | np.isin(loc.file, leftover))
    moving = moving[np.isin(moving, s.own)]
    if values_present is None:  # an output's numbers file is keyed on the folder's time:
        forget_numbers(folder)  # gone before the folder changes
    damaged: list[int] = []
    moved: list[int] = []
    for indices, pickles in _batches(folder, moving, *limits, damaged):
        file = _write_checked(folder, indices, pickles)
        loc.put(file, np.asarray(indices, dtype=np.int64))
        moved.extend(indices)
        result.task_files += 1
        progress(f"wrote and checked {folder / file} ({len(indices)} elements)")
    if damaged:
        result.notes.append(
            f"{folder}: left {len(damaged)} damaged element file(s) as they are: {damaged[:10]}"
        )
    # Element files the index will not read: in an exception folder, failures of elements
    # that have a value; else duplicates of what a task file holds (a compaction killed
    # while removing), removed only once their bytes are found there.
    cache: dict[str, list[bytes]] = {}
    succeeded = set(values_present.tolist()) if values_present is not None else set()
    obsolete: list[int] = []
    for n in sorted(own - set(moved) - set(damaged)):
        k = int(loc.file[n]) if n < loc.size else NONE
        if k == NONE:
            unread = n in succeeded
        else:
            unread = k >= 0 and _bytes_at(folder, loc.names[k], int(loc.slot[n]), cache) == (
                element_path(folder, n).read_bytes()
            )
        if unread:
            obsolete.append(n)
        elif k != OWN:
            result.notes.append(f"{folder}: left element file {n}, which its index does not read")
    loc.complete = True
    save_index(loc)
    _sync(folder / INDEX_NAME)
    _sync(folder)
    result.indexes += 1
    progress(f"wrote {folder / INDEX_NAME}")
    used = {loc.names[k] for k in np.unique(loc.file[loc.file >= 0]).tolist()}
    stale = [n for n in s.ours if n not in used]  # our task files no index reads now
    if lock.lost:  # another driver took the run over: write nothing more
        raise CompactRefused(lock.lost)
    for i, n in enumerate([*moved, *obsolete]):
        element_path(folder, n).unlink(missing_ok=True)
        result.removed += 1
        if i == 0:
            progress(f"removing the element files of {folder}")
    for name in stale:
        (folder / name).unlink(missing_ok=True)
        result.removed += 1
    progress(f"compacted {folder}")


# -- a run -----------------------------------------------------------------------------------
_Folder = tuple[Path, int, bool, Path | None]


def _map_folders(run_dir: Path, record: RunRecord) -> Iterator[_Folder]:
    """Each map's element folders, outputs first: ``(folder, size, is an exception
    folder, the output folder its elements with a value are read from)``, the last as
    ``element_folders.locate`` picks it."""
    for name in record.steps:
        step_dir = run_dir / "steps" / name
        try:
            st = StepStatus.load(step_dir)
        except (FileNotFoundError, ValueError):
            continue
        if st.kind != "map":
            continue
        values = step_dir / "return_values"
        outs = sorted(os.listdir(values)) if values.is_dir() else []
        for out in outs:
            if (values / out).is_dir():
                yield values / out, st.n_elements, False, None
        if (step_dir / "exception").is_dir():
            first = values / outs[0] if outs else None
            yield step_dir / "exception", st.n_elements, True, first


def _check_ended(run_dir: Path, record: RunRecord) -> None:
    """Refuse a run that has not ended, naming it and the fix."""
    run_id = record.run_id
    if record.status in _ENDED:
        return
    if record.status == "running" and driver_alive(run_dir) is not False:
        raise CompactRefused(
            f"run {run_id} is still running (driver pid {record.driver_pid} on host "
            f"{record.driver_host}): wait for it to end "
            f"(python -m parsl_flows status {run_id} --follow), then compact it"
        )
    raise CompactRefused(
        f"run {run_id} was interrupted (its driver died before it ended): resume it first "
        f"(python -m parsl_flows resume {run_id}, or run.resume()), then compact it"
    )


def _refuse_held(lock: RunLock, run_id: str) -> None:
    """Refuse a run whose lock a live process holds (a driver, another compaction)."""
    holder = lock.holder()
    if holder is not None and holder.alive is not False:
        unsure = f", if alive (delete {lock.path} if it is gone)" if holder.alive is None else ""
        raise CompactRefused(
            f"run {run_id} is held by {holder.who} (its driver, or another compaction): "
            f"wait for it to end or stop that process{unsure}, then compact again"
        )


def compact_run(
    run_dir: str | os.PathLike[str],
    *,
    batch_elements: int = BATCH_ELEMENTS,
    batch_bytes: int = BATCH_BYTES,
    progress: Progress | None = None,
) -> Compacted:
    """Rewrite the element files of the ended run in ``run_dir`` as task files (see module).

    Raises :class:`CompactRefused` for a run that has not ended or that a live driver
    holds.  ``progress`` is told of each step (a file written, an index, removals begun):
    for a verbose display, or a test that stops the process between two steps.
    """
    run_dir = Path(run_dir)
    record = RunRecord.load(run_dir)
    _check_ended(run_dir, record)
    n, folders = count_files(run_dir), _map_folders(run_dir, record)
    result = Compacted(record.run_id, files_before=n, files_after=n)
    if not any(_survey(f, size, False).needs_work for f, size, _, _ in folders):
        result.already = True  # nothing touched, not even the lock
        return result
    lock = RunLock(run_dir)
    _refuse_held(lock, record.run_id)
    try:
        lock.acquire(result.notes.append)  # takes over the stale lock of a killed one
    except RunLockedError as e:
        raise CompactRefused(f"cannot compact run {record.run_id}: {e}") from e
    try:
        record = RunRecord.load(run_dir)  # a resume may have begun before the lock was ours
        _check_ended(run_dir, record)
        limits = (max(1, int(batch_elements)), max(1, int(batch_bytes)))
        for folder, size, failures, values in _map_folders(run_dir, record):
            s = _survey(folder, size, True)
            if not s.needs_work:
                continue
            present = None
            if failures:
                present = locate(values, size).present() if values else np.empty(0, np.int64)
            _compact_folder(s, present, limits, lock, result, progress or (lambda _: None))
    finally:
        lock.release()
    result.files_after = count_files(run_dir)
    return result


def compact_store(
    store: str | os.PathLike[str] | None = None,
    *,
    batch_elements: int = BATCH_ELEMENTS,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[Compacted]:
    """Compact every ended run of ``store``, oldest first.  A run left alone comes back
    with ``skipped`` (not ended, driven) or ``failed`` (an error) saying why."""
    runs = default_store(store) / "runs"
    for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
        if not (run_dir / "run.json").is_file():
            continue
        try:
            yield compact_run(run_dir, batch_elements=batch_elements, batch_bytes=batch_bytes)
        except CompactRefused as e:
            yield Compacted(run_dir.name, skipped=str(e))
        except (CompactError, OSError, ValueError) as e:
            yield Compacted(run_dir.name, failed=f"{type(e).__name__}: {e}")
