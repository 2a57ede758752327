"""Following the Parsl tasks of one attempt of one step, to their results in the store.

A few tasks per worker are in flight; each finished task's codes are counted into the
step's record as it comes back, and a map task's files into the step's index.  A task
whose worker died is read from the store (its journal, ``task_writer``): what finished
is kept, the element that was running is the suspect.  A task whose result never comes
back, although its files are in the store, is taken from the store.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

import numpy as np

from ..element_folders import read_task_file, task_file_name
from ..errors import InfrastructureError
from ..files import DamagedFileError, on_local_filesystem
from ..ranges import common
from ..status import StepStatus
from ..store import (
    element_path,
    file_exists,
    present_indices,
    read_exception,
    remove_element,
    write_pickle,
)
from .chunking import ChunkSizer
from .failures import describe, exception_bytes
from .memory_kills import out_of_memory_kill
from .reuse import has_every_output
from .runner import runner
from .step_index import StepIndex
from .task_spec import (
    INFRASTRUCTURE,
    MISSING_OUTPUT,
    NOT_RUN,
    OK,
    USER_ERROR,
    TaskResult,
    TaskSpec,
)
from .task_writer import journal_path, read_journal, write_failures, write_values

__all__ = ["StepTasks", "remove_exceptions"]

# Parsl's names for a task whose worker (or whole worker pool) died under it.
_LOST = {"WorkerLost": "worker lost", "ManagerLost": "worker pool lost"}
#: How often a step's record is written while its tasks come back: on a shared
#: filesystem every write is a round trip to a server all users share.
_FLUSH_SECONDS = 0.5
_FLUSH_SECONDS_SHARED = 5.0
#: How often waiting loops look whether the run was told to stop.
STOP_POLL_SECONDS = 0.25
#: Without any task finishing for this long, look for tasks finished in the store.
_STALL_SECONDS = 5.0


def remove_exceptions(exc_dir: Path, todo: np.ndarray, again: bool) -> None:
    """Remove the exception files of the elements ``todo`` about to run: a stale one would
    read as this attempt's error if its task is lost, or make a running task look finished.

    ``again`` (an attempt after the first of this execution): ``todo`` is what the last
    attempt's tasks said failed or did not start, so their files are removed by name,
    whatever the driver's listing shows; another node's files may reach it a minute late.
    A first attempt has no tasks to go by (a resume after a killed driver): the folder is
    listed, made current first (``files.refresh_folder``).
    """
    if again:
        for n in todo.tolist():
            remove_element(str(exc_dir), n)
        return
    for n in common(present_indices(exc_dir, fresh=True), todo).tolist():
        remove_element(str(exc_dir), n)


class StepTasks:
    """The tasks of one attempt of step ``st``, on its executor.

    ``check_stop`` raises when the run is told to stop; ``save`` writes the step's record
    (counts as they come); ``note_helpers`` records Parsl's processes and batch jobs in
    the run's lock; ``log`` writes the step's log.
    """

    def __init__(
        self,
        st: StepStatus,
        check_stop: Callable[[], None],
        save: Callable[[], None],
        note_helpers: Callable[[], None],
        log: Callable[[str], None],
        index: StepIndex | None = None,
        step_dir: Path | None = None,
    ) -> None:
        assert st.executor is not None
        self.st, self.executor = st, st.executor
        #: A map's index: each task's files are added to it as the task comes back.
        self.index = index
        local = step_dir is not None and on_local_filesystem(step_dir)
        self.flush_seconds = _FLUSH_SECONDS if local else _FLUSH_SECONDS_SHARED
        self.check_stop, self.save = check_stop, save
        self.note_helpers, self.log = note_helpers, log
        #: Called once, when the first task comes back (Parsl and its workers are up then).
        self.on_first_result: Callable[[], None] | None = None

    def run(
        self,
        alone: list[tuple[int, ...]],
        rest: np.ndarray,
        make_task: Callable[[tuple[int, ...]], TaskSpec],
        sizer: ChunkSizer,
    ) -> list[TaskResult]:
        """Run the elements of ``alone`` one per task and ``rest`` in tasks that ``sizer``
        sizes, a few tasks per worker in flight; count elements as they finish."""
        st, executor = self.st, self.executor
        futures: dict[Future[TaskResult], TaskSpec] = {}
        position = 0

        def top_up() -> None:
            nonlocal position
            while len(futures) < sizer.in_flight and (alone or position < len(rest)):
                self.check_stop()
                if alone:
                    chunk = alone.pop(0)
                else:
                    size = sizer.next_size(len(rest) - position)
                    chunk = tuple(rest[position : position + size].tolist())
                    position += size
                task = make_task(chunk)
                futures[runner.submit(executor, task)] = task

        top_up()
        self.note_helpers()
        results: list[TaskResult] = []
        last_flush = time.monotonic()
        for fut, task in self._as_completed(futures):
            if not fut.done():  # finished in the store, but its result never came back
                tr = self._task_from_store(task)
            elif fut.exception() is None:
                tr = fut.result()
                sizer.observe(len(task.indices), tr.seconds)
            else:
                tr = self._lost(task, fut.exception() or RuntimeError())
            top_up()
            if self.on_first_result is not None:
                self.on_first_result()
                self.on_first_result = None
            if tr.batch_job and tr.batch_job not in st.batch_jobs:
                st.batch_jobs.append(tr.batch_job)
            st.n_done += tr.count(OK)
            st.n_infra += tr.count(INFRASTRUCTURE)
            st.n_failed += tr.count(USER_ERROR, MISSING_OUTPUT)
            if self.index is not None:
                self.index.add(tr)
            results.append(tr)
            if time.monotonic() - last_flush > self.flush_seconds:
                self.save()
                self.note_helpers()
                last_flush = time.monotonic()
        return results

    def _as_completed(
        self, futures: dict[Future[TaskResult], TaskSpec]
    ) -> Iterator[tuple[Future[TaskResult], TaskSpec]]:
        """Tasks as they finish, taken out of ``futures`` (which may grow meanwhile);
        stops when the run is told to.

        A worker that dies just after finishing a task can take the task's result with
        it: Parsl reports only the task it was running, and the finished one's future
        never resolves (seen in the soak test, Parsl 2026.10).  Its elements are in the
        store, though.  So when nothing has finished for a while, pending tasks whose every
        element has a file are looked at again after the same delay, and if they still
        look finished, they are taken from the store.

        On a shared filesystem the driver may see a worker's files up to a minute late: a
        lost result is then taken a little later, never earlier.  Stale files cannot make
        a running task look finished: the exception files of the elements a task reruns
        are removed before it is submitted, by name (``attempts``), and result files are
        opened, not ``stat``-ed (see ``_stored_code``).
        """
        quiet_since = time.monotonic()
        looked_finished: set[Future[TaskResult]] = set()
        while futures:
            finished, _ = wait(list(futures), STOP_POLL_SECONDS, return_when=FIRST_COMPLETED)
            self.check_stop()
            now = time.monotonic()
            if finished:
                quiet_since = now
            elif now - quiet_since > _STALL_SECONDS:
                quiet_since = now
                in_store = {f for f in futures if self._in_store(futures[f])}
                for fut in in_store & looked_finished:
                    self.log(
                        f"a Parsl task of {len(futures[fut].indices)} element(s) finished on "
                        "its worker, but its result never came back (its worker died right "
                        "after it); its elements are taken from the store"
                    )
                    yield fut, futures.pop(fut)
                looked_finished = in_store
            for fut in finished:
                yield fut, futures.pop(fut)

    def _in_store(self, task: TaskSpec) -> bool:
        """Has every element of ``task`` a result or an exception in the store?

        A map task: its files are written at its end, the last output's last, and its
        journal removed after them (``task_writer``): two ``open`` calls.  A plain call:
        its own files.
        """
        if task.name:
            step_dir = Path(task.step_dir)
            file = task_file_name(task.name)
            written = file_exists(step_dir / "return_values" / self.st.outputs[-1] / file)
            written = written or file_exists(step_dir / "exception" / file)
            return written and not file_exists(journal_path(task.step_dir, task.name))
        return all(self._stored_code(task, n) != NOT_RUN for n in reversed(task.indices))

    def _task_files(self, task: TaskSpec) -> tuple[np.ndarray, np.ndarray, list[bytes]] | None:
        """A map task's files: the elements in its output files, those in its exception
        file and their exceptions; None when they do not hold every element of the task."""
        step_dir = Path(task.step_dir)
        file = task_file_name(task.name)
        try:
            ok, _ = read_task_file(step_dir / "return_values" / self.st.outputs[-1] / file)
        except (FileNotFoundError, DamagedFileError):
            ok = np.empty(0, np.int64)
        try:
            failed, exceptions = read_task_file(step_dir / "exception" / file)
        except (FileNotFoundError, DamagedFileError):
            failed, exceptions = np.empty(0, np.int64), []
        if len(ok) + len(failed) < len(task.indices):
            return None
        return ok, failed, exceptions

    def _task_from_store(self, task: TaskSpec) -> TaskResult:
        """A finished task's result, from its files (its own came back lost)."""
        if not task.name:
            return TaskResult.of([(n, *self._from_store(task, n)) for n in task.indices])
        files = self._task_files(task)
        if files is None:  # no longer whole: as if lost before it started
            return TaskResult.of([(n, NOT_RUN, "") for n in task.indices])
        ok, failed, exceptions = files
        verdicts = [(n, OK, "") for n in ok.tolist()]
        verdicts += [
            (n, USER_ERROR, _exception_text(data))
            for n, data in zip(failed.tolist(), exceptions, strict=True)
        ]
        return TaskResult.of(verdicts, name=task.name)

    def _stored_code(self, task: TaskSpec, n: int) -> int:
        """A plain call's OK, USER_ERROR, or NOT_RUN for no file: files are opened, not read.

        Only for tasks whose result Parsl did not bring back (the task's own codes are the
        truth otherwise).  Opening asks the file server, so a file another node removed is
        not found in a stale cache; a file another node wrote moments ago may be missed,
        and the element then reads as NOT_RUN: run again, never failed.
        """
        step_dir = Path(task.step_dir)
        if has_every_output(step_dir, self.st.outputs, n):
            return OK
        return USER_ERROR if file_exists(element_path(step_dir / "exception", n)) else NOT_RUN

    def _from_store(self, task: TaskSpec, n: int) -> tuple[int, str]:
        """What the store says of a plain call's element ``n``: its code, and its message."""
        code = self._stored_code(task, n)
        if code != USER_ERROR:
            return code, ""
        return code, read_exception(element_path(Path(task.step_dir) / "exception", n))

    def _lost(self, task: TaskSpec, exc: BaseException) -> TaskResult:
        """Results for a task that Parsl reports failed: its worker died, or worse.

        Elements that finished before the failure are kept (a map task's journal, a plain
        call's files).  A worker runs its task's elements in order, so the first one
        without a record was running when the worker died: it is the suspect (402,
        retried alone), and those after it never started (retried without counting a
        try).  A record that says the worker ended itself (an element past its walltime
        that ignored it) leaves no suspect.
        """
        cause = _LOST.get(type(exc).__name__, f"task failed in Parsl ({type(exc).__name__})")
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        if type(exc).__name__ in ("BadStateException", "TooManyJobFailuresError"):
            jobs = runner.batch_jobs(self.executor)
            cause = "block failed" + (f" (scheduler job(s) {', '.join(jobs)})" if jobs else "")
        # Only a lost worker or pool says where the task stopped; any other failure (a
        # block that cannot start) hit every element alike.
        in_order = type(exc).__name__ in _LOST
        error = InfrastructureError(cause, detail)
        if in_order:  # a pool that Slurm killed for memory (``memory_kills``)
            logdir, blocks = runner.blocks(self.executor)
            oom = out_of_memory_kill(exc, logdir, blocks, self.st.name, task.memory_mb)
            if oom is not None:
                cause, detail, error = "out of memory", str(oom), oom
        self.log(f"a Parsl task of {len(task.indices)} element(s) failed: {cause}: {detail}")
        if task.name:
            return self._lost_map_task(task, error, in_order)
        return self._lost_call(task, error, in_order)

    def _lost_map_task(
        self, task: TaskSpec, error: InfrastructureError, in_order: bool
    ) -> TaskResult:
        """A lost map task: from its files if it wrote them, else from its journal.

        What the journal keeps is written as the task's ``-salvaged`` files by the driver
        (the worker may still be alive, a pool cut off by a stalled network, and write its
        own files later: those are never overwritten, and the index names the driver's).
        """
        if self._task_files(task) is not None:
            return self._task_from_store(task)
        records = {r[0]: r for r in read_journal(journal_path(task.step_dir, task.name))}
        ended = any(r[5] for r in records.values())
        kept: dict[int, list[bytes]] = {}
        failed: list[tuple[int, int, str, bytes]] = []
        verdicts: list[tuple[int, int, str]] = []
        suspect_found = ended
        for n in task.indices:
            record = records.get(n)
            if record is not None and record[1] == OK and record[2] is not None:
                kept[n] = record[2]
            elif record is not None and record[1] != OK:
                failed.append((n, record[1], _exception_text(record[2]), record[2]))
            elif suspect_found or (record is not None and record[1] == OK):
                verdicts.append((n, NOT_RUN, ""))  # not run, or its value was not kept
            else:
                suspect_found = in_order
                failed.append((n, INFRASTRUCTURE, describe(error), b""))
        name = f"{task.name}-salvaged"
        failures = [(n, code, message) for n, code, message, _ in failed]
        try:
            if failed:
                pickles = [data or exception_bytes(error) for *_, data in failed]
                write_failures(task.step_dir, name, [n for n, *_ in failed], pickles)
            if kept:
                write_values(task.step_dir, name, tuple(self.st.outputs), kept)
        except OSError as e:  # a full store: the kept values are computed again
            self.log(f"cannot keep the finished elements of a lost task: {e}")
            verdicts += [(n, NOT_RUN, "") for n in kept]
            kept = {}
        with contextlib.suppress(OSError):
            os.unlink(journal_path(task.step_dir, task.name))
        ordered = [(n, OK, "") for n in kept] + failures + verdicts
        return TaskResult.of(ordered, name=name)

    def _lost_call(self, task: TaskSpec, error: InfrastructureError, in_order: bool) -> TaskResult:
        """A lost plain call: its own files say whether it finished.

        Files another node wrote may reach this driver late (a shared filesystem's
        caches): a call that finished may then look not started, and is run again.  So
        the suspect's result files, if any, are removed with its verdict: an element the
        driver counts as failed has no result, whatever it left.
        """
        step_dir = Path(task.step_dir)
        verdicts: list[tuple[int, int, str]] = []
        suspect_found = False
        for n in task.indices:
            exc_file = element_path(step_dir / "exception", n)
            code, message = self._from_store(task, n)  # done, failed, or hit its walltime
            if code != NOT_RUN or suspect_found:
                verdicts.append((n, code, message))
            else:
                suspect_found = in_order
                with contextlib.suppress(OSError):  # a full store: the message still counts
                    for out in self.st.outputs:  # whole or absent: never a partial result
                        remove_element(str(step_dir / "return_values" / out), n)
                    write_pickle(exc_file, error)
                verdicts.append((n, INFRASTRUCTURE, describe(error)))
        return TaskResult.of(verdicts)


def _exception_text(data: bytes | None) -> str:
    """``"Type: message"`` of a pickled exception (never raises)."""
    import cloudpickle

    try:
        exc = cloudpickle.loads(data) if data else None
    except Exception as e:
        return f"(its exception cannot be read: {type(e).__name__}: {e})"
    return f"{type(exc).__name__}: {exc}"[:500] if exc is not None else ""
