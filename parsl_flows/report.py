"""Reports on runs: a progress tree, logs, and a picture of the executed graph.

>>> print(progress(run))                     # doctest: +SKIP
total_flow_with_failures  run 20261126-...  failed (exit code 450)
├── make_geometry            finished  exit 0
├── modified_make_mesh       failed    exit 401  ValueError: Meshing step failed
...
"""

from __future__ import annotations

import html
import json
import os
import time
from typing import TYPE_CHECKING, Any

from .errors import EXIT_CODES
from .run import Run, StepRun
from .status import StepStatus
from .store import default_store
from .visualize import StepLook, plan_graph, render

if TYPE_CHECKING:  # ipywidgets is optional: see watch()
    from .widgets import StepBars

__all__ = [
    "ProgressView",
    "RunTable",
    "graph",
    "log",
    "progress",
    "progress_html",
    "recent_workflows",
    "running_workflows",
    "watch",
]

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
        return f"reused from {rec.reused_from}" if rec.n_reused and rec.reused_from else ""
    parts = [f"{rec.n_done}/{rec.n_submitted + rec.n_reused} done"]
    if rec.n_reused:
        origin = f" from {rec.reused_from}" if rec.reused_from else ""
        parts.append(f"{rec.n_reused} reused{origin}")
    if rec.n_failed:
        parts.append(f"{rec.n_failed} failed")
    if rec.n_infra:
        parts.append(f"{rec.n_infra} lost")
    if rec.n_remaining:
        parts.append(f"{rec.n_remaining} remaining")
    if rec.n_inputs_masked:
        parts.append(f"{rec.n_inputs_masked} not submitted (masked inputs)")
    return ", ".join(parts)


def _detail(rec: StepStatus) -> str:
    """What to say of a step: why it was skipped or failed, else its element counts."""
    if rec.state == "skipped":
        return f"missing {', '.join(rec.missing_inputs)}" if rec.missing_inputs else rec.message
    if rec.exit_code not in (None, 0) and rec.kind == "call":
        return rec.message
    return _counts(rec)


def progress(run: Run) -> str:
    """A text tree: one line per step with its state, exit code and element counts."""
    rec = run.record
    code = "" if rec.exit_code is None else f" (exit code {rec.exit_code})"
    lines = [f"{rec.workflow}  run {rec.run_id}  {run.status}{code}"]
    steps = [s.record for s in run.steps]
    width = max((len(s.name) for s in steps), default=0)
    for i, s in enumerate(steps):
        branch = "└──" if i == len(steps) - 1 else "├──"
        exit_txt = "" if s.exit_code is None else f"exit {s.exit_code}"
        line = f"{branch} {s.name:<{width}}  {s.state:<8}  {exit_txt:<8}  {_detail(s)}"
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
    run_rec = run.record
    code = run_rec.exit_code
    meaning = f" ({code}: {EXIT_CODES.get(code, '')})" if code else ""
    dot.attr(label=f"{run_rec.workflow}: {run_rec.status}{meaning}")
    return render(dot, as_png=as_png, filename=filename)


# -- notebooks: progress as an HTML table ---------------------------------------------------

_STATE_TEXT = {"ok": "ok", "partial": "partial", "failed": "failed", "skipped": "skipped"}


class ProgressView:
    """A snapshot of a run's progress: an HTML table in a notebook, the text tree elsewhere.

    Taken when made; make another (or use :func:`watch`) to see later progress.
    """

    def __init__(self, run: Run) -> None:
        self.run_id = run.id
        self.record = run.record
        self.status = run.status
        self.steps = [s.record for s in run.steps]
        self.text = progress(run)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    @property
    def header(self) -> str:
        """The HTML line above the table: the workflow, the run and its status, coloured."""
        rec = self.record
        code = "" if rec.exit_code is None else f" (exit code {rec.exit_code})"
        colour = _FILL.get({"finished": "ok", "running": "running"}.get(self.status, "failed"))
        return (
            f"<p><b>{html.escape(rec.workflow)}</b> &nbsp; run <code>{html.escape(rec.run_id)}"
            f'</code> &nbsp; <span style="background:{colour};padding:0 4px">'
            f"{html.escape(self.status)}{code}</span></p>"
        )

    @property
    def html(self) -> str:
        """The HTML table, as a string."""
        rows = "".join(_step_row(s) for s in self.steps)
        return (
            f'<div class="parsl-flows-progress">{self.header}'
            '<table><thead><tr><th style="text-align:left">step</th><th>state</th><th>exit</th>'
            '<th style="text-align:left">elements</th><th style="text-align:left">details</th>'
            f"</tr></thead><tbody>{rows}</tbody></table></div>"
        )

    def _repr_html_(self) -> str:
        return self.html


def _bar(rec: StepStatus, width: int = 160) -> str:
    parts = [
        (rec.n_done, _FILL["ok"]),
        (rec.n_failed, _FILL["failed"]),
        (rec.n_infra, _FILL["partial"]),
        (rec.n_remaining, "#eeeeee"),
    ]
    total = sum(n for n, _ in parts)
    if rec.kind != "map" or rec.shape is None or total == 0:
        return ""
    cells = "".join(
        f'<div style="display:inline-block;height:10px;width:{round(width * n / total)}px;'
        f'background:{colour}"></div>'
        for n, colour in parts
        if n
    )
    return f'<div style="display:inline-block;width:{width}px;border:1px solid #999;">{cells}</div>'


def _step_row(rec: StepStatus) -> str:
    outcome = rec.outcome
    detail = ""
    if rec.state == "skipped":
        detail = f"missing {', '.join(rec.missing_inputs)}" if rec.missing_inputs else rec.message
    elif rec.exit_code not in (None, 0) and rec.kind == "call":
        detail = rec.message
    counts = _counts(rec)
    elements = f"{_bar(rec)} {html.escape(counts)}" if counts else ""
    mapped = f"<br><small>{html.escape(rec.mapspec)}</small>" if rec.mapspec else ""
    return (
        f'<tr><td style="text-align:left"><code>{html.escape(rec.name)}</code>{mapped}</td>'
        f'<td style="background:{_FILL.get(outcome, "white")}">'
        f"{html.escape(_STATE_TEXT.get(outcome, rec.state))}</td>"
        f"<td>{'' if rec.exit_code is None else rec.exit_code}</td>"
        f'<td style="text-align:left">{elements}</td>'
        f'<td style="text-align:left">{html.escape(detail)}</td></tr>'
    )


def progress_html(run: Run) -> ProgressView:
    """The progress of ``run`` now, shown in a notebook as a coloured table with bars.

    >>> flows.report.progress_html(run)          # doctest: +SKIP
    """
    return ProgressView(run)


def watch(run: Run, interval: float = 0.5) -> None:
    """Show ``run``'s progress live until it ends; in a notebook, leave the final table.

    In a notebook: a bar per step (``ipywidgets``), with its counts, rate and time left,
    replaced by the :func:`progress_html` table when the run ends (or the wait is
    interrupted).  Without ``ipywidgets``, that table itself is redrawn until the end.
    Outside a notebook it waits, then prints the progress tree once.

    >>> flows.report.watch(run)                  # doctest: +SKIP
    """
    shell: Any = None
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        pass
    if shell is None or not hasattr(shell, "kernel"):  # not in a notebook
        run.wait()
        print(progress(run))
        return
    try:
        # Optional, and it loads IPython: imported only here, in a kernel, never on workers.
        from .widgets import StepBars
    except ImportError:
        _watch_table(run, interval)
        return
    _watch_bars(run, interval, StepBars(progress_html(run).header))


def _watch_bars(run: Run, interval: float, bars: StepBars) -> None:
    """Update ``bars`` until ``run`` ends, then leave the final table in their place."""
    from IPython.display import display

    def show() -> None:
        now = time.time()
        for step in run.steps:
            try:
                rec = step.record
            except (FileNotFoundError, ValueError):
                continue  # being rewritten this instant
            bars.update(rec, _detail(rec), now)

    view = progress_html(run)
    show()
    handle = display(bars.bundle(view.html, view.text), raw=True, display_id=True)
    try:
        while True:
            try:
                run.wait(timeout=interval)
                break
            except TimeoutError:
                show()
    finally:  # also on Ctrl-C: the output shows where the run stood, not frozen bars
        show()  # each row's last state, even of steps that ended since the last poll
        view = progress_html(run)
        bars.finish(view.html)
        handle.update(bars.bundle(view.html, view.text), raw=True)


def _watch_table(run: Run, interval: float) -> None:
    """Redraw the :func:`progress_html` table until ``run`` ends (no ``ipywidgets``)."""
    from IPython.display import display

    handle = display(progress_html(run), display_id=True)
    while True:
        try:
            run.wait(timeout=interval)
            break
        except TimeoutError:
            handle.update(progress_html(run))
    handle.update(progress_html(run))


# -- finding runs in the store ----------------------------------------------------------------


class RunTable(list[Run]):
    """Runs, newest first; printed as a text table, shown in a notebook as an HTML one."""

    _COLUMNS = ("run", "status", "exit", "started", "took")

    def rows(self) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        now = time.time()
        for run in self:
            rec = run.record
            status = run.status
            end = rec.finished if rec.finished is not None else now
            took = _duration(end - rec.created) + ("" if rec.finished is not None else "...")
            out.append(
                (
                    rec.run_id,
                    status,
                    "" if rec.exit_code is None else str(rec.exit_code),
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.created)),
                    took,
                )
            )
        return out

    def __str__(self) -> str:
        rows = self.rows()
        if not rows:
            return "no runs"
        header = tuple(c.upper() for c in self._COLUMNS)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]
        )

    def _repr_html_(self) -> str:
        head = "".join(f'<th style="text-align:left">{c}</th>' for c in self._COLUMNS)
        body = "".join(
            "<tr>"
            + "".join(f'<td style="text-align:left">{html.escape(cell)}</td>' for cell in row)
            + "</tr>"
            for row in self.rows()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _all_runs(store: str | os.PathLike[str] | None) -> list[Run]:
    """Every run of the store, newest first; half-made run directories are left out."""
    try:
        entries = list((default_store(store) / "runs").iterdir())
    except FileNotFoundError:
        return []
    runs = []
    for path in entries:
        try:
            run = Run(path)
            runs.append((run.record.created, run))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            continue  # not a run, or one being created this instant
    runs.sort(key=lambda pair: pair[0], reverse=True)
    return [run for _, run in runs]


def recent_workflows(
    days: float | None = 2, *, store: str | os.PathLike[str] | None = None
) -> RunTable:
    """Runs started in the last ``days`` days (all runs if ``None``), newest first.

    Runs still going are listed whenever they started.  ``store`` defaults to
    ``$PARSL_FLOWS_STORE`` or ``./parsl-flows-store``.

    >>> flows.report.recent_workflows(days=2)    # doctest: +SKIP
    """
    runs = _all_runs(store)
    if days is None:
        return RunTable(runs)
    since = time.time() - days * 86400
    return RunTable(r for r in runs if r.record.created >= since or r.status == "running")


def running_workflows(*, store: str | os.PathLike[str] | None = None) -> RunTable:
    """Runs that are still going (a run whose driver died counts as interrupted, not running)."""
    return RunTable(r for r in _all_runs(store) if r.status == "running")
