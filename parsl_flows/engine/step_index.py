"""Where a map's elements are, as the driver learns it: the index of each of its folders.

The driver owns each map folder's ``index.npz`` (``element_folders``).  A step starts
from what its folders hold (a resume, a restart's reused elements: listed once, made
current first), then adds each task's files as the task's result comes back: no file is
opened or listed for that.  The index files are written when an attempt ends and when
the step ends (interrupted too), never once per element or per task, so the driver's
own writes to a shared filesystem stay few.  A driver killed before it writes them
loses nothing: readers and the next resume list the folder and open the task files the
index does not name.

The index also keeps the map's provenance (``parsl_flows.provenance``: each element's
seconds, node, batch job, attempt and worker memory, as its task's result says), written
with the index and, since only the driver ever knew it, every second or so besides
(:meth:`Provenance.save_if_due`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..element_folders import OWN, Locations, locate, save_index, task_file_name
from ..files import drop_damaged, element_path, is_intact, remove_element
from ..provenance import Provenance
from ..ranges import common, compress, without
from .task_spec import NOT_RUN, OK, TaskResult
from .task_writer import read_journal, write_values

__all__ = ["StepIndex", "drop_damaged_results"]

logger = logging.getLogger(__name__)


def salvage_journals(step_dir: Path, outputs: tuple[str, ...]) -> int:
    """Keep what the journals of tasks of an earlier execution hold (its driver was
    killed, and their workers with it): their values, as ``<task>-salvaged`` task files,
    which the folders' listing then finds.  Their failures are not kept: those elements
    run again anyway.  How many elements were kept."""
    folder = step_dir / "journal"
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    kept_in_all = 0
    for name in names:
        path = os.fspath(folder / name)
        kept = {r[0]: r[2] for r in read_journal(path) if r[1] == OK and r[2] is not None}
        try:
            if kept:
                write_values(os.fspath(step_dir), f"{name}-salvaged", outputs, kept)
            os.unlink(path)
        except OSError as e:  # a read-only store: its elements are computed again
            logger.warning("cannot keep the elements of the journal %s: %s", path, e)
            continue
        kept_in_all += len(kept)
    return kept_in_all


class StepIndex:
    """The locations of one map's outputs and failures (see module)."""

    def __init__(self, step_dir: Path, outputs: tuple[str, ...] | list[str], size: int) -> None:
        self.step_dir, self.outputs, self.size = step_dir, tuple(outputs), size
        salvage_journals(step_dir, self.outputs)
        self.values = {
            out: locate(step_dir / "return_values" / out, size, fresh=True) for out in outputs
        }
        self.failures = locate(step_dir / "exception", size, fresh=True)
        for loc in (*self.values.values(), self.failures):
            loc.complete = True  # from now on, the driver learns every file its tasks write
        #: What a killed driver of this step recorded (a resume) is kept.
        self.provenance = Provenance.of_step(step_dir, size)

    def present(self) -> np.ndarray:
        """The elements that have every output."""
        have: np.ndarray | None = None
        for loc in self.values.values():
            here = loc.present()
            have = here if have is None else common(have, here)
        return np.empty(0, np.int64) if have is None else have[have < self.size]

    def files_of(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Per output and file, the elements ``indices`` it holds: ``{(out, file): ...}``."""
        return {
            f"{out}/{file}": held
            for out, loc in self.values.items()
            for file, held in loc.files_of(indices).items()
        }

    def add(self, result: TaskResult) -> None:
        """Take a map task's files: its elements that succeeded are in its output files,
        those that failed in its exception file (see ``TaskResult.name``)."""
        ran = result.codes != NOT_RUN
        seconds = result.element_seconds
        self.provenance.record(
            result.indices[ran],
            None if seconds is None or len(seconds) != len(ran) else seconds[ran],
            result.host,
            result.batch_job,
            result.peak_rss,
        )
        self.provenance.save_if_due()
        if not result.name:
            return
        file = task_file_name(result.name)
        ok = result.indices[result.codes == OK]
        failed = result.indices[(result.codes != OK) & (result.codes != NOT_RUN)]
        for loc in self.values.values():
            loc.put(file, ok)
        self.failures.drop(ok)
        self.failures.put(file, failed)

    def reused(self, origin_dir: Path, new: np.ndarray, old: np.ndarray) -> None:
        """Elements ``new`` are elements ``old`` of the step in ``origin_dir`` (a restart
        links them): they keep the provenance that run recorded, if it did, and at least
        which run computed them."""
        earlier = Provenance.read(origin_dir)
        if earlier is not None:
            self.provenance.take(earlier, new, old)
        else:
            self.provenance.came_from(origin_dir.parent.parent.name, new)

    def drop(self, indices: np.ndarray) -> None:
        """Elements ``indices`` are not to be read (damaged): computed again."""
        for loc in self.values.values():
            loc.drop(indices)

    def retrying(self, todo: np.ndarray) -> None:
        """Elements ``todo`` run again: their earlier failures no longer count.

        Task files are never rewritten; the index forgets those elements.  An element's own
        exception file (a run written before task files) is removed by name.
        """
        todo = todo[todo < self.failures.size]
        own = todo[self.failures.file[todo] == OWN]
        for n in own.tolist():
            with contextlib.suppress(OSError):
                remove_element(os.fspath(self.step_dir / "exception"), n)
        self.failures.drop(todo)

    def save(self, complete: bool = True) -> None:
        """Write the index of each folder (a full store: readers list the folders).

        ``complete=False`` while tasks may still write (a step stopped with tasks in
        flight): readers then list the folders too."""
        for loc in (*self.values.values(), self.failures):
            loc.complete = complete
            if not loc.names and not (loc.file == OWN).any() and not loc.folder.exists():
                continue  # nothing there: no folder made for an index of nothing
            try:
                loc.folder.mkdir(parents=True, exist_ok=True)
                save_index(loc)
            except OSError as e:
                logger.warning("cannot write the index of %s: %s", loc.folder, e)
        self.provenance.save()

    def locations(self, out: str) -> Locations:
        return self.values[out]


def drop_damaged_results(
    step_dir: Path,
    outputs: Iterable[str],
    have: np.ndarray,
    log: Callable[[str], None],
    index: StepIndex | None = None,
) -> np.ndarray:
    """Results already in the store, less those in damaged files, which are set aside
    (renamed ``*.damaged``) and computed again; each damaged file is named in the log
    with the elements it held."""
    damaged: set[int] = set()
    if index is not None:
        for where, held in index.files_of(have).items():
            path = step_dir / "return_values" / where
            if is_intact(path):
                continue
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(path.name + ".damaged"))
            damaged.update(held.tolist())
            log(
                f"task file {path} is damaged (truncated or overwritten): its elements "
                f"{compress(held)} are computed again"
            )
        own = [n for n in have.tolist() if index.values[next(iter(outputs))].file[n] == OWN]
        have_own = np.asarray(own, dtype=np.int64)
    else:
        have_own = have
    for out in outputs:
        damaged.update(drop_damaged(step_dir / "return_values" / out, have_own))
    if not damaged:
        return have
    gone = np.array(sorted(damaged), dtype=np.int64)
    for n in gone.tolist():  # an element is whole or absent
        for out in outputs:
            element_path(step_dir / "return_values" / out, n).unlink(missing_ok=True)
    if index is not None:
        index.drop(gone)
    log(
        f"{len(damaged)} element(s) were in damaged files and are computed again: "
        f"elements {compress(gone)}"
    )
    return without(have, gone)
