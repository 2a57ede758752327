"""Run one element of a step again, here, in this process: for ``pdb`` and ``%debug``.

The element gets exactly what its worker got: the plan's step, the run's inputs, and
the upstream elements it read, each loaded from the store the way a worker loads them
(``engine.task_inputs``).  A failed element raises its exception again, with a full
traceback through the user's code; one that succeeded returns its value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .engine.task_inputs import mapped_getters, whole
from .engine.task_spec import Source, TaskSpec
from .files import MISSING_ELEMENT
from .selection import element_index
from .status import RunRecord, StepStatus
from .store import element_path, load_pickle
from .workflow import Call, Map, Workflow

__all__ = ["ElementInputMissing", "element_inputs", "reproduce_element", "step_sources"]


class ElementInputMissing(ValueError):
    """An element cannot be run: an input it reads has no value there (masked, failed)."""


def _node(plan: Workflow, name: str) -> Call:
    for node in plan.nodes:
        if node.name == name:
            return node
    raise KeyError(f"the plan has no step {name!r} (steps: {[n.name for n in plan.nodes]})")


def _step_dir(run_dir: Path, name: str) -> Path:
    steps = RunRecord.load(run_dir).steps
    for d in steps:
        if d.split("-", 1)[1] == name:
            return run_dir / "steps" / d
    names = ", ".join(d.split("-", 1)[1] for d in steps)
    raise KeyError(f"run {run_dir.name} has no step {name!r} (steps: {names})")


def step_sources(run_dir: Path, plan: Workflow, node: Call) -> dict[str, Source]:
    """Where each parameter of ``node`` came from in the run: what the driver passed it."""
    record = RunRecord.load(run_dir)
    producers = plan.producers()
    dirs = {d.split("-", 1)[1]: run_dir / "steps" / d for d in record.steps}
    sources: dict[str, Source] = {}
    for p in node.parameters:
        if p in producers:
            maker = producers[p]
            rec = StepStatus.load(dirs[maker.name])
            folder = dirs[maker.name] / "return_values" / p
            if rec.state == "skipped" or (rec.kind == "map" and rec.shape is None):
                raise ElementInputMissing(
                    f"input {p!r} of step {node.name!r} was never made: step {maker.name!r} "
                    f"is {rec.state}{': ' + rec.message if rec.message else ''}"
                )
            if rec.kind == "map":
                sources[p] = Source("array", str(folder), tuple(rec.shape or ()))
            else:
                sources[p] = Source("value", str(element_path(folder, 0)))
        elif p in record.inputs:
            sources[p] = Source("value", str(run_dir / "inputs" / f"{p}.pickle"))
    return sources


def element_inputs(run_dir: Path, step_name: str, n: int) -> tuple[Call, dict[str, Any]]:
    """The step of ``step_name`` and the arguments its element ``n`` was called with."""
    plan: Workflow = load_pickle(run_dir / "plan.pickle")
    node = _node(plan, step_name)
    sources = step_sources(run_dir, plan, node)
    step_dir = _step_dir(run_dir, step_name)
    rec = StepStatus.load(step_dir)
    spec = node.mapspec if isinstance(node, Map) else None
    shape = tuple(rec.shape or ()) if spec else ()
    mapped = set(spec.input_names) if spec else set()
    for name, src in sources.items():  # a plain output that failed has no file
        if src.kind == "value" and not Path(src.path).exists():
            raise ElementInputMissing(f"input {name!r} of step {step_name!r} has no value")
    kwargs = {name: whole(src) for name, src in sources.items() if name not in mapped}
    task = TaskSpec(str(step_dir / "step.pickle"), str(step_dir), (n,), shape, sources)
    for name, get in mapped_getters(task, spec):
        try:
            value = get(0)
        except (FileNotFoundError, KeyError, IndexError) as e:
            value, why = MISSING_ELEMENT, f" ({type(e).__name__}: {e})"
        else:
            why = ""
        if value is MISSING_ELEMENT or value is np.ma.masked:
            key = spec.output_key(n, shape) if spec else ()
            raise ElementInputMissing(
                f"element {n} {key} of step {step_name!r} has no value of its input "
                f"{name!r}{why}: its upstream element failed or was masked, so it never ran"
            )
        kwargs[name] = value
    return node, kwargs


def reproduce_element(run_dir: Path, step_name: str, where: Mapping[str, Any]) -> Any:
    """Call element ``where`` of step ``step_name`` here, as its worker did (see module)."""
    n = element_index(_step_dir(run_dir, step_name), where)
    node, kwargs = element_inputs(run_dir, step_name, n)
    return node.step.callable(**kwargs)
