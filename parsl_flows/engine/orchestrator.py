"""Carry out one run: start each step when its inputs exist, skip it when they never will.

The orchestrator runs in a thread of the driver.  It keeps a table of where every named
value lives (a workflow input, a plain step's output file, a map's element folder), starts
a node as soon as all the names it reads are there, and skips a node whose inputs will
never be produced, logging which ones.  Each node runs in its own thread, so steps whose
inputs are ready run at the same time.  Elements are computed on Parsl workers; this
module only moves paths and small status records.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EXIT_CODES, InfrastructureError
from ..lock import RunLock
from ..mapspec import ArraySpec, MapSpec, MapSpecError
from ..ranges import compress
from ..status import RunRecord, StepStatus
from ..store import FileBasedObjectArray, element_path, load_pickle, present_indices, write_pickle
from ..workflow import Call, Map, Workflow, mapped_shape
from .hashing import KeyBook, combine, value_key
from .reuse import KEYS_FILE, present_elements, take_from_run
from .runner import runner
from .worker import INFRASTRUCTURE, MISSING_OUTPUT, OK, USER_ERROR, ElementResult, Source, TaskSpec

__all__ = ["Execution", "StepLog"]

logger = logging.getLogger(__name__)

# Parsl's names for a task whose worker (or whole worker pool) died under it.
_LOST = {"WorkerLost": "worker lost", "ManagerLost": "worker pool lost"}
_FLUSH_SECONDS = 0.5
_MAX_LOGGED_FAILURES = 10
#: Extra attempts for an element lost to infrastructure failures, beyond the user's budget.
INFRA_RETRIES = 3


class StepLog:
    """Appends timestamped lines to a ``log.txt`` (and to Python logging)."""

    def __init__(self, path: Path, prefix: str = "") -> None:
        self.path = path
        self.prefix = prefix
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._lock, open(self.path, "a") as f:
            for line in message.splitlines() or [""]:
                f.write(f"{stamp} {line}\n")
        logger.info("%s%s", self.prefix, message)


def auto_chunksize(n_elements: int) -> int:
    """Elements per Parsl task: one each up to 2,000 elements, then at most ~2,000 tasks.

    A Parsl task costs about a millisecond and 12 KB of driver memory; small maps keep
    one element per task for the best balance across workers.
    """
    return max(1, math.ceil(n_elements / 2000))


def chunked(indices: np.ndarray, size: int) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in indices[k : k + size]) for k in range(0, len(indices), size)]


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

    def start(self) -> None:
        self.thread.start()

    # -- the run -----------------------------------------------------------------------------

    def _main(self) -> None:
        record = RunRecord.load(self.run_dir)
        try:
            exit_code = self._schedule()
            record.exit_code = exit_code
            record.status = "finished" if exit_code == 0 else "failed"
            record.message = "" if exit_code == 0 else EXIT_CODES[exit_code]
        except BaseException as e:  # the engine itself failed: say so in the run, not only here
            logger.exception("run %s failed", self.run_dir.name)
            record.status = "failed"
            record.message = f"the engine failed: {type(e).__name__}: {e}"
            self.log(record.message)
        record.finished = time.time()
        if any(isinstance(n, Map) for n in self.workflow.nodes):
            try:
                from ..dataset import write_run_dataset

                write_run_dataset(self.run_dir)
            except Exception as e:  # the results are in the store either way
                self.log(f"could not write the run's dataset.nc: {type(e).__name__}: {e}")
        record.save(self.run_dir)
        self.log(f"workflow finished: status {record.status}, exit code {record.exit_code}")
        self.lock.release()
        self.done.set()

    def _note_helpers(self) -> None:
        dfk = runner.dfk
        self.lock.note_helpers(None if dfk is None else str(dfk.run_dir))

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
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
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
        st.save(self.step_dir(st))
        self.step_log(st)(st.message)
        self.log(f"step {node.name} {st.message}")

    # -- one node --------------------------------------------------------------------------

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
        st.save(self.step_dir(st))
        self.log(f"step {node.name} started")
        try:
            produced = self._execute_elements(node, st, params)
        except Exception as e:  # an engine error in one step must not stop the others
            logger.exception("step %s failed in the engine", node.name)
            st.exit_code = st.exit_code or INFRASTRUCTURE
            st.message = f"the engine failed while running this step: {type(e).__name__}: {e}"
            self.step_log(st)(st.message)
            produced = {}
        if st.state != "skipped":
            st.state = "finished" if st.exit_code == 0 else "failed"
        st.finished = time.time()
        st.save(self.step_dir(st))
        if isinstance(node, Map):
            from ..dataset import write_step_dataset  # xarray loads in the driver only

            write_step_dataset(self.step_dir(st), quiet=True)  # dataset.nc; never raises
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
        st.n_done = st.n_reused = len(have)
        todo = np.setdiff1d(wanted, have)
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

        Returns each element's final code and message, and whether some element used up
        its budget.
        """
        step_dir = self.step_dir(st)
        spec = str(node.mapspec) if isinstance(node, Map) else None
        size = 1
        if isinstance(node, Map):
            size = auto_chunksize(len(todo)) if node.chunksize == "auto" else int(node.chunksize)
        user_tries: Counter[int] = Counter()
        infra_tries: Counter[int] = Counter()
        tries: Counter[int] = Counter()
        final: dict[int, int] = {}
        messages: dict[int, str] = {}
        first = len(todo)
        st.submitted_elements = compress(todo)
        st.n_submitted = first
        while len(todo):
            attempt = len(st.attempts) + 1
            tasks = [
                TaskSpec(
                    str(step_dir / "step.pickle"),
                    str(step_dir),
                    chunk,
                    shape,
                    params,
                    spec,
                    node.retry_on,
                )
                for chunk in chunked(todo, size)
            ]
            if not tries:  # the first attempt of this execution
                masked = f" ({st.n_inputs_masked} have masked inputs)" if st.n_inputs_masked else ""
                log(
                    f"attempt {attempt}: submitting {len(todo)} elements{masked} as "
                    f"{len(tasks)} Parsl task(s) to executor {st.executor!r}; "
                    f"submitted_elements={compress(todo)}"
                )
            else:
                log(f"attempt {attempt}: resubmitting {len(todo)} of {first} elements")
            # A stale exception would read as this attempt's error if its task is lost.
            for n in np.intersect1d(todo, present_indices(step_dir / "exception")):
                element_path(step_dir / "exception", int(n)).unlink(missing_ok=True)
            st.save(step_dir)
            results = self._run_tasks(tasks, st, log)
            retry = []
            for r in results:
                n = r.index
                tries[n] += 1
                final[n] = r.code
                messages[n] = r.message
                if r.code == OK:
                    continue
                if r.code == INFRASTRUCTURE:
                    infra_tries[n] += 1
                    again = infra_tries[n] <= INFRA_RETRIES
                else:
                    user_tries[n] += 1
                    again = r.retryable and user_tries[n] < node.max_restarts
                if again:
                    retry.append(n)
            self._record_attempt(st, attempt, todo, results)
            log(
                f"attempt {attempt}: {sum(r.code == OK for r in results)} succeeded, "
                f"{sum(r.code in (USER_ERROR, MISSING_OUTPUT) for r in results)} failed, "
                f"{sum(r.code == INFRASTRUCTURE for r in results)} lost to infrastructure"
            )
            for n in retry:  # back to "remaining" until the next attempt says otherwise
                if final[n] == INFRASTRUCTURE:
                    st.n_infra -= 1
                else:
                    st.n_failed -= 1
            todo = np.array(sorted(retry), dtype=np.int64)
        by_code: dict[int, list[int]] = {}
        by_tries: dict[int, list[int]] = {}
        for n, c in final.items():
            if c != OK:
                by_code.setdefault(c, []).append(n)
            by_tries.setdefault(tries[n], []).append(n)
        st.element_codes = {str(c): compress(ns) for c, ns in sorted(by_code.items())}
        st.element_attempts = {str(t): compress(ns) for t, ns in sorted(by_tries.items())}
        exhausted = node.max_restarts > 1 and any(
            c != OK and user_tries[n] >= node.max_restarts for n, c in final.items()
        )
        return final, messages, exhausted

    def _record_attempt(
        self, st: StepStatus, attempt: int, todo: np.ndarray, results: list[ElementResult]
    ) -> None:
        st.attempts.append(
            {
                "attempt": attempt,
                "submitted_elements": compress(todo),
                "n_submitted": len(todo),
                "succeeded": sum(1 for r in results if r.code == OK),
                "failed": sum(1 for r in results if r.code in (USER_ERROR, MISSING_OUTPUT)),
                "infrastructure": sum(1 for r in results if r.code == INFRASTRUCTURE),
            }
        )

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
        self, tasks: list[TaskSpec], st: StepStatus, log: Callable[[str], None]
    ) -> list[ElementResult]:
        """Submit ``tasks``, follow them to the end, and count their elements as they finish."""
        step_dir = self.step_dir(st)
        assert st.executor is not None
        futures = {runner.submit(st.executor, task): task for task in tasks}
        self._note_helpers()
        results: list[ElementResult] = []
        last_flush = time.monotonic()
        for fut in as_completed(futures):
            task = futures[fut]
            exc = fut.exception()
            got = fut.result() if exc is None else self._lost(task, st, exc, log)
            for r in got:
                if r.batch_job and r.batch_job not in st.batch_jobs:
                    st.batch_jobs.append(r.batch_job)
                if r.code == OK:
                    st.n_done += 1
                elif r.code == INFRASTRUCTURE:
                    st.n_infra += 1
                else:
                    st.n_failed += 1
            results.extend(got)
            if time.monotonic() - last_flush > _FLUSH_SECONDS:
                st.save(step_dir)
                self._note_helpers()
                last_flush = time.monotonic()
        return results

    def _lost(
        self, task: TaskSpec, st: StepStatus, exc: BaseException, log: Callable[[str], None]
    ) -> list[ElementResult]:
        """Results for a task that Parsl reports failed: its worker died, or worse.

        Elements that finished before the failure have their files and count as done.
        """
        cause = _LOST.get(type(exc).__name__, f"task failed in Parsl ({type(exc).__name__})")
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        if type(exc).__name__ in ("BadStateException", "TooManyJobFailuresError"):
            jobs = runner.batch_jobs(str(st.executor))
            cause = "block failed" + (f" (scheduler job(s) {', '.join(jobs)})" if jobs else "")
        step_dir = Path(task.step_dir)
        results = []
        for n in task.indices:
            if all(element_path(step_dir / "return_values" / o, n).exists() for o in st.outputs):
                results.append(ElementResult(n, OK))
            elif element_path(step_dir / "exception", n).exists():
                results.append(ElementResult(n, USER_ERROR, "raised before the task was lost"))
            else:
                error = InfrastructureError(cause, detail)
                write_pickle(element_path(step_dir / "exception", n), error)
                message = f"InfrastructureError: {cause}: {detail}"
                results.append(ElementResult(n, INFRASTRUCTURE, message))
        log(f"a Parsl task of {len(task.indices)} element(s) failed: {cause}: {detail}")
        return results

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
