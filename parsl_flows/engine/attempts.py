"""Running one step: which elements to compute, then its attempts, as its policy allows.

A :class:`StepExecution` is made for each step the run executes, with what it needs of
the run (a :class:`RunContext`) and state of its own (its folder, its log, its map's
index): what exists already (in the store, or reusable from an earlier run) is taken,
the rest is submitted (``engine/tasks.py`` follows the tasks), and failed elements are
submitted again while the step's ``max_restarts`` and ``retry_on`` allow.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..mapspec import MapSpecError
from ..numbers_file import forget_numbers
from ..ranges import common, compress, unique_indices, without
from ..status import StepStatus
from ..step import Resources
from ..store import element_path
from ..workflow import Call, Map
from .chunking import ChunkSizer
from .datasets import dataset_writer
from .hashing import KeyBook, combine
from .inputs import MappedInputs
from .memory import MemoryRetries
from .numbers_back import NumbersBack
from .outcomes import exit_code_of, log_call_outcome, log_map_outcome
from .recompute import Recompute
from .reuse import present_elements, save_keys
from .runner import runner
from .step_index import StepIndex, drop_damaged_results
from .taking import take_earlier_results
from .task_spec import (
    INFRASTRUCTURE,
    MISSING_OUTPUT,
    NOT_RUN,
    OK,
    USER_ERROR,
    Source,
    TaskResult,
    TaskSpec,
)
from .tasks import StepTasks, remove_exceptions

__all__ = ["INFRA_RETRIES", "RunContext", "StepExecution"]

logger = logging.getLogger(__name__)

#: Extra attempts for an element lost to infrastructure failures, beyond the user's budget.
INFRA_RETRIES = 3


#: Where maps' element keys are worked out while their elements run (maps side by side
#: each get a thread).
_KEYS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="element-keys")


@dataclass
class RunContext:
    """What a step's execution takes from its run (``Execution``), and nothing else."""

    keys: KeyBook  # the reuse keys of the run's values and outputs
    reuse_from: Path | None  # the run a restart reuses results of
    recompute: Recompute  # elements not to reuse from it (as asked, and what reads them)
    mapped: MappedInputs  # the run's input values and maps' presence
    #: Per map, the numbers its workers sent back, until its dataset.nc is written.
    numbers_back: dict[str, NumbersBack]
    save: Callable[[StepStatus], None]  # write a step's status.json
    check_stop: Callable[[], None]  # raises when the run is told to stop
    note_helpers: Callable[[], None]  # record Parsl's processes and jobs in the lock
    #: The executor for steps asking ``resources`` (an attempt with more memory, Slurm).
    executor_for: Callable[[Resources], str] | None = None
    #: The store, when any earlier run of it may give results (``reuse="store"``).
    reuse_store: Path | None = None

    @property
    def reuses(self) -> bool:
        """Does this run take results of earlier runs (keys matter before elements run)?"""
        return self.reuse_from is not None or self.reuse_store is not None


class StepExecution:
    """Runs the elements of one step, in ``step_dir``, logging to ``log``."""

    def __init__(self, run: RunContext, step_dir: Path, log: Callable[[str], None]) -> None:
        self.run, self.step_dir, self.log = run, step_dir, log

    def execute(self, node: Call, st: StepStatus, params: dict[str, Source]) -> dict[str, Source]:
        """Work out which elements to compute, take what exists, compute the rest."""
        step_dir, log = self.step_dir, self.log
        if isinstance(node, Map):
            for out in node.outputs:  # its elements may change now: their files are the truth
                forget_numbers(step_dir / "return_values" / out)
            try:
                shape = node.mapspec.shape(
                    {
                        a.name: self.run.mapped.shape_of(params[a.name], a)
                        for a in node.mapspec.inputs
                    }
                )
            except (MapSpecError, ValueError) as e:
                st.exit_code = USER_ERROR
                st.message = f"the mapped inputs do not fit the mapspec: {e}"
                log(st.message)
                return {}
            st.shape = list(shape)
            wanted = np.flatnonzero(
                self.run.mapped.submittable(node.mapspec, params, shape).ravel()
            )
            total = int(np.prod(shape, dtype=np.int64))
            st.n_inputs_masked = total - len(wanted)
            if total and not len(wanted):
                st.state = "skipped"
                st.message = "skipped: every element has a masked mapped input"
                log(st.message)
                return {}
        else:
            shape, wanted, total = (), np.array([0]), 1
        # The keys (a hash per element, ~2 µs each) matter before the elements run only to
        # reuse an earlier run's results; otherwise they are worked out beside the map.
        keys_later: Future[np.ndarray | None] | None = None
        keys: np.ndarray | None = None
        if isinstance(node, Map) and not self.run.reuses:
            keys_later = _KEYS.submit(self._keep_keys, node, params, shape, log)
        else:
            keys = self._element_keys(node, params, shape, log)
            if keys is not None:
                save_keys(step_dir, keys)
        # A map's elements are where its folders' index says (``element_folders``): what
        # is there already (a resume), what is reused, and each task's files as they come.
        index = StepIndex(step_dir, node.outputs, total) if isinstance(node, Map) else None
        forced = common(self.run.recompute.of_node(node, shape), wanted)
        if len(forced) and self.run.reuses:
            log(f"computing {len(forced)} elements again as asked (recompute), not reusing them")
        take_earlier_results(
            self.run, node, st, self.step_dir, keys, without(wanted, forced), log, index
        )
        if index is not None:
            have = common(wanted, index.present())
        else:
            have = present_elements(step_dir, node.outputs, wanted)
        if len(have):
            have = drop_damaged_results(step_dir, node.outputs, have, log, index)
        st.n_done = st.n_reused = len(have)
        todo = without(wanted, have)
        if len(have) and not st.reused_from:
            log(f"{len(have)} of {len(wanted)} elements are already in the store (resumed)")
        ended = False
        try:
            codes, messages, exhausted, succeeded = self._attempts(
                node, st, params, shape, todo, log, index
            )
            ended = True
        finally:  # an interrupted run keeps its keys too: a restart reuses what it has
            if index is not None:
                index.save(complete=ended)  # stopped: its tasks in flight may still write
            if keys_later is not None:
                try:
                    keys = keys_later.result()
                except Exception as e:  # the elements are fine; only their reuse is lost
                    logger.exception("keys of step %s", node.name)
                    log(f"results of this step cannot be reused later: {type(e).__name__}: {e}")
                    keys = None
        st.exit_code = 410 if exhausted else exit_code_of(codes.values())
        if isinstance(node, Map):
            log_map_outcome(log, st, shape, codes, messages)
        else:
            log_call_outcome(log, st, codes.get(0, OK), messages.get(0, ""))
        self.run.recompute.note_outputs(node, forced, shape)
        if isinstance(node, Map):
            if st.n_done == 0 and total:
                self.run.keys.array.update({out: None for out in node.outputs})
                return {}
            present = self.run.mapped.note_present(step_dir, node.outputs, total, have, succeeded)
            self.run.keys.note_map_outputs(node.outputs, present, keys)
            return {
                out: Source("array", str(step_dir / "return_values" / out), shape)
                for out in node.outputs
            }
        if st.exit_code != OK:
            return {}
        for out in node.outputs:
            self.run.keys.value[out] = None if keys is None else combine(keys.tobytes(), out)
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
        index: StepIndex | None = None,
    ) -> tuple[dict[int, int], dict[int, str], bool, np.ndarray]:
        """Submit ``todo``, then resubmit what failed, as the step's restart policy allows.

        Returns the final code and message of each element that failed, whether some
        element used up its budget, and the elements that succeeded (as their tasks said).
        """
        step_dir = self.step_dir
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
                f"{chunk[0]}-{uuid.uuid4().hex[:8]}" if isinstance(node, Map) else "",
                memory_mb,  # this attempt's, for each element (``memory``)
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
        numbers = NumbersBack(node.outputs)
        memory = MemoryRetries(node, total, log)
        memory_mb: int | None = None
        sizer = ChunkSizer(workers, fixed)  # a retry's tasks are sized by what was measured
        first = len(todo)
        st.submitted_elements = compress(todo)
        st.n_submitted = first
        while len(todo):
            attempt = len(st.attempts) + 1
            submitted = compress(todo)
            memory_mb = memory.memory_mb(attempt)
            if self.run.executor_for is not None:  # on Slurm, blocks that have that memory
                st.executor = self.run.executor_for(memory.resources(attempt))
            with_memory = f" with memory {memory_mb}MB" if memory_mb else ""
            if memory.grows:
                with_memory += f" (retry_resources) on executor {st.executor!r}"
            if not tries.any():  # the first attempt of this execution
                masked = f" ({st.n_inputs_masked} have masked inputs)" if st.n_inputs_masked else ""
                sizes = "tasks sized to the work" if fixed is None else f"tasks of {fixed}"
                log(
                    f"attempt {attempt}: submitting {len(todo)} elements{masked} to executor "
                    f"{st.executor!r} ({workers} workers, {sizes}); "
                    f"submitted_elements={submitted}{with_memory}"
                )
            else:
                log(f"attempt {attempt}: resubmitting {len(todo)} of {first} elements{with_memory}")
            if index is not None:
                index.retrying(todo)
                index.provenance.current_attempt = attempt  # what its tasks' elements record
                if tries.any():
                    index.save(complete=False)  # an attempt ended; the next one writes on
            else:
                remove_exceptions(step_dir / "exception", todo, again=bool(tries.any()))
            self.run.save(st)
            lone = common(todo, np.fromiter(suspects, dtype=np.int64, count=len(suspects)))
            alone: list[tuple[int, ...]] = [(n,) for n in lone.tolist()]
            rest = without(todo, lone)
            tasks = StepTasks(
                st,
                self.run.check_stop,
                lambda: self.run.save(st),
                self.run.note_helpers,
                log,
                index,
                step_dir,
            )
            if isinstance(node, Map):  # Parsl and its workers are up once a task is back: the
                tasks.on_first_result = dataset_writer.start  # helper's start overlaps the map
            results = tasks.run(alone, rest, make_task, sizer)
            retry: list[np.ndarray] = []
            n_oom = 0
            for tr in results:
                numbers.add(tr)
                ran = tr.codes != NOT_RUN
                retry.append(tr.indices[~ran])  # its task was lost before it started: no try
                idx, codes = tr.indices[ran], tr.codes[ran]
                tries[idx] += 1
                final[idx] = codes
                messages.update({n: m for n, (m, _) in tr.failures.items()})
                oom = memory.sort(tr, idx[codes == INFRASTRUCTURE], user_tries)
                n_oom += oom.out_of_memory
                suspects.update(oom.alone.tolist())
                st.n_infra -= len(oom.again)
                retry.append(oom.again)  # with more memory
                infra = oom.lost
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
            record = self._record_attempt(st, attempt, todo, submitted, results)
            record.update(memory_mb=memory_mb, out_of_memory=n_oom, executor=st.executor)
            not_run = sum(tr.count(NOT_RUN) for tr in results)
            log(
                f"attempt {attempt}: {record['succeeded']} succeeded, {record['failed']} failed, "
                f"{record['infrastructure']} lost to infrastructure"
                + (f" ({n_oom} of them out of memory)" if n_oom else "")
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
        if isinstance(node, Map):
            self.run.numbers_back[st.name] = numbers
        succeeded = np.flatnonzero(final == OK)
        return failed_codes, {n: messages[n] for n in failed_codes}, exhausted, succeeded

    def _record_attempt(
        self,
        st: StepStatus,
        attempt: int,
        todo: np.ndarray,
        submitted: str,
        results: list[TaskResult],
    ) -> dict[str, Any]:
        """Add the attempt's counts to the step's record, and return them."""
        record = {
            "attempt": attempt,
            "submitted_elements": submitted,
            "n_submitted": len(todo),
            "succeeded": sum(tr.count(OK) for tr in results),
            "failed": sum(tr.count(USER_ERROR, MISSING_OUTPUT) for tr in results),
            "infrastructure": sum(tr.count(INFRASTRUCTURE) for tr in results),
        }
        st.attempts.append(record)
        return record

    # -- keys and reuse --------------------------------------------------------------------

    def _element_keys(
        self,
        node: Call,
        params: dict[str, Source],
        shape: tuple[int, ...],
        log: Callable[[str], None],
    ) -> np.ndarray | None:
        """The reuse key of every element (a 0-d array for a plain call), or None."""
        keys, why = self.run.keys.node_keys(node, params, shape, self.run.mapped.value)
        if keys is None and self.run.reuses:
            log(f"results of this step cannot be reused later: {why}")
        return keys

    def _keep_keys(
        self,
        node: Call,
        params: dict[str, Source],
        shape: tuple[int, ...],
        log: Callable[[str], None],
    ) -> np.ndarray | None:
        """The keys, written to the step's folder as soon as known: a driver killed while
        the elements run leaves them, for resumes and the store's reuse index."""
        keys = self._element_keys(node, params, shape, log)
        if keys is not None:
            save_keys(self.step_dir, keys)
        return keys
