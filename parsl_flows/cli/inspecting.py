"""The commands that look without changing anything: ``status``, ``log``, ``list``,
``graph`` and ``plan``.

Everything they show is read from the store (or, for ``plan``, from the plan's file), so
they work on runs driven by any process, detached ones and dead ones included.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any

from .. import report
from ..run import Run, StepRun
from ..store import default_store
from ..workflow import Map, Workflow
from .common import PROG, CommandError, UsageError, exit_status, load
from .plans import load_plan
from .running import follow_to_end

__all__ = ["cmd_graph", "cmd_list", "cmd_log", "cmd_plan", "cmd_status", "describe"]


def cmd_status(args: argparse.Namespace) -> int:
    """One run's progress tree (followed live with ``--follow``), or the recent runs."""
    if args.run is None:
        if args.follow:
            raise UsageError("--follow needs a RUN")
        table = report.recent_workflows(days=2, store=args.store)
        store = default_store(args.store)
        if not table:
            print(f"no runs in the last two days in {store}  ({PROG} list shows all)")
            return 0
        print(f"runs of the last two days in {store}:")
        print(table)
        return 0
    run = load(args)
    if args.follow:
        print(f"run    {run.id}")
        return follow_to_end(run, tty=sys.stdout.isatty(), owned=False)
    print(report.progress(run))
    if run.status == "interrupted":
        print(f"\nits driver is gone; carry on with: {PROG} resume {run.id}")
    return exit_status(run)


def cmd_log(args: argparse.Namespace) -> int:
    run = load(args)
    source: Run | StepRun = run if args.step is None else _find_step(run, args.step)
    sys.stdout.write(report.log(source))
    return 0


def _find_step(run: Run, key: str) -> StepRun:
    steps = run.steps
    for s in steps:
        if s.name == key:
            return s
    if key.isdigit() and int(key) < len(steps):
        return steps[int(key)]
    names = ", ".join(f"{i} {s.name}" for i, s in enumerate(steps))
    raise UsageError(f"run {run.id} has no step {key!r} (steps: {names})")


def cmd_list(args: argparse.Namespace) -> int:
    store = default_store(args.store)
    if args.running:
        table = report.running_workflows(store=args.store)
        what = "running runs"
    else:
        days = None if args.since is None else _parse_age(args.since)
        table = report.recent_workflows(days=days, store=args.store)
        what = "runs" if days is None else f"runs since {args.since}"
    if not table:
        print(f"no {what} in {store}")
        return 0
    print(table)
    return 0


_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNIT_DAYS = {"s": 1 / 86400, "m": 1 / 1440, "h": 1 / 24, "d": 1.0, "w": 7.0, "": 1.0}


def _parse_age(text: str) -> float:
    """``2d``, ``12h``, ``30m``, ``1w`` or a number of days, in days."""
    m = _AGE.fullmatch(text)
    if not m:
        raise UsageError(f"--since {text!r}: expected an age such as 2d, 12h, 30m or 1w")
    return float(m.group(1)) * _UNIT_DAYS[m.group(2)]


# -- pictures and plans ----------------------------------------------------------------------


def cmd_graph(args: argparse.Namespace) -> int:
    run = load(args)
    if getattr(args, "step", None) is not None:  # one map step's elements over the sweep
        step = _find_step(run, args.step)
        if not step.is_map:
            raise UsageError(
                f"step {step.name!r} is a plain call, not a map: it has no elements to draw "
                f"(draw the run with: {PROG} graph {run.id} -o run.png)"
            )
        out = args.output or f"{run.id}-{step.name}.png"
        _draw(lambda: step.plot(path=out), out)
        return 0
    out = args.output or f"{run.id}.png"
    _draw(lambda: report.graph(run, filename=out), out)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    flow = load_plan(args.target)
    if args.output:
        _draw(lambda: flow.visualize(filename=args.output), args.output)
    else:
        print(describe(flow))
    return 0


def _draw(draw: Callable[[], Any], out: str) -> None:
    try:
        draw()
    except ImportError as e:  # matplotlib, an optional extra, is not installed
        raise CommandError(f"cannot draw {out}: {e}") from e
    except ValueError as e:  # an unknown picture format, a map without elements
        raise UsageError(f"cannot draw {out}: {e}") from e
    except (RuntimeError, OSError) as e:  # no 'dot' program, or an unwritable place
        raise CommandError(f"cannot draw {out}: {e}") from e
    print(f"wrote {out}")


def describe(flow: Workflow) -> str:
    """A plan in words: its stages in order, its inputs and what it returns."""
    lines = [f"workflow {flow.name!r}: {len(flow.nodes)} steps in {len(flow.stages)} stages"]
    for number, stage in enumerate(flow.stages, 1):
        for k, node in enumerate(stage):
            label = f"{number:>3}  " if k == 0 else "     "
            call = f"{node.name}({', '.join(node.parameters)}) -> {', '.join(node.outputs)}"
            if isinstance(node, Map):
                call = f"map {node.name}: {node.mapspec}"
            extra = []
            if node.max_restarts > 1:
                extra.append(f"up to {node.max_restarts} attempts")
            if k > 0:
                extra.append(f"side by side with {stage[0].name}")
            lines.append(f"{label}{call}" + (f"   ({'; '.join(extra)})" if extra else ""))
    required = flow.required_parameters
    mapped = flow.mapped_parameters
    inputs = [
        p + ("[]" if p in mapped else "") + ("" if p in required else "?")
        for p in flow.parameter_order
    ]
    lines.append(f"inputs:  {', '.join(inputs)}")
    lines.append("         ([] mapped over: a list or array; ? optional: the step has a default)")
    returns = [e if e == o else f"{e} (= {o})" for e, o in flow.returned_outputs]
    lines.append(f"returns: {', '.join(returns)}")
    return "\n".join(lines)
