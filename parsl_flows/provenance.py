"""Where, for how long and in which attempt each element of a map was computed.

Workers measure each element (``engine/worker.py``: seconds per element, a float32 array
in the task's result) and, once per task, the node, the batch job and the process's
peak memory.  The driver keeps them per map step as arrays, never as Python objects per
element: per element (flat index, C order) its seconds and the task that ran it, and
per task its attempt, node, job and peak memory (facts of the task: kept once).  It
writes them whole (a temporary name, then renamed) as ``steps/NN-name/provenance.npz``
whenever the step's index is written (an attempt ends, the step ends or is stopped),
when a restart's reused elements are linked, and while tasks come back, at most every
:data:`SAVE_SECONDS_LOCAL` (a shared filesystem: :data:`SAVE_SECONDS_SHARED`).  A driver
killed mid-map loses the provenance of what finished since its last write, not the
results themselves, and a resume starts from the file.  Datasets lay it out per element
(``<step>_seconds``, ``<step>_host``, ...: :meth:`Provenance.columns`).

The file is read with numpy alone, ``p = numpy.load(path)``; element ``n`` ran in task
``t = p["task"][n]`` (-1: not recorded), for ``p["seconds"][n]`` seconds (float32, NaN:
not recorded), in attempt ``p["task_attempt"][t]`` of the step, on node
``p["hosts"][p["task_host"][t]]``, in batch job ``p["jobs"][p["task_job"][t]]`` (-1:
none or not recorded), its worker process's peak resident memory then being
``p["task_peak_rss"][t]`` bytes (-1: not recorded), by run ``p["runs"][p["task_run"][t]]``
(the run whose worker computed it: this one's, or an earlier run's for an element a
restart or ``reuse="store"`` took; -1: not recorded); ``p["size"]`` is the number of
elements.

No Parsl and no xarray here: the driver imports it.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from pathlib import Path

import numpy as np

from .files import on_local_filesystem, write_bytes

__all__ = ["PROVENANCE_FILE", "Provenance"]

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.npz"
#: While a map's tasks come back, its provenance is written at most this often (seconds):
#: what a killed driver can lose.  0.8 MB at 100,000 elements, a millisecond or two here.
SAVE_SECONDS_LOCAL = 1.0
#: The same on a shared filesystem, where every write is a round trip to a server that
#: all users share (and 8 MB a time at 1,000,000 elements).
SAVE_SECONDS_SHARED = 30.0

#: Per task: column, dtype, and what stands for "not recorded".
_TASK_COLUMNS = (
    ("task_attempt", np.int32, 0),
    ("task_host", np.int32, -1),
    ("task_job", np.int32, -1),
    ("task_peak_rss", np.int64, -1),
    ("task_run", np.int32, -1),
)


class Provenance:
    """The provenance of a map's ``size`` elements, in ``step_dir`` (see module)."""

    def __init__(self, step_dir: Path, size: int) -> None:
        self.step_dir, self.size = step_dir, size
        self.seconds = np.full(size, np.nan, dtype=np.float32)
        self.task = np.full(size, -1, dtype=np.int32)
        #: Per task (the first ``n_tasks`` rows; more are kept ready, doubling).
        self.tasks = {name: np.full(16, missing, dtype) for name, dtype, missing in _TASK_COLUMNS}
        self.n_tasks = 0
        self.hosts: list[str] = []
        self.jobs: list[str] = []
        self.runs: list[str] = []  # the runs that computed the elements (reused: earlier)
        #: The step attempt the tasks recorded now belong to (set by the engine).
        self.current_attempt = 0
        self._changed = False
        self._saved_at = time.monotonic()
        self._every: float | None = None  # SAVE_SECONDS_*, once the filesystem is known

    @classmethod
    def read(cls, step_dir: Path, size: int | None = None) -> Provenance | None:
        """The provenance in ``step_dir`` (over ``size`` elements, by default the file's),
        or None where there is none, or it cannot be read (it is then not used)."""
        try:
            with np.load(step_dir / PROVENANCE_FILE, allow_pickle=False) as data:
                got = cls(step_dir, int(data["size"]) if size is None else size)
                n = min(got.size, int(data["size"]))
                got.seconds[:n] = data["seconds"][:n]
                got.task[:n] = data["task"][:n]
                got.n_tasks = len(data["task_attempt"])
                for name, dtype, missing in _TASK_COLUMNS:
                    if name in data:
                        got.tasks[name] = np.asarray(data[name], dtype=dtype)
                    else:  # a file written before the column: not recorded
                        got.tasks[name] = np.full(got.n_tasks, missing, dtype=dtype)
                got.hosts = [str(h) for h in data["hosts"]]
                got.jobs = [str(j) for j in data["jobs"]]
                got.runs = [str(r) for r in data["runs"]] if "runs" in data else []
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            logger.warning("not using %s: %s", step_dir / PROVENANCE_FILE, e)
            return None
        return got

    @classmethod
    def of_step(cls, step_dir: Path, size: int) -> Provenance:
        """What ``step_dir`` holds already (a resumed step), else nothing recorded."""
        return cls.read(step_dir, size) or cls(step_dir, size)

    def _new_tasks(self, count: int) -> int:
        """Room for ``count`` more tasks; the row of the first."""
        first = self.n_tasks
        self.n_tasks += count
        have = len(self.tasks["task_attempt"])
        if self.n_tasks > have:
            grown = max(2 * have, self.n_tasks)
            for name, dtype, missing in _TASK_COLUMNS:
                column = np.full(grown, missing, dtype)
                column[:have] = self.tasks[name]
                self.tasks[name] = column
        return first

    def record(
        self,
        indices: np.ndarray,
        seconds: np.ndarray | None,
        host: str,
        job: str,
        peak_rss: int,
    ) -> None:
        """Elements ``indices`` ran in one task of :attr:`current_attempt`, each for
        ``seconds`` (None: not measured), on ``host`` in batch job ``job`` ("": none),
        whose worker's peak memory was then ``peak_rss`` bytes (0: not measured)."""
        inside = indices < self.size
        indices = indices[inside]
        if not len(indices):
            return
        row = self._new_tasks(1)
        self.tasks["task_attempt"][row] = self.current_attempt
        self.tasks["task_host"][row] = _code(self.hosts, host)
        self.tasks["task_job"][row] = _code(self.jobs, job)
        self.tasks["task_peak_rss"][row] = peak_rss if peak_rss > 0 else -1
        self.tasks["task_run"][row] = _code(self.runs, self.run_id)
        self.seconds[indices] = np.nan if seconds is None else seconds[inside]
        self.task[indices] = row
        self._changed = True

    def take(self, other: Provenance, new: np.ndarray, old: np.ndarray) -> None:
        """Elements ``new`` are elements ``old`` of ``other`` (a restart reuses them): they
        keep what ``other`` recorded of them, attempt numbers included."""
        inside = old < other.size
        new, old = new[inside], old[inside]
        if not len(new):
            return
        first = self._new_tasks(other.n_tasks)  # all of other's tasks: few, and simplest
        rows = slice(first, first + other.n_tasks)
        # Codes of ``other``'s tables in ours; index -1 (not recorded) takes the last, -1.
        hosts = np.array([_code(self.hosts, h) for h in other.hosts] + [-1], dtype=np.int32)
        jobs = np.array([_code(self.jobs, j) for j in other.jobs] + [-1], dtype=np.int32)
        # A task ``other`` did not record the run of (a file of an older version) ran there.
        runs = np.array([_code(self.runs, r) for r in other.runs], dtype=np.int32)
        runs = np.append(runs, _code(self.runs, other.run_id))
        theirs = {name: other.tasks[name][: other.n_tasks] for name, _, _ in _TASK_COLUMNS}
        self.tasks["task_attempt"][rows] = theirs["task_attempt"]
        self.tasks["task_peak_rss"][rows] = theirs["task_peak_rss"]
        self.tasks["task_host"][rows] = hosts[theirs["task_host"]]
        self.tasks["task_job"][rows] = jobs[theirs["task_job"]]
        self.tasks["task_run"][rows] = runs[theirs["task_run"]]
        self.seconds[new] = other.seconds[old]
        task = other.task[old]
        self.task[new] = np.where(task >= 0, task + first, -1)
        self._changed = True
        self.came_from(other.run_id, new[task < 0])  # not recorded there, but made there

    def came_from(self, run_id: str, new: np.ndarray) -> None:
        """Elements ``new`` were computed by run ``run_id``, which recorded nothing else of
        them (reused from a run without provenance, or one whose driver was killed)."""
        new = new[new < self.size]
        if not len(new):
            return
        row = self._new_tasks(1)
        self.tasks["task_run"][row] = _code(self.runs, run_id)
        self.task[new] = row
        self.seconds[new] = np.nan
        self._changed = True

    @property
    def run_id(self) -> str:
        """The run this step is of (``<store>/runs/<run>/steps/<step>``)."""
        return self.step_dir.parent.parent.name

    def columns(self) -> dict[str, np.ndarray]:
        """Per element: ``seconds`` (float32), ``host``, ``job`` and ``run`` (text, "" where
        not recorded), ``attempt`` (int32, 0) and ``peak_rss`` (float64 bytes, NaN)."""
        task = self.task  # -1 takes the last row of each table: its "not recorded"
        n = self.n_tasks

        def per_element(name: str, missing: object, dtype: type) -> np.ndarray:
            table: np.ndarray = np.empty(n + 1, dtype)
            table[:n] = self.tasks[name][:n]
            table[n] = missing
            return table[task]

        hosts = np.array([*self.hosts, ""], dtype=str)  # code -1 takes the last: ""
        jobs = np.array([*self.jobs, ""], dtype=str)
        runs = np.array([*self.runs, ""], dtype=str)
        peak = per_element("task_peak_rss", np.nan, np.float64)
        peak[peak < 0] = np.nan  # a task that could not measure it
        return {
            "seconds": self.seconds.copy(),
            "host": hosts[per_element("task_host", -1, np.int32)],
            "job": jobs[per_element("task_job", -1, np.int32)],
            "attempt": per_element("task_attempt", 0, np.int32),
            "peak_rss": peak,
            "run": runs[per_element("task_run", -1, np.int32)],
        }

    def save(self) -> None:
        """Write ``provenance.npz`` whole, if anything changed since it was last written.

        A store that cannot take it (full, read-only) costs the provenance only: logged."""
        if not self._changed:
            return
        arrays: dict[str, np.ndarray] = {
            "seconds": self.seconds,
            "task": self.task,
            **{name: self.tasks[name][: self.n_tasks] for name, _, _ in _TASK_COLUMNS},
            "hosts": np.array(self.hosts, dtype=str),
            "jobs": np.array(self.jobs, dtype=str),
            "runs": np.array(self.runs, dtype=str),
            "size": np.array(self.size, dtype=np.int64),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # the stubs read ** as allow_pickle
        try:
            write_bytes(self.step_dir / PROVENANCE_FILE, buffer.getvalue(), make_folder=False)
        except OSError as e:
            logger.warning("cannot write %s: %s", self.step_dir / PROVENANCE_FILE, e)
        self._changed = False
        self._saved_at = time.monotonic()

    def save_if_due(self) -> None:
        """:meth:`save`, if the last write is older than the filesystem's period."""
        if not self._changed:
            return
        if self._every is None:
            local = on_local_filesystem(self.step_dir)
            self._every = SAVE_SECONDS_LOCAL if local else SAVE_SECONDS_SHARED
        if time.monotonic() - self._saved_at >= self._every:
            self.save()


def _code(table: list[str], text: str) -> int:
    """The index of ``text`` in ``table`` (added if new); -1 for "" (not recorded)."""
    if not text:
        return -1
    try:
        return table.index(text)
    except ValueError:
        table.append(text)
        return len(table) - 1
