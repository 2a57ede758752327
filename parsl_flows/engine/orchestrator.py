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
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EXIT_CODES
from ..lock import RunLock
from ..numbers_file import KINDS, write_numbers
from ..status import RunRecord, StepStatus
from ..step import Resources
from ..store import refresh_folder
from ..workflow import Call, Map, Workflow
from . import stopping
from .attempts import RunContext, StepExecution
from .datasets import dataset_writer
from .hashing import KeyBook, value_key
from .inputs import MappedInputs
from .numbers_back import NumbersBack
from .outcomes import exit_code_of
from .recompute import Recompute
from .reuse_index import index_run
from .runner import runner
from .task_spec import (
    INFRASTRUCTURE,
    Source,
)
from .tasks import STOP_POLL_SECONDS

__all__ = ["Execution", "RunInterrupted", "StepLog", "exit_code_of"]

logger = logging.getLogger(__name__)


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
        recompute: Recompute | None = None,
        reuse_store: Path | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.workflow = workflow
        self.inputs = inputs
        self.statuses = statuses
        self.parsl_run_dir = parsl_run_dir
        self.lock = lock
        self.reuse_from = reuse_from
        self.recompute = recompute or Recompute()  # elements a restart computes again
        self.reuse_store = reuse_store  # the store, when any of its runs may give results
        self.log = StepLog(run_dir / "log.txt", prefix=f"[{run_dir.name}] ")
        self.thread = threading.Thread(
            target=self._main, name=f"parsl_flows-{run_dir.name}", daemon=False
        )
        self.keys = KeyBook()
        self.numbers_back: dict[str, NumbersBack] = {}
        self._helpers_seen: tuple[Any, ...] | None = None  # what _note_helpers last recorded
        self.mapped = MappedInputs()  # the inputs' values, which elements of maps exist
        self.done = threading.Event()
        self.stopping = threading.Event()
        self.stop_reason = ""
        self._datasets = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataset")
        # How the run ended, kept here too for a store that cannot take run.json (full).
        self.outcome: str = "running"
        self.outcome_code: int | None = None
        # Another driver took the run over (this one froze past its lease): stop, and
        # write nothing more to the run, which is the new driver's now.
        self.lease_lost = False
        lock.on_lost(self._lose_the_run)

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

    def _lose_the_run(self, reason: str) -> None:
        self.lease_lost = True
        self.request_stop(reason)

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
        if self.lease_lost:  # the run is another driver's now, however this one ended
            self._datasets.shutdown(wait=True, cancel_futures=True)
            self.outcome = "interrupted"
            self.log(f"{self.stop_reason}; this driver ends here")
            return
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
        try:  # what later runs of the store may reuse (reuse="store")
            index_run(self.run_dir)
        except Exception:  # the results are in the store; a lookup builds the file later
            logger.exception("run %s: reuse index", self.run_dir.name)
        if record.message and record.status != "finished":
            self.log(record.message)
        self.log(f"workflow {record.status}: exit code {record.exit_code}")
        try:
            self.lock.release()
        except OSError as e:
            logger.error("run %s: cannot remove its lock: %s", self.run_dir.name, e)

    def _note_helpers(self) -> None:
        """Record Parsl's processes and batch jobs in the run's lock, when they changed.

        Looking for the processes scans every process of the machine (tens of
        milliseconds, far more while another thread holds the GIL), and this is called
        as each map starts and every half second: only new executors or batch jobs make
        it look again.
        """
        dfk = runner.dfk
        parsl_run_dir = None if dfk is None else str(dfk.run_dir)
        jobs = runner.all_batch_jobs()
        seen = (id(dfk), parsl_run_dir, tuple(dfk.executors) if dfk else (), tuple(jobs))
        if seen == self._helpers_seen:
            return
        try:
            self.lock.note_helpers(parsl_run_dir, jobs)
            self._helpers_seen = seen
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
            self.mapped.remember(sources[name].path, value)
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
                finished, _ = wait(running, STOP_POLL_SECONDS, return_when=FIRST_COMPLETED)
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
        """Write a step's status.json; a full or read-only store only warns (the run goes on).

        Not once another driver took the run over: the step is its now.
        """
        if self.lease_lost:
            return
        try:
            st.save(self.step_dir(st))
        except OSError as e:
            logger.warning("[%s:%s] cannot save status.json: %s", self.run_dir.name, st.name, e)

    def _write_step_dataset(
        self, step_dir: Path, known: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> None:
        error = dataset_writer.write("step", step_dir, known)
        if error:  # the elements are in the store either way
            logger.warning("could not write %s: %s", step_dir / "dataset.nc", error)

    def _keep_numbers(
        self,
        step_dir: Path,
        known: dict[str, tuple[np.ndarray, np.ndarray]],
        kinds: dict[str, str],
    ) -> None:
        """Keep what the next steps read of a map's outputs (see ``numbers_file``): the
        numbers of an output of one type (others are read from their task files)."""
        for out in known:
            folder = step_dir / "return_values" / out
            try:
                if out in known and kinds.get(out) in KINDS:
                    every = self.mapped.holds_every(folder, known[out][0])
                    write_numbers(folder, *known[out], kinds[out], complete=every)
            except OSError as e:  # a full store: readers take the element files
                logger.warning("cannot keep the numbers of %s: %s", folder, e)

    def step_dir(self, st: StepStatus) -> Path:
        return self.run_dir / "steps" / st.dirname

    def step_log(self, st: StepStatus) -> StepLog:
        return StepLog(self.step_dir(st) / "log.txt", prefix=f"[{self.run_dir.name}:{st.name}] ")

    def _executor_for(self, resources: Resources) -> str:
        """The executor of this run's environment for steps asking ``resources``."""
        return runner.executor_for(self.workflow.environment, resources, self.parsl_run_dir)

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
            context = RunContext(
                self.keys, self.reuse_from, self.recompute, self.mapped, self.numbers_back,
                self._save, self._check_stop, self._note_helpers, self._executor_for,
                reuse_store=self.reuse_store,
            )  # fmt: skip
            step = StepExecution(context, self.step_dir(st), self.step_log(st))
            produced = step.execute(node, st, params)
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
        back = self.numbers_back.pop(node.name, None)
        known = back.known() if back is not None else {}
        if isinstance(node, Map) and not self.stopping.is_set():
            _refresh_folders(self.step_dir(st), node.outputs)
            if back is not None:  # before the steps that read this map start
                self._keep_numbers(self.step_dir(st), known, back.kinds())
            # dataset.nc is written beside the run, not before the steps that wait for
            # this one: a second or more for a big map.
            self._datasets.submit(self._write_step_dataset, self.step_dir(st), known)
        if st.state == "skipped":
            verdict = st.message
        else:
            meaning = f" ({EXIT_CODES.get(st.exit_code or 0, '')})" if st.exit_code else ""
            verdict = f"exit code {st.exit_code}{meaning}"
        self.log(f"step {node.name} {st.state}: {verdict}")
        return produced


def _refresh_folders(step_dir: Path, outputs: tuple[str, ...] | list[str]) -> None:
    """Make this host's view of a finished map's folders current, before its numbers are
    kept: the workers wrote them through other clients of a shared filesystem, and what
    lists them here next (the ``dataset.nc`` helper, ``to_array()`` in this process) must
    not go by a listing cached before they did (see ``files.refresh_folder``)."""
    for out in outputs:
        refresh_folder(step_dir / "return_values" / out)
    refresh_folder(step_dir / "exception")
