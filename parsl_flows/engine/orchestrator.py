"""Carry out one run: start each step when its inputs exist, skip it when they never will.

The orchestrator runs in a thread of the driver.  It keeps a table of where every named
value lives (a workflow input, a plain step's output file, a map's element folder), starts
a node as soon as all the names it reads are there, and skips a node whose inputs will
never be produced, logging which ones.  Each node runs in its own thread, so steps whose
inputs are ready run at the same time.  Elements are computed on Parsl workers; this
module only moves paths and small status records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EXIT_CODES, InfrastructureError
from ..lock import RunLock
from ..mapspec import ArraySpec, MapSpec, MapSpecError
from ..ranges import common, compress, unique_indices, without
from ..status import RunRecord, StepStatus
from ..store import (
    FileBasedObjectArray,
    drop_damaged,
    element_path,
    load_pickle,
    present_indices,
    read_exception,
    write_pickle,
)
from ..workflow import Call, Map, Workflow, mapped_shape
from . import stopping
from .chunking import ChunkSizer
from .datasets import dataset_writer
from .hashing import KeyBook, combine, value_key
from .reuse import KEYS_FILE, present_elements, take_from_run
from .runner import runner
from .worker import (
    INFRASTRUCTURE,
    MISSING_OUTPUT,
    NOT_RUN,
    OK,
    USER_ERROR,
    Source,
    TaskResult,
    TaskSpec,
)

__all__ = ["Execution", "RunInterrupted", "StepLog"]

logger = logging.getLogger(__name__)

# Parsl's names for a task whose worker (or whole worker pool) died under it.
_LOST = {"WorkerLost": "worker lost", "ManagerLost": "worker pool lost"}
_FLUSH_SECONDS = 0.5
_MAX_LOGGED_FAILURES = 10
#: Extra attempts for an element lost to infrastructure failures, beyond the user's budget.
INFRA_RETRIES = 3
#: How often waiting loops look whether the run was told to stop.
_STOP_POLL_SECONDS = 0.25
#: Without any task finishing for this long, look for tasks finished in the store.
_STALL_SECONDS = 5.0


class RunInterrupted(BaseException):
    """Unwinds the orchestrator's threads when the run is told to stop (Ctrl-C).

    A BaseException, so that no ``except Exception`` on the way records it as a failure of
    a step: an interrupted step is unfinished, not failed.
    """


class StepLog:
    """Appends timestamped lines to a ``log.txt`` (and to Python logging)."""

    def __init__(self, path: Path, prefix: str = "") -> None:
        self.path = path
        self.prefix = prefix
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            with self._lock, open(self.path, "a") as f:
                for line in message.splitlines() or [""]:
                    f.write(f"{stamp} {line}\n")
        except OSError as e:  # a full or read-only store must not stop the run
            logger.warning("%s%s (not in %s: %s)", self.prefix, message, self.path, e)
            return
        logger.info("%s%s", self.prefix, message)


def exit_code_of(codes: Iterable[int]) -> int:
    """A step's exit code from its elements': 401 if any raised, else 403, else 402, else 0."""
    seen = set(codes)
    for code in (USER_ERROR, MISSING_OUTPUT, INFRASTRUCTURE):
        if code in seen:
            return code
    return OK


class Execution:
    """One run being carried out by this driver (a new run, a resumed one, or a restart)."""

    def __init__(
        self,
        run_dir: Path,
        workflow: Workflow,
        inputs: dict[str, Any],
        statuses: dict[str, StepStatus],
        parsl_run_dir: Path,
        lock: RunLock,
        reuse_from: Path | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.workflow = workflow
        self.inputs = inputs
        self.statuses = statuses
        self.parsl_run_dir = parsl_run_dir
        self.lock = lock
        self.reuse_from = reuse_from
        self.log = StepLog(run_dir / "log.txt", prefix=f"[{run_dir.name}] ")
        self.thread = threading.Thread(
            target=self._main, name=f"parsl_flows-{run_dir.name}", daemon=False
        )
        self.keys = KeyBook()
        self._values: dict[str, Any] = {}  # value files already in memory (the inputs)
        self.done = threading.Event()
        self.stopping = threading.Event()
        self.stop_reason = ""
        self._datasets = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataset")
        # How the run ended, kept here too for a store that cannot take run.json (full).
        self.outcome: str = "running"
        self.outcome_code: int | None = None

    def start(self) -> None:
        stopping.register(self)
        self.thread.start()

    def interrupt(self, reason: str = "interrupted by Ctrl-C (SIGINT)") -> None:
        """Stop this run now, as Ctrl-C does; see :func:`stopping.interrupt`."""
        stopping.interrupt([self], reason)

    def request_stop(self, reason: str) -> None:
        """Stop submitting now; the run ends 'interrupted' once its threads have unwound."""
        self.stop_reason = self.stop_reason or reason
        self.stopping.set()

    def _check_stop(self) -> None:
        if self.stopping.is_set():
            raise RunInterrupted(self.stop_reason)

    # -- the run -----------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._carry_out()
        finally:  # whatever happened (even a full disk), waiters must not wait forever
            stopping.unregister(self)
            self.done.set()

    def _carry_out(self) -> None:
        record = RunRecord.load(self.run_dir)
        try:
            exit_code = self._schedule()
            record.exit_code = exit_code
            record.status = "finished" if exit_code == 0 else "failed"
            record.message = "" if exit_code == 0 else EXIT_CODES[exit_code]
        except RunInterrupted:
            record.status = "interrupted"
            record.message = f"{self.stop_reason}; resume() carries it on"
        except BaseException as e:  # the engine itself failed: say so in the run, not only here
            logger.exception("run %s failed", self.run_dir.name)
            record.status = "failed"
            record.message = f"the engine failed: {type(e).__name__}: {e}"
        # The maps' dataset.nc files were written beside the run; the run's own needs them.
        self._datasets.shutdown(wait=True, cancel_futures=record.status == "interrupted")
        record.finished = time.time()
        self.outcome, self.outcome_code = record.status, record.exit_code
        if record.status != "interrupted" and any(isinstance(n, Map) for n in self.workflow.nodes):
            outcome = [record.status, record.exit_code]
            error = dataset_writer.write("run", self.run_dir, outcome=outcome)
            if error:  # the results are in the store either way
                self.log(f"could not write the run's dataset.nc: {error}")
        try:
            record.save(self.run_dir)
        except OSError as e:  # a full or read-only store: the log may still take it
            logger.error("run %s: cannot save run.json: %s", self.run_dir.name, e)
        if record.message and record.status != "finished":
            self.log(record.message)
        self.log(f"workflow {record.status}: exit code {record.exit_code}")
        try:
            self.lock.release()
        except OSError as e:
            logger.error("run %s: cannot remove its lock: %s", self.run_dir.name, e)

    def _note_helpers(self) -> None:
        dfk = runner.dfk
        parsl_run_dir = None if dfk is None else str(dfk.run_dir)
        try:
            self.lock.note_helpers(parsl_run_dir, runner.all_batch_jobs())
        except OSError as e:  # a full store: the run goes on; a successor finds less to stop
            logger.warning("run %s: cannot update its lock: %s", self.run_dir.name, e)

    def _schedule(self) -> int:
        wf = self.workflow
        self.log(f"workflow {wf.name!r} started ({len(wf.nodes)} steps)")
        runner.executors_for(wf.environment, self.parsl_run_dir)
        self._note_helpers()
        sources: dict[str, Source] = {
            name: Source("value", str(self.run_dir / "inputs" / f"{name}.pickle"))
            for name in self.inputs
        }
        for name, value in self.inputs.items():
            self._values[sources[name].path] = value
            self.keys.value[name], why = value_key(value)
            if why:
                self.keys.why[name] = why
        producers = wf.producers()
        missing: dict[str, str] = {}  # output -> why it will never exist
        pending = list(wf.nodes)
        running: dict[Future[dict[str, Source]], Call] = {}
        workers = max(1, len(pending))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step") as pool:
            while pending or running:
                for node in list(pending):
                    deps = [p for p in node.parameters if p in producers]
                    lost = [p for p in deps if p in missing]
                    if lost:
                        pending.remove(node)
                        self._skip(node, lost, missing)
                        for out in node.outputs:
                            missing[out] = f"{node.name} was skipped"
                    elif all(p in sources for p in deps):
                        pending.remove(node)
                        params = {p: sources[p] for p in node.parameters if p in sources}
                        running[pool.submit(self._execute, node, params)] = node
                if not running:
                    if pending:  # cannot happen for a validated plan; never hang if it does
                        raise RuntimeError(f"steps {[n.name for n in pending]} can never start")
                    break
                finished, _ = wait(running, _STOP_POLL_SECONDS, return_when=FIRST_COMPLETED)
                self._check_stop()
                for fut in finished:
                    node = running.pop(fut)
                    produced = fut.result()
                    sources.update(produced)
                    for out in node.outputs:
                        if out not in produced:
                            missing[out] = f"{node.name} failed"
        failed = [s.name for s in self.statuses.values() if s.exit_code != 0]
        if failed:
            self.log(f"steps not ok: {', '.join(failed)}")
            return 450
        return 0

    def _skip(self, node: Call, lost: list[str], missing: dict[str, str]) -> None:
        st = self.statuses[node.name]
        st.state = "skipped"
        st.exit_code = None
        st.missing_inputs = lost
        reasons = "; ".join(f"{p}: {missing[p]}" for p in lost)
        st.message = f"skipped because of missing input(s) {', '.join(lost)} ({reasons})"
        st.finished = time.time()
        self._save(st)
        self.step_log(st)(st.message)
        self.log(f"step {node.name} {st.message}")

    # -- one node --------------------------------------------------------------------------

    def _save(self, st: StepStatus) -> None:
        """Write a step's status.json; a full or read-only store only warns (the run goes on)."""
        try:
            st.save(self.step_dir(st))
        except OSError as e:
            logger.warning("[%s:%s] cannot save status.json: %s", self.run_dir.name, st.name, e)

    def _write_step_dataset(self, step_dir: Path) -> None:
        error = dataset_writer.write("step", step_dir)
        if error:  # the elements are in the store either way
            logger.warning("could not write %s: %s", step_dir / "dataset.nc", error)

    def step_dir(self, st: StepStatus) -> Path:
        return self.run_dir / "steps" / st.dirname

    def step_log(self, st: StepStatus) -> StepLog:
        return StepLog(self.step_dir(st) / "log.txt", prefix=f"[{self.run_dir.name}:{st.name}] ")

    def _execute(self, node: Call, params: dict[str, Source]) -> dict[str, Source]:
        st = self.statuses[node.name]
        st.state = "running"
        st.started = time.time()
        st.executor = runner.executor_for(
            self.workflow.environment, node.step.resources, self.parsl_run_dir
        )
        st.exit_code = None
        st.message = ""
        st.missing_inputs = []
        st.n_done = st.n_failed = st.n_infra = st.n_reused = st.n_submitted = 0
        self._save(st)
        self.log(f"step {node.name} started")
        try:
            produced = self._execute_elements(node, st, params)
        except RunInterrupted:
            self._save(st)  # the counts so far; the step stays unfinished
            raise
        except Exception as e:  # an engine error in one step must not stop the others
            logger.exception("step %s failed in the engine", node.name)
            st.exit_code = st.exit_code or INFRASTRUCTURE
            st.message = f"the engine failed while running this step: {type(e).__name__}: {e}"
            self.step_log(st)(st.message)
            produced = {}
        if st.state != "skipped":
            st.state = "finished" if st.exit_code == 0 else "failed"
        st.finished = time.time()
        self._save(st)
        if isinstance(node, Map) and not self.stopping.is_set():
            # dataset.nc is written beside the run, not before the steps that wait for
            # this one: a second or more for a big map.
            self._datasets.submit(self._write_step_dataset, self.step_dir(st))
        if st.state == "skipped":
            verdict = st.message
        else:
            meaning = f" ({EXIT_CODES.get(st.exit_code or 0, '')})" if st.exit_code else ""
            verdict = f"exit code {st.exit_code}{meaning}"
        self.log(f"step {node.name} {st.state}: {verdict}")
        return produced

    def _execute_elements(
        self, node: Call, st: StepStatus, params: dict[str, Source]
    ) -> dict[str, Source]:
        """Work out which elements to compute, take what exists, compute the rest."""
        step_dir = self.step_dir(st)
        log = self.step_log(st)
        if isinstance(node, Map):
            try:
                shape = node.mapspec.shape(
                    {a.name: self._shape_of(params[a.name], a) for a in node.mapspec.inputs}
                )
            except (MapSpecError, ValueError) as e:
                st.exit_code = USER_ERROR
                st.message = f"the mapped inputs do not fit the mapspec: {e}"
                log(st.message)
                return {}
            st.shape = list(shape)
            wanted = np.flatnonzero(self._submittable(node.mapspec, params, shape).ravel())
            total = int(np.prod(shape, dtype=np.int64))
            st.n_inputs_masked = total - len(wanted)
            if total and not len(wanted):
                st.state = "skipped"
                st.message = "skipped: every element has a masked mapped input"
                log(st.message)
                return {}
        else:
            shape, wanted, total = (), np.array([0]), 1
        keys = self._element_keys(node, params, shape, log)
        if keys is not None:
            np.save(step_dir / KEYS_FILE, keys)
        self._reuse(node, st, keys, wanted, log)
        have = present_elements(step_dir, node.outputs, wanted)
        if len(have):
            have = self._drop_damaged(step_dir, node.outputs, have, log)
        st.n_done = st.n_reused = len(have)
        todo = without(wanted, have)
        if len(have) and not st.reused_from:
            log(f"{len(have)} of {len(wanted)} elements are already in the store (resumed)")
        codes, messages, exhausted = self._attempts(node, st, params, shape, todo, log)
        st.exit_code = 410 if exhausted else exit_code_of(codes.values())
        if isinstance(node, Map):
            self._log_map_outcome(log, st, shape, codes, messages)
        else:
            self._log_call_outcome(log, st, codes.get(0, OK), messages.get(0, ""))
        if isinstance(node, Map):
            if st.n_done == 0 and total:
                self.keys.array.update({out: None for out in node.outputs})
                return {}
            self.keys.note_map_outputs(node.outputs, step_dir, keys)
            return {
                out: Source("array", str(step_dir / "return_values" / out), shape)
                for out in node.outputs
            }
        if st.exit_code != OK:
            return {}
        for out in node.outputs:
            self.keys.value[out] = None if keys is None else combine(keys.tobytes(), out)
        return {
            out: Source("value", str(element_path(step_dir / "return_values" / out, 0)))
            for out in node.outputs
        }

    # -- attempts --------------------------------------------------------------------------

    def _attempts(
        self,
        node: Call,
        st: StepStatus,
        params: dict[str, Source],
        shape: tuple[int, ...],
        todo: np.ndarray,
        log: Callable[[str], None],
    ) -> tuple[dict[int, int], dict[int, str], bool]:
        """Submit ``todo``, then resubmit what failed, as the step's restart policy allows.

        Returns the final code and message of each element that failed, and whether some
        element used up its budget.
        """
        step_dir = self.step_dir(st)
        spec = str(node.mapspec) if isinstance(node, Map) else None
        fixed: int | None = 1  # a plain call: one task of one element
        if isinstance(node, Map):
            fixed = None if node.chunksize == "auto" else int(node.chunksize)
        assert st.executor is not None
        workers = runner.worker_count(st.executor)

        def make_task(chunk: tuple[int, ...]) -> TaskSpec:
            return TaskSpec(
                str(step_dir / "step.pickle"),
                str(step_dir),
                chunk,
                shape,
                params,
                spec,
                node.retry_on,
                node.step.resources.walltime_s,
                os.getpid(),
            )

        # Per element of the step, as arrays: no per-element Python for elements that succeed.
        total = max(1, int(np.prod(shape, dtype=np.int64)))
        tries = np.zeros(total, dtype=np.int32)
        user_tries = np.zeros(total, dtype=np.int32)
        infra_tries = np.zeros(total, dtype=np.int32)
        final = np.full(total, NOT_RUN, dtype=np.int16)  # NOT_RUN: never ran here
        # Elements that were running when their worker died run alone from then on, so an
        # element that kills its worker costs only itself.
        suspects: set[int] = set()
        messages: dict[int, str] = {}
        first = len(todo)
        st.submitted_elements = compress(todo)
        st.n_submitted = first
        while len(todo):
            attempt = len(st.attempts) + 1
            if not tries.any():  # the first attempt of this execution
                masked = f" ({st.n_inputs_masked} have masked inputs)" if st.n_inputs_masked else ""
                sizes = "tasks sized to the work" if fixed is None else f"tasks of {fixed}"
                log(
                    f"attempt {attempt}: submitting {len(todo)} elements{masked} to executor "
                    f"{st.executor!r} ({workers} workers, {sizes}); "
                    f"submitted_elements={compress(todo)}"
                )
            else:
                log(f"attempt {attempt}: resubmitting {len(todo)} of {first} elements")
            # A stale exception would read as this attempt's error if its task is lost.
            for n in common(present_indices(step_dir / "exception"), todo):
                element_path(step_dir / "exception", int(n)).unlink(missing_ok=True)
            self._save(st)
            alone: list[tuple[int, ...]] = [(n,) for n in todo.tolist() if n in suspects]
            rest = without(todo, np.array([c[0] for c in alone], dtype=np.int64))
            results = self._run_tasks(alone, rest, make_task, ChunkSizer(workers, fixed), st, log)
            retry: list[np.ndarray] = []
            for tr in results:
                ran = tr.codes != NOT_RUN
                retry.append(tr.indices[~ran])  # its task was lost before it started: no try
                idx, codes = tr.indices[ran], tr.codes[ran]
                tries[idx] += 1
                final[idx] = codes
                messages.update({n: m for n, (m, _) in tr.failures.items()})
                infra = idx[codes == INFRASTRUCTURE]
                infra_tries[infra] += 1
                suspects.update(infra.tolist())
                again = infra[infra_tries[infra] <= INFRA_RETRIES]
                st.n_infra -= len(again)  # back to "remaining" until the next attempt
                retry.append(again)
                user = idx[(codes != OK) & (codes != INFRASTRUCTURE)]
                user_tries[user] += 1
                again = np.array(
                    [n for n in user.tolist() if tr.failures[n][1]], dtype=np.int64
                )  # retryable: the step's retry_on says so
                again = again[user_tries[again] < node.max_restarts]
                st.n_failed -= len(again)
                retry.append(again)
            self._record_attempt(st, attempt, todo, results)
            not_run = sum(tr.count(NOT_RUN) for tr in results)
            log(
                f"attempt {attempt}: {sum(tr.count(OK) for tr in results)} succeeded, "
                f"{sum(tr.count(USER_ERROR, MISSING_OUTPUT) for tr in results)} failed, "
                f"{sum(tr.count(INFRASTRUCTURE) for tr in results)} lost to infrastructure"
                + (f", {not_run} not started (their task was lost)" if not_run else "")
            )
            todo = unique_indices(np.concatenate(retry)) if retry else np.empty(0, np.int64)
        ran = final != NOT_RUN
        failed = ran & (final != OK)
        st.element_codes = {
            str(c): compress(np.flatnonzero(final == c))
            for c in unique_indices(final[failed]).tolist()
        }
        st.element_attempts = {
            str(t): compress(np.flatnonzero(ran & (tries == t)))
            for t in unique_indices(tries[ran]).tolist()
        }
        exhausted = node.max_restarts > 1 and bool(
            (failed & (user_tries >= node.max_restarts)).any()
        )
        failed_codes = {int(n): int(final[n]) for n in np.flatnonzero(failed)}
        return failed_codes, {n: messages[n] for n in failed_codes}, exhausted

    def _record_attempt(
        self, st: StepStatus, attempt: int, todo: np.ndarray, results: list[TaskResult]
    ) -> None:
        st.attempts.append(
            {
                "attempt": attempt,
                "submitted_elements": compress(todo),
                "n_submitted": len(todo),
                "succeeded": sum(tr.count(OK) for tr in results),
                "failed": sum(tr.count(USER_ERROR, MISSING_OUTPUT) for tr in results),
                "infrastructure": sum(tr.count(INFRASTRUCTURE) for tr in results),
            }
        )

    def _drop_damaged(
        self, step_dir: Path, outputs: Iterable[str], have: np.ndarray, log: Callable[[str], None]
    ) -> np.ndarray:
        """Results already in the store, less damaged files, which are deleted and recomputed."""
        damaged: set[int] = set()
        for out in outputs:
            damaged.update(drop_damaged(step_dir / "return_values" / out, have))
        if not damaged:
            return have
        for n in damaged:  # an element is whole or absent
            for out in outputs:
                element_path(step_dir / "return_values" / out, n).unlink(missing_ok=True)
        log(
            f"{len(damaged)} element file(s) were damaged (truncated or overwritten) and are "
            f"computed again: elements {compress(np.array(sorted(damaged)))}"
        )
        return without(have, np.array(sorted(damaged), dtype=np.int64))

    # -- keys and reuse --------------------------------------------------------------------

    def _element_keys(
        self,
        node: Call,
        params: dict[str, Source],
        shape: tuple[int, ...],
        log: Callable[[str], None],
    ) -> np.ndarray | None:
        """The reuse key of every element (a 0-d array for a plain call), or None."""
        keys, why = self.keys.node_keys(node, params, shape, self._value)
        if keys is None and self.reuse_from is not None:
            log(f"results of this step cannot be reused later: {why}")
        return keys

    def _reuse(
        self,
        node: Call,
        st: StepStatus,
        keys: np.ndarray | None,
        wanted: np.ndarray,
        log: Callable[[str], None],
    ) -> None:
        """Link matching results of the run this one restarts from."""
        if self.reuse_from is None or keys is None:
            return
        taken = take_from_run(
            self.reuse_from, node.name, list(node.outputs), self.step_dir(st), keys, wanted
        )
        if taken is None:
            return
        if not taken:
            log(f"nothing to reuse from run {self.reuse_from.name} (code or inputs changed)")
            return
        st.reused_from = self.reuse_from.name
        log(f"reused {taken} of {len(wanted)} elements from run {self.reuse_from.name}")

    # -- shapes and masks ------------------------------------------------------------------

    def _value(self, src: Source) -> Any:
        if src.path not in self._values:
            self._values[src.path] = load_pickle(Path(src.path))
        return self._values[src.path]

    def _shape_of(self, src: Source, arr: ArraySpec) -> tuple[int, ...]:
        if src.kind == "array":
            return src.shape
        return mapped_shape(self._value(src), arr.rank)

    def _present_mask(self, src: Source, arr: ArraySpec) -> np.ndarray | None:
        """Where ``arr``'s input has a value, over its ``rank`` mapped axes (None: everywhere)."""
        if src.kind == "array":
            present = ~FileBasedObjectArray(src.path, src.shape).mask
        else:
            value = self._value(src)
            if not isinstance(value, np.ma.MaskedArray):
                return None
            present = ~np.ma.getmaskarray(value)
        extra = tuple(range(arr.rank, present.ndim))
        return np.asarray(present.any(axis=extra) if extra else present)

    def _submittable(
        self, spec: MapSpec, params: dict[str, Source], shape: tuple[int, ...]
    ) -> np.ndarray:
        """Elements whose mapped inputs all exist (``:`` axes need one present value)."""
        out = np.ones(shape, dtype=bool)
        for arr in spec.inputs:
            present = self._present_mask(params[arr.name], arr)
            if present is None:
                continue
            whole = tuple(k for k, a in enumerate(arr.axes) if a is None)
            if whole:
                present = np.asarray(present.any(axis=whole))
            out &= spec.on_output_grid(arr.name, present, shape)
        return out

    # -- tasks -----------------------------------------------------------------------------

    def _run_tasks(
        self,
        alone: list[tuple[int, ...]],
        rest: np.ndarray,
        make_task: Callable[[tuple[int, ...]], TaskSpec],
        sizer: ChunkSizer,
        st: StepStatus,
        log: Callable[[str], None],
    ) -> list[TaskResult]:
        """Run the elements of ``alone`` one per task and ``rest`` in tasks that ``sizer``
        sizes, a few tasks per worker in flight; count elements as they finish."""
        executor = st.executor
        assert executor is not None
        futures: dict[Future[TaskResult], TaskSpec] = {}
        position = 0

        def top_up() -> None:
            nonlocal position
            while len(futures) < sizer.in_flight and (alone or position < len(rest)):
                self._check_stop()
                if alone:
                    chunk = alone.pop(0)
                else:
                    size = sizer.next_size(len(rest) - position)
                    chunk = tuple(rest[position : position + size].tolist())
                    position += size
                task = make_task(chunk)
                futures[runner.submit(executor, task)] = task

        top_up()
        self._note_helpers()
        results: list[TaskResult] = []
        last_flush = time.monotonic()
        for fut, task in self._as_completed(futures, st, log):
            if not fut.done():  # finished in the store, but its result never came back
                tr = TaskResult.of([(n, *self._from_store(task, n, st)) for n in task.indices])
            elif fut.exception() is None:
                tr = fut.result()
                sizer.observe(len(task.indices), tr.seconds)
            else:
                tr = self._lost(task, st, fut.exception() or RuntimeError(), log)
            top_up()
            if tr.batch_job and tr.batch_job not in st.batch_jobs:
                st.batch_jobs.append(tr.batch_job)
            st.n_done += tr.count(OK)
            st.n_infra += tr.count(INFRASTRUCTURE)
            st.n_failed += tr.count(USER_ERROR, MISSING_OUTPUT)
            results.append(tr)
            if time.monotonic() - last_flush > _FLUSH_SECONDS:
                self._save(st)
                self._note_helpers()
                last_flush = time.monotonic()
        return results

    def _as_completed(
        self,
        futures: dict[Future[TaskResult], TaskSpec],
        st: StepStatus,
        log: Callable[[str], None],
    ) -> Iterator[tuple[Future[TaskResult], TaskSpec]]:
        """Tasks as they finish, taken out of ``futures`` (which may grow meanwhile);
        stops when the run is told to.

        A worker that dies just after finishing a task can take the task's result with
        it: Parsl reports only the task it was running, and the finished one's future
        never resolves (seen in the soak test, Parsl 2026.10).  Its elements are in the
        store, though.  So when nothing has finished for a while, pending tasks whose every
        element has a file are looked at again after the same delay, and if they still
        look finished, they are taken from the store.
        """
        quiet_since = time.monotonic()
        looked_finished: set[Future[TaskResult]] = set()
        while futures:
            finished, _ = wait(list(futures), _STOP_POLL_SECONDS, return_when=FIRST_COMPLETED)
            self._check_stop()
            now = time.monotonic()
            if finished:
                quiet_since = now
            elif now - quiet_since > _STALL_SECONDS:
                quiet_since = now
                in_store = {f for f in futures if self._in_store(futures[f], st)}
                for fut in in_store & looked_finished:
                    log(
                        f"a Parsl task of {len(futures[fut].indices)} element(s) finished on "
                        "its worker, but its result never came back (its worker died right "
                        "after it); its elements are taken from the store"
                    )
                    yield fut, futures.pop(fut)
                looked_finished = in_store
            for fut in finished:
                yield fut, futures.pop(fut)

    def _in_store(self, task: TaskSpec, st: StepStatus) -> bool:
        """Has every element of ``task`` a result or an exception file?

        Elements run in order, so the last one is looked at first: one ``stat`` for a
        task that is still running.
        """
        step_dir = Path(task.step_dir)
        return all(
            all(element_path(step_dir / "return_values" / o, n).exists() for o in st.outputs)
            or element_path(step_dir / "exception", n).exists()
            for n in reversed(task.indices)
        )

    def _from_store(self, task: TaskSpec, n: int, st: StepStatus) -> tuple[int, str]:
        """What the store says of element ``n``: OK, USER_ERROR, or NOT_RUN for no file."""
        step_dir = Path(task.step_dir)
        if all(element_path(step_dir / "return_values" / o, n).exists() for o in st.outputs):
            return OK, ""
        exc_file = element_path(step_dir / "exception", n)
        if exc_file.exists():
            return USER_ERROR, read_exception(exc_file)
        return NOT_RUN, ""

    def _lost(
        self, task: TaskSpec, st: StepStatus, exc: BaseException, log: Callable[[str], None]
    ) -> TaskResult:
        """Results for a task that Parsl reports failed: its worker died, or worse.

        Elements that finished before the failure have their files and count as done.  A
        worker runs its task's elements in order, so the first one without a result was
        running when the worker died: it is the suspect (402, retried alone), and those
        after it never started (retried without counting a try).
        """
        cause = _LOST.get(type(exc).__name__, f"task failed in Parsl ({type(exc).__name__})")
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        if type(exc).__name__ in ("BadStateException", "TooManyJobFailuresError"):
            jobs = runner.batch_jobs(str(st.executor))
            cause = "block failed" + (f" (scheduler job(s) {', '.join(jobs)})" if jobs else "")
        step_dir = Path(task.step_dir)
        verdicts: list[tuple[int, int, str]] = []
        # Only a lost worker or pool says where the task stopped; any other failure (a
        # block that cannot start) hit every element alike.
        in_order = type(exc).__name__ in _LOST
        suspect_found = False
        for n in task.indices:
            exc_file = element_path(step_dir / "exception", n)
            code, message = self._from_store(task, n, st)  # done, failed, or hit its walltime
            if code != NOT_RUN or suspect_found:
                verdicts.append((n, code, message))
            else:
                suspect_found = in_order
                error = InfrastructureError(cause, detail)
                with contextlib.suppress(OSError):  # a full store: the message still counts
                    write_pickle(exc_file, error)
                verdicts.append((n, INFRASTRUCTURE, f"InfrastructureError: {error}"))
        log(f"a Parsl task of {len(task.indices)} element(s) failed: {cause}: {detail}")
        return TaskResult.of(verdicts)

    # -- logs ------------------------------------------------------------------------------

    def _log_call_outcome(
        self, log: Callable[[str], None], st: StepStatus, code: int, message: str
    ) -> None:
        if st.exit_code == OK:
            log(f"finished: outputs {', '.join(st.outputs)} written")
            return
        what = {
            USER_ERROR: "User code raised an Exception",
            MISSING_OUTPUT: "User code did not return every declared output",
            INFRASTRUCTURE: "The task was lost to an infrastructure failure",
        }.get(code, "failed")
        st.message = message or what
        log(f"{what} (exit code {st.exit_code}): {st.message}\nreturned the 'exception' output")

    def _log_map_outcome(
        self,
        log: Callable[[str], None],
        st: StepStatus,
        shape: tuple[int, ...],
        codes: dict[int, int],
        messages: dict[int, str],
    ) -> None:
        log(
            f"{st.n_done} elements succeeded ({st.n_reused} of them taken from the store), "
            f"{st.n_failed} failed in user code, {st.n_infra} lost to infrastructure failures"
        )
        failed = sorted(n for n, c in codes.items() if c != OK)
        if not failed:
            return
        kinds = Counter(messages[n].split(":", 1)[0] for n in failed)
        log("failures by type: " + ", ".join(f"{c} x {k}" for k, c in kinds.most_common()))
        for n in failed[:_MAX_LOGGED_FAILURES]:
            log(f"  element {n} {MapSpec.output_key(n, shape)}: {messages[n]}")
        if len(failed) > _MAX_LOGGED_FAILURES:
            more = len(failed) - _MAX_LOGGED_FAILURES
            log(f"  ... and {more} more (see the exception output)")
