"""Start runs: lay out the run directory, then hand the plan to an orchestrator thread."""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from typing import Any

from ..run import Run
from ..status import RunRecord, StepStatus
from ..store import default_store, write_pickle
from ..workflow import Builder, Map
from .environment import ExecutionEnvironment
from .orchestrator import Execution
from .pickling import register_for_workers

__all__ = ["run", "submit"]


def _new_run_id(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{uuid.uuid4().hex[:6]}"


def submit(builder: Builder, *, store: str | os.PathLike[str] | None = None) -> Run:
    """Start running ``builder`` in the background and return its :class:`Run` at once.

    The run lives in ``<store>/runs/<run-id>``; ``store`` defaults to
    ``$PARSL_FLOWS_STORE`` or ``./parsl-flows-store``.
    """
    if not isinstance(builder, Builder):
        raise TypeError(
            f"submit() takes a built workflow, flows.workflow.build(flow.on(env), **inputs), "
            f"not {builder!r}"
        )
    builder.validate()
    wf = builder.workflow
    if not isinstance(wf.environment, ExecutionEnvironment):
        raise TypeError(
            f"workflow {wf.name!r} runs on {wf.environment!r}, which is not an execution "
            "environment; use flows.engine.execution_environment(None, 'localhost') or "
            "execution_environment.from_config(parsl_config)"
        )
    inputs: dict[str, Any] = dict(builder.kwargs)
    root = default_store(store)
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
    ).save(run_dir)

    execution = Execution(run_dir, wf, inputs, statuses, parsl_run_dir=root / "parsl-runinfo")
    execution.start()
    return Run(run_dir, execution=execution)


def run(builder: Builder, *, store: str | os.PathLike[str] | None = None) -> Run:
    """Like :func:`submit`, but wait for the run to end before returning it."""
    return submit(builder, store=store).wait()
