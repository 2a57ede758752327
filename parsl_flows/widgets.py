"""A run's progress as live Jupyter widgets: what :func:`parsl_flows.report.watch` shows.

One row per step: its name, an ``ipywidgets`` bar of the elements that ended, coloured by
outcome when the step ends, and a line with the counts, the rate and the time left.  The
bars change through the widgets' own channel to the browser, so the cell's output is not
redrawn on every poll.  When the run ends the rows give way to the final table, which is
what stays in the saved notebook.

This module knows nothing of runs or reports: it is handed step records and finished text
and HTML, so it depends only on the records and on ``ipywidgets``, an optional dependency
(``pip install parsl_flows[notebook]``).  Importing it raises ``ImportError`` without it.

>>> from parsl_flows.status import StepStatus
>>> bars = StepBars("<b>demo</b>")
>>> rec = StepStatus("square", 0, "map", ["y"], state="running", shape=[4], n_submitted=4,
...                  n_done=1)
>>> bars.update(rec, "1/4 done, 3 remaining", now=10.0)
>>> bars.rows["square"].bar.value, bars.rows["square"].bar.max
(1, 4)
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from .status import FINAL_STEP_STATES, StepStatus

__all__ = ["StepBars", "StepRow"]

#: ipywidgets' bar styles for each outcome of a step (and for one running).
BAR_STYLE = {"ok": "success", "partial": "warning", "failed": "danger", "running": "info"}


def _about(seconds: float) -> str:
    """A rough time: an estimate claims no more than whole seconds or minutes."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class StepRow:
    """One step's row: its name, a bar and a line of counts, rate and time left.

    The rate is measured from the first time the step is seen running, so elements reused
    from an earlier run, which end at once, do not count as speed.
    """

    def __init__(self, name: str) -> None:
        self.label = widgets.HTML(
            f"<code>{html.escape(name)}</code>", layout=widgets.Layout(width="14em")
        )
        self.bar = widgets.IntProgress(min=0, max=1, value=0, layout=widgets.Layout(width="30%"))
        self.detail = widgets.HTML()
        self.box = widgets.HBox([self.label, self.bar, self.detail])
        self._start: tuple[float, int] | None = None  # (time, elements ended) first seen running

    def update(self, rec: StepStatus, detail: str, now: float) -> None:
        """Show ``rec``; ``detail`` is the report's words for it (counts, or why it failed)."""
        is_map = rec.kind == "map" and rec.shape is not None
        if is_map:
            total = rec.n_submitted + rec.n_reused
            ended = total - rec.n_remaining
        else:  # a plain call has no count: its bar is empty, then full
            total = 1
            ended = int(rec.state in FINAL_STEP_STATES)
        self.bar.max = max(total, 1)  # first: the value is clamped to it
        self.bar.value = ended
        self.bar.bar_style = BAR_STYLE.get(rec.outcome, "")
        words = [rec.outcome]
        if rec.exit_code is not None:
            words.append(f"exit {rec.exit_code}")
        if detail:
            words.append(detail)
        if rec.state == "running" and is_map:
            words.extend(self._pace(ended, total - ended, now))
        self.detail.value = html.escape(" · ".join(words))

    def _pace(self, ended: int, remaining: int, now: float) -> list[str]:
        """The rate since the step was first seen running, and the time left at that rate."""
        if self._start is None:
            self._start = (now, ended)
            return []
        since, at_start = self._start
        if ended <= at_start or now <= since:
            return []
        rate = (ended - at_start) / (now - since)
        return [f"{rate:.1f}/s", f"about {_about(remaining / rate)} left"]

    def close(self) -> None:
        """Close this row's widgets (their channels to the browser)."""
        for w in (self.label, self.bar, self.detail, self.box):
            w.close()


class StepBars:
    """A title and a :class:`StepRow` per step; ends as a single HTML table.

    Display it with :meth:`bundle`, which adds HTML and text for front ends that cannot show
    widgets (a notebook viewer, a saved file without widget state).
    """

    def __init__(self, title_html: str) -> None:
        self.title = widgets.HTML(title_html)
        self.rows: dict[str, StepRow] = {}
        self.widget = widgets.VBox([self.title])

    def update(self, rec: StepStatus, detail: str, now: float) -> None:
        """Show one step's record (adding its row the first time it is seen)."""
        row = self.rows.get(rec.name)
        if row is None:
            row = self.rows[rec.name] = StepRow(rec.name)
            self.widget.children = (*self.widget.children, row.box)
        row.update(rec, detail, now)

    def finish(self, table_html: str) -> None:
        """Replace the title and the rows by the final table (the bars have said their part)."""
        final = widgets.HTML(table_html)
        self.widget.children = (final,)
        self.title.close()
        for row in self.rows.values():
            row.close()
        self.rows.clear()

    def bundle(self, html_fallback: str, text_fallback: str) -> dict[str, Any]:
        """The widget's display data, with HTML and text for front ends without widgets."""
        data: dict[str, Any] = self.widget._repr_mimebundle_()
        data["text/html"] = html_fallback
        data["text/plain"] = text_fallback
        return data
