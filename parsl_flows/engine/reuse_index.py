"""The store's index of reusable results: which run has an element of which key.

``flows.submit(builder, reuse="store")`` takes any element of any earlier run of the store
whose key (code and inputs, ``hashing``) matches.  Opening every run's keys and folders
for that would cost a listing per output and run, and on a shared filesystem a round
trip each; instead each run that ends leaves one file,

``<store>/reuse-index/<run-id>.npz``
    per step of the run that kept keys: the keys of its elements that have every output
    (failed and missing elements are not there), sorted, and those elements' flat
    indices (``keys_<i>``, ``elements_<i>``); the step's folder name, kind and outputs
    (``steps``, ``kinds``, ``outputs``: ``,``-joined); ``run`` and ``created``.

written whole by the run's driver as the run ends (finished, failed or interrupted), and
removed when a resume starts (the run is about to change: a resume that is killed leaves
none, rather than a stale one).  A lookup lists ``runs/`` and ``reuse-index/`` once
each, and builds the file of every run that has none and is not running (lost, a
killed driver, a run older than the index) from that run's folders, once; ``python -m
parsl_flows reindex`` rebuilds them all.  It then reads, newest run first, only the
matching steps' arrays of each file, and searches the wanted keys in them (numpy's
binary search: ``reuse.search_sorted``), reading a step's elements only where a key is there.

Right with several drivers at once: each run's file is written by its own driver only
(or rebuilt, identically, by whoever looks first), whole, under a temporary name then
renamed; a run still running has no file and is not used.  The index only says where to
look: an element found there is used only if that run's folder (read as this client
sees it) still has it, in whole files (``reuse.whole_elements``), so a run deleted or
compacted since, or a damaged file, costs a recomputation, never a wrong result.

No Parsl here.
"""

from __future__ import annotations

import io
import logging
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import write_bytes
from ..lock import driver_alive
from ..ranges import without
from ..status import RunRecord, StepStatus
from .reuse import (
    KeyTable,
    complete_elements,
    link_elements,
    present_elements,
    say_damaged,
    search_sorted,
    step_keys,
    whole_elements,
)

if TYPE_CHECKING:
    from .step_index import StepIndex

__all__ = [
    "INDEX_FOLDER",
    "Found",
    "find_in_store",
    "forget_run",
    "index_run",
    "rebuild_index",
    "take_from_store",
]

logger = logging.getLogger(__name__)

INDEX_FOLDER = "reuse-index"
_VERSION = 1


@dataclass
class Found:
    """Elements ``new`` of a step are elements ``old`` of ``step_dir`` (an earlier run's)."""

    run_id: str
    step_dir: Path
    new: np.ndarray
    old: np.ndarray


def _index_path(run_dir: Path) -> Path:
    return run_dir.parents[1] / INDEX_FOLDER / f"{run_dir.name}.npz"


def _run_arrays(run_dir: Path) -> dict[str, np.ndarray] | None:
    """The index file's arrays for ``run_dir``, from its folders (None: not a run)."""
    try:
        record = RunRecord.load(run_dir)
    except (FileNotFoundError, ValueError, OSError):
        return None
    arrays: dict[str, np.ndarray] = {}
    steps: list[str] = []
    kinds: list[str] = []
    outputs: list[str] = []
    for name in record.steps:
        step_dir = run_dir / "steps" / name
        keys = step_keys(step_dir)
        try:
            status = StepStatus.load(step_dir)
        except (FileNotFoundError, ValueError, OSError):
            continue
        if keys is None or not status.outputs:
            continue
        _, present = complete_elements(step_dir, status.outputs, keys.size)
        present = present[present < keys.size]
        table = KeyTable(keys[present], present)
        i = len(steps)
        steps.append(name)
        kinds.append(status.kind)
        outputs.append(",".join(status.outputs))
        arrays[f"keys_{i}"] = table.keys
        arrays[f"elements_{i}"] = table.elements
    arrays["steps"] = np.array(steps, dtype=str)
    arrays["kinds"] = np.array(kinds, dtype=str)
    arrays["outputs"] = np.array(outputs, dtype=str)
    arrays["run"] = np.array(run_dir.name)
    arrays["created"] = np.array(record.created, dtype=np.float64)
    arrays["version"] = np.array(_VERSION)
    return arrays


def index_run(run_dir: Path) -> int:
    """Write the index file of ``run_dir`` from its folders (as it ends); how many
    elements it offers.  A store that cannot take it (full, read-only) is logged: the
    file is built again by the next lookup."""
    arrays = _run_arrays(run_dir)
    if arrays is None:
        return 0
    _write(run_dir, arrays)
    return sum(len(v) for k, v in arrays.items() if k.startswith("keys_"))


def _write(run_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # the stubs read ** as allow_pickle
    try:
        write_bytes(_index_path(run_dir), buffer.getvalue())
    except OSError as e:
        logger.warning("cannot write the reuse index of run %s: %s", run_dir.name, e)


def forget_run(run_dir: Path) -> None:
    """Remove the index file of ``run_dir`` (a resume is about to change the run)."""
    try:
        _index_path(run_dir).unlink(missing_ok=True)
    except OSError as e:
        logger.warning("cannot remove the reuse index of run %s: %s", run_dir.name, e)


def _is_running(run_dir: Path) -> bool:
    """Is a driver at work on the run (or can this host not tell)?"""
    try:
        record = RunRecord.load(run_dir)
    except (FileNotFoundError, ValueError, OSError):
        return True  # being created this instant
    return record.status == "running" and driver_alive(run_dir) is not False


def _listing(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []


class _RunFile:
    """One run's index file, opened lazily: only the matching steps' arrays are read."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray] | None = None) -> None:
        self.path = path
        self._arrays = arrays
        self._zip: np.lib.npyio.NpzFile | None = None
        data = arrays if arrays is not None else self._open()
        self.run_id = str(data["run"])
        self.created = float(data["created"])
        self.steps = [str(s) for s in data["steps"]]
        self.kinds = [str(s) for s in data["kinds"]]
        self.outputs = [tuple(str(s).split(",")) for s in data["outputs"]]

    def _open(self) -> np.lib.npyio.NpzFile:
        self._zip = np.load(self.path, allow_pickle=False)
        return self._zip

    def find(self, i: int, wanted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of ``wanted_keys`` step ``i`` has (a bool mask), and their elements; its
        elements are read only when some key is there."""
        data = self._arrays if self._arrays is not None else self._zip
        assert data is not None
        hit, pos = search_sorted(data[f"keys_{i}"], wanted_keys)
        if not len(pos):
            return hit, pos
        return hit, np.asarray(data[f"elements_{i}"], dtype=np.int64)[pos]

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _run_files(root: Path, exclude: str | None, write: bool = True) -> list[_RunFile]:
    """Every run's index file but ``exclude``'s, newest run first; files of ended runs
    that lack one are built (and written, when the store takes it and ``write``)."""
    runs = set(_listing(root / "runs")) - {exclude}
    have = {n[: -len(".npz")] for n in _listing(root / INDEX_FOLDER) if n.endswith(".npz")}
    files: list[_RunFile] = []
    for run_id in sorted(runs):
        run_dir = root / "runs" / run_id
        path = root / INDEX_FOLDER / f"{run_id}.npz"
        if run_id in have:
            try:
                files.append(_RunFile(path))
                continue
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
                logger.warning("the reuse index %s is damaged (%s): built again", path, e)
        if _is_running(run_dir):
            continue
        arrays = _run_arrays(run_dir)
        if arrays is None:
            continue
        if write:
            _write(run_dir, arrays)
        files.append(_RunFile(path, arrays))
    files.sort(key=lambda f: f.created, reverse=True)
    return files


def find_in_store(
    root: Path,
    exclude: str | None,
    kind: str,
    outputs: tuple[str, ...],
    keys: np.ndarray,
    wanted: np.ndarray,
    write: bool = True,
) -> list[Found]:
    """Where earlier runs of the store have the wanted elements (flat indices into
    ``keys``) of a step of ``kind`` ("map"/"call") with ``outputs``: per run and step, the
    new and old elements, each wanted element found once (in the newest run that has it).
    ``write=False``: index files built on the way are not written (a preview)."""
    flat = np.atleast_1d(keys).reshape(-1)
    left = np.asarray(wanted, dtype=np.int64)
    found: list[Found] = []
    files = _run_files(root, exclude, write)
    try:
        for run_file in files:
            if not len(left):
                break
            try:
                for i, (k, outs) in enumerate(zip(run_file.kinds, run_file.outputs, strict=True)):
                    if not len(left) or k != kind or outs != tuple(outputs):
                        continue
                    hit, old = run_file.find(i, flat[left])
                    if hit.any():
                        step_dir = root / "runs" / run_file.run_id / "steps" / run_file.steps[i]
                        found.append(Found(run_file.run_id, step_dir, left[hit], old))
                        left = left[~hit]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
                logger.warning("cannot read the reuse index %s: %s", run_file.path, e)
    finally:
        for run_file in files:
            run_file.close()
    return found


def rebuild_index(root: Path) -> dict[str, int]:
    """Build every ended run's index file again from its folders (``reindex``); per run,
    how many elements it offers.  Files of runs no longer in the store are removed."""
    runs = set(_listing(root / "runs"))
    for name in _listing(root / INDEX_FOLDER):
        if name.endswith(".npz") and name[: -len(".npz")] not in runs:
            (root / INDEX_FOLDER / name).unlink(missing_ok=True)
    counts = {}
    started = time.monotonic()
    for run_id in sorted(runs):
        run_dir = root / "runs" / run_id
        if _is_running(run_dir):
            continue
        counts[run_id] = index_run(run_dir)
    logger.info("reuse index of %d runs rebuilt in %.1f s", len(counts), time.monotonic() - started)
    return counts


def take_from_store(
    root: Path,
    run_id: str,
    kind: str,
    outputs: list[str],
    step_dir: Path,
    keys: np.ndarray,
    wanted: np.ndarray,
    index: StepIndex | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Link the wanted elements that any earlier run of the store has (see module) into
    ``step_dir`` of run ``run_id``; how many came from which run.

    Each run found is checked as a restart's origin is (``reuse.whole_elements``): its
    elements must still be there, every output in a whole file; a run removed meanwhile
    is skipped (logged), and its elements computed."""
    have = index.present() if index is not None else present_elements(step_dir, outputs, wanted)
    missing = without(wanted, have)
    taken: dict[str, int] = {}
    for found in find_in_store(root, run_id, kind, tuple(outputs), keys, missing):
        damaged: list[Path] = []
        where, present = complete_elements(found.step_dir, outputs, 0)
        there = np.isin(found.old, present)
        pairs = whole_elements(where, found.new[there], found.old[there], damaged)
        say_damaged(damaged, where, log)
        try:
            link_elements(found.step_dir, step_dir, where, pairs, index)
        except OSError as e:  # the run went (deleted) while it was read: compute them
            if log is not None:
                log(f"cannot reuse elements of run {found.run_id}: {e}")
            continue
        if pairs:
            taken[found.run_id] = taken.get(found.run_id, 0) + len(pairs)
    return taken
