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
from ..mapspec import ArraySpec, MapSpec, MapSpecError
from ..ranges import compress
from ..status import RunRecord, StepStatus
from ..store import FileBasedObjectArray, element_path, load_pickle, write_pickle
from ..workflow import Call, Map, Workflow, mapped_shape
from .runner import runner
from .worker import INFRASTRUCTURE, MISSING_OUTPUT, OK, USER_ERROR, ElementResult, Source, TaskSpec

__all__ = ["Execution", "StepLog"]

logger = logging.getLogger(__name__)

# Parsl's names for a task whose worker (or whole worker pool) died under it.
_LOST = {"WorkerLost": "worker lost", "ManagerLost": "worker pool lost"}
_FLUSH_SECONDS = 0.5
_MAX_LOGGED_FAILURES = 10


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


def map_exit_code(codes: Iterable[int]) -> int:
    """A map's exit code: 401 if any element raised, else 403, else 402, else 0."""
    seen = set(codes)
    for code in (USER_ERROR, MISSING_OUTPUT, INFRASTRUCTURE):
        if code in seen:
            return code
    return OK


class Execution:
    """One run being carried out by this driver."""

    def __init__(
        self,
        run_dir: Path,
        workflow: Workflow,
        inputs: dict[str, Any],
        statuses: dict[str, StepStatus],
        parsl_run_dir: Path,
    ) -> None:
        self.run_dir = run_dir
        self.workflow = workflow
        self.inputs = inputs
        self.statuses = statuses
        self.parsl_run_dir = parsl_run_dir
        self.log = StepLog(run_dir / "log.txt", prefix=f"[{run_dir.name}] ")
        self.thread = threading.Thread(
            target=self._main, name=f"parsl_flows-{run_dir.name}", daemon=False
        )
        self.label = ""
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
        record.save(self.run_dir)
        self.log(f"workflow finished: status {record.status}, exit code {record.exit_code}")
        self.done.set()

    def _schedule(self) -> int:
        wf = self.workflow
        self.log(f"workflow {wf.name!r} started ({len(wf.nodes)} steps)")
        self.label = runner.executors_for(wf.environment, self.parsl_run_dir)[0]
        sources: dict[str, Source] = {
            name: Source("value", str(self.run_dir / "inputs" / f"{name}.pickle"))
            for name in self.inputs
        }
        for name, value in self.inputs.items():
            self._values[sources[name].path] = value
        producers = wf.producers()
        missing: dict[str, str] = {}  # output -> why it will never exist
        pending = list(wf.nodes)
        running: dict[Future[dict[str, Source]], Call] = {}
        with ThreadPoolExecutor(
            max_workers=max(1, len(pending)), thread_name_prefix="step"
        ) as pool:
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
        st.executor = self.label
        st.save(self.step_dir(st))
        self.log(f"step {node.name} started")
        try:
            if isinstance(node, Map):
                produced = self._execute_map(node, st, params)
            else:
                produced = self._execute_call(node, st, params)
        except Exception as e:  # an engine error in one step must not stop the others
            logger.exception("step %s failed in the engine", node.name)
            st.exit_code = st.exit_code or 402
            st.message = f"the engine failed while running this step: {type(e).__name__}: {e}"
            self.step_log(st)(st.message)
            produced = {}
        if st.state != "skipped":
            st.state = "finished" if st.exit_code == 0 else "failed"
        st.finished = time.time()
        st.save(self.step_dir(st))
        verdict = (
            st.message
            if st.state == "skipped"
            else (
                f"exit code {st.exit_code}"
                + (f" ({EXIT_CODES.get(st.exit_code or 0, '')})" if st.exit_code else "")
            )
        )
        self.log(f"step {node.name} {st.state}: {verdict}")
        return produced

    def _execute_call(
        self, node: Call, st: StepStatus, params: dict[str, Source]
    ) -> dict[str, Source]:
        step_dir = self.step_dir(st)
        log = self.step_log(st)
        task = TaskSpec(str(step_dir / "step.pickle"), str(step_dir), (0,), (), params)
        st.n_submitted = 1
        st.submitted_elements = "0"
        st.save(step_dir)
        log(f"submitted {node.name}({', '.join(params)}) to executor {self.label!r}")
        codes, failures = self._run_tasks([task], st, log)
        code = codes[0]
        st.exit_code = code
        self._record_attempt(st, np.array([0]), codes)
        if code == OK:
            log(f"finished: outputs {', '.join(node.outputs)} written")
            return {
                out: Source("value", str(element_path(step_dir / "return_values" / out, 0)))
                for out in node.outputs
            }
        what = {
            USER_ERROR: "User code raised an Exception",
            MISSING_OUTPUT: "User code did not return every declared output",
            INFRASTRUCTURE: "The task was lost to an infrastructure failure",
        }[code]
        st.message = failures[0].message
        log(f"{what} (exit code {code}): {st.message}\nreturned the 'exception' output")
        return {}

    def _execute_map(
        self, node: Map, st: StepStatus, params: dict[str, Source]
    ) -> dict[str, Source]:
        step_dir = self.step_dir(st)
        log = self.step_log(st)
        spec = node.mapspec
        try:
            shapes = {a.name: self._shape_of(params[a.name], a) for a in spec.inputs}
            shape = spec.shape(shapes)
        except (MapSpecError, ValueError) as e:
            st.exit_code = USER_ERROR
            st.message = f"the mapped inputs do not fit the mapspec: {e}"
            log(st.message)
            return {}
        st.shape = list(shape)
        submit = self._submittable(spec, params, shape)
        indices = np.flatnonzero(submit.ravel())
        total = submit.size
        st.n_inputs_masked = total - len(indices)
        st.n_submitted = len(indices)
        st.submitted_elements = compress(indices)
        if total and not len(indices):
            st.state = "skipped"
            st.exit_code = None
            st.message = "skipped: every element has a masked mapped input"
            log(st.message)
            self.statuses[node.name] = st
            return {}
        size = auto_chunksize(len(indices)) if node.chunksize == "auto" else int(node.chunksize)
        tasks = [
            TaskSpec(str(step_dir / "step.pickle"), str(step_dir), chunk, shape, params, str(spec))
            for chunk in chunked(indices, size)
        ]
        st.save(step_dir)
        masked_note = f" ({st.n_inputs_masked} have masked inputs)" if st.n_inputs_masked else ""
        log(
            f"attempt 1: submitting {len(indices)} of {total} elements{masked_note} "
            f"as {len(tasks)} Parsl task(s) to executor {self.label!r}; "
            f"submitted_elements={st.submitted_elements or '-'}"
        )
        codes, failures = self._run_tasks(tasks, st, log)
        st.exit_code = map_exit_code(codes.values())
        self._record_attempt(st, indices, codes)
        self._log_map_outcome(log, st, shape, failures)
        if st.n_done == 0 and total:
            return {}
        return {
            out: Source("array", str(step_dir / "return_values" / out), shape)
            for out in node.outputs
        }

    # -- shapes and masks ------------------------------------------------------------------

    def _value(self, src: Source) -> Any:
        if src.path not in self._values:
            self._values[src.path] = load_pickle(Path(src.path))
        return self._values[src.path]

    def _shape_of(self, src: Source, arr: ArraySpec) -> tuple[int, ...]:
        if src.kind == "array":
            return src.shape
        return mapped_shape(self._value(src), arr.rank)

    def _present(self, src: Source, arr: ArraySpec) -> np.ndarray | None:
        """Where ``arr``'s input has a value, over its ``rank`` mapped axes (None: everywhere)."""
        if src.kind == "array":
            present = ~FileBasedObjectArray(src.path, src.shape).mask
        else:
            value = self._value(src)
            if not isinstance(value, np.ma.MaskedArray):
                return None
            present = ~np.ma.getmaskarray(value)
        extra = tuple(range(arr.rank, present.ndim))
        return present.any(axis=extra) if extra else present

    def _submittable(
        self, spec: MapSpec, params: dict[str, Source], shape: tuple[int, ...]
    ) -> np.ndarray:
        """Elements whose mapped inputs all exist (``:`` axes need one present value)."""
        out = np.ones(shape, dtype=bool)
        order = spec.output_indices
        for arr in spec.inputs:
            present = self._present(params[arr.name], arr)
            if present is None:
                continue
            whole = tuple(k for k, a in enumerate(arr.axes) if a is None)
            if whole:
                present = present.any(axis=whole)
            names = list(arr.indices)
            present = present.transpose(
                sorted(range(len(names)), key=lambda k: order.index(names[k]))
            )
            names.sort(key=order.index)
            out &= present.reshape([shape[order.index(i)] if i in names else 1 for i in order])
        return out

    # -- tasks -----------------------------------------------------------------------------

    def _run_tasks(
        self, tasks: list[TaskSpec], st: StepStatus, log: Callable[[str], None]
    ) -> tuple[dict[int, int], list[ElementResult]]:
        """Submit ``tasks``, follow them to the end, and count their elements as they finish."""
        step_dir = self.step_dir(st)
        futures = {runner.submit(self.label, task): task for task in tasks}
        codes: dict[int, int] = {}
        failures: list[ElementResult] = []
        last_flush = time.monotonic()
        for fut in as_completed(futures):
            task = futures[fut]
            exc = fut.exception()
            results = fut.result() if exc is None else self._lost(task, st.outputs, exc, log)
            for r in results:
                codes[r.index] = r.code
                if r.code == OK:
                    st.n_done += 1
                elif r.code == INFRASTRUCTURE:
                    st.n_infra += 1
                    failures.append(r)
                else:
                    st.n_failed += 1
                    failures.append(r)
            if time.monotonic() - last_flush > _FLUSH_SECONDS:
                st.save(step_dir)
                last_flush = time.monotonic()
        return codes, failures

    def _lost(
        self, task: TaskSpec, outputs: list[str], exc: BaseException, log: Callable[[str], None]
    ) -> list[ElementResult]:
        """Results for a task that Parsl reports failed: its worker died, or worse.

        Elements that finished before the failure have their files and count as done.
        """
        cause = _LOST.get(type(exc).__name__, f"task failed in Parsl ({type(exc).__name__})")
        detail = str(exc)
        step_dir = Path(task.step_dir)
        results = []
        for n in task.indices:
            if all(element_path(step_dir / "return_values" / o, n).exists() for o in outputs):
                results.append(ElementResult(n, OK))
            elif element_path(step_dir / "exception", n).exists():
                results.append(ElementResult(n, USER_ERROR, "raised before the task was lost"))
            else:
                write_pickle(
                    element_path(step_dir / "exception", n), InfrastructureError(cause, detail)
                )
                results.append(
                    ElementResult(n, INFRASTRUCTURE, f"InfrastructureError: {cause}: {detail}")
                )
        log(f"a Parsl task of {len(task.indices)} element(s) failed: {cause}: {detail}")
        return results

    def _record_attempt(self, st: StepStatus, indices: np.ndarray, codes: dict[int, int]) -> None:
        by_code: dict[int, list[int]] = {}
        for n, c in codes.items():
            if c != OK:
                by_code.setdefault(c, []).append(n)
        st.element_codes = {str(c): compress(ns) for c, ns in sorted(by_code.items())}
        st.element_attempts = {"1": compress(indices)} if len(indices) else {}
        st.attempts.append(
            {
                "attempt": len(st.attempts) + 1,
                "submitted_elements": compress(indices),
                "n_submitted": len(indices),
                "succeeded": sum(1 for c in codes.values() if c == OK),
                "failed": sum(1 for c in codes.values() if c in (USER_ERROR, MISSING_OUTPUT)),
                "infrastructure": sum(1 for c in codes.values() if c == INFRASTRUCTURE),
            }
        )

    def _log_map_outcome(
        self,
        log: Callable[[str], None],
        st: StepStatus,
        shape: tuple[int, ...],
        failures: list[ElementResult],
    ) -> None:
        log(
            f"{st.n_done} elements succeeded, {st.n_failed} failed in user code, "
            f"{st.n_infra} lost to infrastructure failures"
        )
        if not failures:
            return
        kinds = Counter(f.message.split(":", 1)[0] for f in failures)
        log("failures by type: " + ", ".join(f"{n} x {k}" for k, n in kinds.most_common()))
        for f in sorted(failures, key=lambda r: r.index)[:_MAX_LOGGED_FAILURES]:
            key = MapSpec.output_key(f.index, shape)
            log(f"  element {f.index} {key}: {f.message}")
        if len(failures) > _MAX_LOGGED_FAILURES:
            log(f"  ... and {len(failures) - _MAX_LOGGED_FAILURES} more (see the exception output)")
