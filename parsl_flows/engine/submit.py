"""Start and resume executions: lay out the run directory, then hand the plan to an
orchestrator thread.  What users call (``flows.submit``, ``flows.run``, ``Run.resume``)
wraps these in :class:`parsl_flows.run.Run` (``parsl_flows/launch.py``)."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..lock import RunLock, RunLockedError
from ..status import FINAL_RUN_STATES, RunRecord, StepStatus
from ..store import default_store, file_exists, load_pickle, write_pickle
from ..workflow import Builder, Map, Workflow
from .environment import ExecutionEnvironment
from .orchestrator import Execution, StepLog
from .pickling import register_for_workers
from .recompute import Recompute
from .reuse import Reuse, check_reuse, origin_step_dir
from .reuse_index import forget_run
from .slurm import cancel_jobs
from .stopping import live_executions

__all__ = ["resume", "start"]

logger = logging.getLogger(__name__)


def _new_run_id(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{uuid.uuid4().hex[:6]}"


def start(
    builder: Builder, *, store: str | os.PathLike[str] | None = None, reuse: Reuse = True
) -> Execution:
    """Lay out a new run of ``builder`` in the store and start its execution (see
    ``flows.submit``, which wraps it in a ``Run``)."""
    if not isinstance(builder, Builder):
        raise TypeError(
            f"submit() takes a built workflow, flows.workflow.build(flow.on(env), **inputs), "
            f"not {builder!r}"
        )
    check_reuse(reuse)
    shapes = builder.validate()
    wf = builder.workflow
    _check_recompute(builder, shapes)
    if not isinstance(wf.environment, ExecutionEnvironment):
        raise TypeError(
            f"workflow {wf.name!r} runs on {wf.environment!r}, which is not an execution "
            "environment; use flows.engine.execution_environment(None, 'localhost') or "
            "execution_environment.from_config(parsl_config)"
        )
    if wf.environment.check is not None:
        wf.environment.check(wf)  # e.g. no sbatch, no such partition: say so before any work
    inputs: dict[str, Any] = dict(builder.kwargs)
    root = default_store(store)
    for folder in (root, root / "runs"):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(
                f"the store {folder} is a file, not a directory; give another store "
                "(store=..., --store or $PARSL_FLOWS_STORE)"
            )
    run_dir = root / "runs" / _new_run_id(wf.name)
    run_dir.mkdir(parents=True)

    register_for_workers(*(n.step.callable for n in wf.nodes), *inputs.values())
    for name, value in inputs.items():
        write_pickle(run_dir / "inputs" / f"{name}.pickle", value)
    write_pickle(run_dir / "plan.pickle", wf)

    statuses: dict[str, StepStatus] = {}
    for index, node in enumerate(wf.nodes):
        st = StepStatus(
            name=node.name,
            index=index,
            kind="map" if isinstance(node, Map) else "call",
            outputs=list(node.outputs),
            mapspec=str(node.mapspec) if isinstance(node, Map) else None,
            max_restarts=node.max_restarts,
            attrs={out: dict(a) for out, a in node.step.attrs.items()},
        )
        step_dir = run_dir / "steps" / st.dirname
        write_pickle(step_dir / "step.pickle", node.step)
        st.save(step_dir)
        statuses[node.name] = st

    RunRecord(
        run_id=run_dir.name,
        workflow=wf.name,
        steps=[st.dirname for st in statuses.values()],
        returns=[list(pair) for pair in wf.returned_outputs],
        inputs=list(inputs),
        environment=wf.environment.name,
        driver_pid=os.getpid(),
        driver_host=socket.gethostname(),
        restarted_from=Path(builder.restarted_from).name if builder.restarted_from else None,
    ).save(run_dir)

    lock = RunLock(run_dir)
    lock.acquire(StepLog(run_dir / "log.txt"))
    origin = Path(builder.restarted_from) if reuse and builder.restarted_from else None
    if reuse == "store":
        StepLog(run_dir / "log.txt")("reusing results of any earlier run of the store")
    # Opened, not stat-ed: a cached stat may still show a run another host deleted.  (A
    # run another host made a moment ago may be missed: its results are computed again.)
    if origin is not None and not file_exists(origin / "run.json"):
        StepLog(run_dir / "log.txt")(f"cannot reuse results: run {origin} is gone")
        origin = None
    recompute = Recompute(builder.recompute if origin is not None else None)
    for name, chosen in recompute.chosen.items():
        StepLog(run_dir / "log.txt")(f"recompute asked: {len(chosen)} elements of step {name}")
    execution = Execution(
        run_dir, wf, inputs, statuses, root / "parsl-runinfo", lock=lock, reuse_from=origin,
        recompute=recompute, reuse_store=root if reuse == "store" else None,
    )  # fmt: skip
    execution.start()
    return execution


def _check_recompute(builder: Builder, shapes: dict[str, tuple[int, ...]]) -> None:
    """Elements to recompute name steps of the plan, over the shapes the restart has."""
    if not builder.recompute:
        return
    if not builder.restarted_from:
        raise ValueError(
            "recompute= names elements not to reuse from an earlier run; this builder is "
            "not a restart (use run.get_builder_restart(recompute=...))"
        )
    nodes = {n.name: n for n in builder.workflow.nodes}
    origin = Path(builder.restarted_from)
    for name, chosen in builder.recompute.items():
        node = nodes.get(name)
        if node is None:
            raise ValueError(f"recompute: the plan has no step {name!r} (steps: {list(nodes)})")
        if not isinstance(node, Map):
            continue
        step_dir = origin_step_dir(origin, name)
        before = StepStatus.load(step_dir).shape if step_dir is not None else None
        now = shapes.get(node.outputs[0])
        if before is not None and now is not None and tuple(before) != tuple(now):
            raise ValueError(
                f"recompute: the elements of map {name!r} were chosen over its shape "
                f"{tuple(before)} in run {origin.name}, but the restart's inputs give it "
                f"shape {tuple(now)}; choose them after changing the inputs, or leave "
                "recompute out (changed inputs are computed anyway)"
            )
        size = int(np.prod(before if before is not None else now or (), dtype=np.int64))
        if len(chosen) and (int(np.max(chosen)) >= size or int(np.min(chosen)) < 0):
            raise ValueError(f"recompute: elements of map {name!r} go past its {size} elements")


def resume(run_dir: Path) -> Execution | None:
    """Carry on the run in ``run_dir`` in this process (see ``Run.resume``).

    None, with a warning, when the run already ended: there is nothing to resume.
    """
    record = RunRecord.load(run_dir)
    if record.status in FINAL_RUN_STATES - {"interrupted"}:
        logger.warning(
            "run %s already ended (%s, exit code %s): nothing to resume",
            record.run_id,
            record.status,
            record.exit_code,
        )
        return None
    if any(ex.run_dir == run_dir for ex in live_executions()):
        raise RunLockedError(
            f"run {record.run_id} is already being driven by this process (pid {os.getpid()}); "
            "wait for it (run.wait()) or stop it (run.interrupt()), then resume"
        )
    log = StepLog(run_dir / "log.txt")
    lock = RunLock(run_dir, cancel_jobs=cancel_jobs)
    lock.acquire(log)  # refuses while the old driver lives; stops its orphans otherwise
    plan: Workflow = load_pickle(run_dir / "plan.pickle")
    inputs = {name: load_pickle(run_dir / "inputs" / f"{name}.pickle") for name in record.inputs}
    steps = [StepStatus.load(run_dir / "steps" / d) for d in record.steps]
    statuses = {st.name: st for st in steps}
    record.driver_pid = os.getpid()
    record.driver_host = socket.gethostname()
    record.save(run_dir)
    log(f"resuming in pid {os.getpid()}: only what is not in the store is computed")
    forget_run(run_dir)  # the run changes now: lookups skip it until it ends again
    root = run_dir.parents[1]
    execution = Execution(run_dir, plan, inputs, statuses, root / "parsl-runinfo", lock=lock)
    execution.start()
    return execution
