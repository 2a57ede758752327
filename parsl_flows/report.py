"""Reports on runs: a progress tree, logs, and a picture of the executed graph.

>>> print(progress(run))                     # doctest: +SKIP
total_flow_with_failures  run 20261126-...  failed (exit code 450)
├── make_geometry            finished  exit 0
├── modified_make_mesh       failed    exit 401  ValueError: Meshing step failed
...
"""

from __future__ import annotations

from typing import Any

from .errors import EXIT_CODES
from .run import Run, StepRun
from .status import StepStatus
from .visualize import StepLook, plan_graph, render

__all__ = ["graph", "log", "progress"]

_FILL = {
    "ok": "palegreen",
    "partial": "orange",
    "failed": "tomato",
    "skipped": "lightgrey",
    "running": "lightskyblue",
    "waiting": "white",
}


def _counts(rec: StepStatus) -> str:
    if rec.kind != "map" or rec.shape is None:
        return ""
    parts = [f"{rec.n_done}/{rec.n_submitted} done"]
    if rec.n_failed:
        parts.append(f"{rec.n_failed} failed")
    if rec.n_infra:
        parts.append(f"{rec.n_infra} lost")
    if rec.n_remaining:
        parts.append(f"{rec.n_remaining} remaining")
    if rec.n_inputs_masked:
        parts.append(f"{rec.n_inputs_masked} not submitted (masked inputs)")
    return ", ".join(parts)


def progress(run: Run) -> str:
    """A text tree: one line per step with its state, exit code and element counts."""
    rec = run.record
    code = "" if rec.exit_code is None else f" (exit code {rec.exit_code})"
    lines = [f"{rec.workflow}  run {rec.run_id}  {rec.status}{code}"]
    steps = [s.record for s in run.steps]
    width = max((len(s.name) for s in steps), default=0)
    for i, s in enumerate(steps):
        branch = "└──" if i == len(steps) - 1 else "├──"
        exit_txt = "" if s.exit_code is None else f"exit {s.exit_code}"
        detail = _counts(s)
        if s.state == "skipped":
            detail = f"missing {', '.join(s.missing_inputs)}" if s.missing_inputs else s.message
        elif s.exit_code not in (None, 0) and s.kind == "call":
            detail = s.message
        line = f"{branch} {s.name:<{width}}  {s.state:<8}  {exit_txt:<8}  {detail}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def log(run_or_step: Run | StepRun) -> str:
    """The log lines of a run (or of one of its steps)."""
    if not isinstance(run_or_step, Run | StepRun):
        raise TypeError(f"log() takes a run or a step run, not {run_or_step!r}")
    return run_or_step.log()


def graph(run: Run, as_png: bool = False, filename: str | None = None) -> Any:
    """The plan, each step coloured by its outcome and labelled with exit code and counts.

    Green: ok; orange: partial (a map with failed elements whose outputs flow on);
    red: failed; grey, dashed: skipped; blue: running.
    """
    looks = {}
    for s in run.steps:
        rec = s.record
        outcome = rec.outcome
        note = outcome if rec.exit_code is None else f"{outcome}, exit {rec.exit_code}"
        counts = _counts(rec)
        if counts:
            note += f"\n{counts}"
        looks[rec.name] = StepLook(_FILL.get(outcome, "white"), note, dashed=outcome == "skipped")
    dot = plan_graph(run.plan, looks)
    rec = run.record
    meaning = EXIT_CODES.get(rec.exit_code or 0, "") if rec.exit_code else ""
    dot.attr(
        label=f"{rec.workflow}: {rec.status}"
        + (f" ({rec.exit_code}: {meaning})" if meaning else "")
    )
    return render(dot, as_png=as_png, filename=filename)
