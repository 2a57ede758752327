"""The closing report of a run: a table of its steps, the returned values, the run and store.

The same facts in two forms: :func:`summary` is plain text (what goes to a file or a
pipe, and what scripts read: its columns are part of the interface), and on a terminal
:func:`print_summary` draws the table with ``rich``, outcomes coloured.
"""

from __future__ import annotations

import time
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import EXIT_CODES
from ..report import _duration
from ..run import Run
from ..store import FileBasedObjectArray
from .progress import OUTCOME_STYLE

__all__ = ["print_summary", "summary"]

_HEADER = ("STEP", "STATE", "EXIT", "DONE", "FAILED", "LOST", "NOT RUN", "ATTEMPTS", "TIME")
_LEFT = {0, 1}  # columns of words; the others are numbers, aligned right


def _step_rows(run: Run) -> list[tuple[str, ...]]:
    """A row of :data:`_HEADER` per step; counts are blank for steps that never started."""
    rows: list[tuple[str, ...]] = []
    for step in run.steps:
        s = step.record
        started = s.state != "skipped" and s.started is not None
        took = ""
        if s.started is not None and s.finished is not None and started:
            took = _duration(s.finished - s.started)
        rows.append(
            (
                s.name,
                s.outcome,
                "" if s.exit_code is None else str(s.exit_code),
                str(s.n_done) if started else "",
                str(s.n_failed) if started else "",
                str(s.n_infra) if started else "",
                str(s.n_inputs_masked) if started and s.kind == "map" else "",
                str(len(s.attempts)) if started and s.attempts else "",
                took,
            )
        )
    return rows


def _closing_lines(run: Run) -> list[str]:
    """What follows the table: the returned values, then the run's outcome and its store."""
    rec = run.record
    lines = []
    returned = _returned_values(run)
    if returned:
        lines.append("")
        lines.append("returns:")
        width = max(len(name) for name, _ in returned)
        lines.extend(f"  {name:<{width}}  {text}" for name, text in returned)
    status = run.status
    code = "" if rec.exit_code is None else f", exit code {rec.exit_code}"
    meaning = EXIT_CODES.get(rec.exit_code) if rec.exit_code else (rec.message or None)
    took = _duration((rec.finished or time.time()) - rec.created)
    lines.append("")
    lines.append(f"run    {rec.run_id}")
    lines.append(f"       {status}{code}" + (f": {meaning}" if meaning else "") + f" ({took})")
    lines.append(f"store  {run.path.parents[1]}")
    return lines


def summary(run: Run) -> str:
    """The closing report as plain text: the steps' table padded with spaces, then the rest."""
    rows = [_HEADER, *_step_rows(run)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    lines = [
        "  ".join(
            cell.ljust(w) if i in _LEFT else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.extend(_closing_lines(run))
    return "\n".join(lines)


def summary_table(run: Run) -> Table:
    """The steps' table as a ``rich`` table, each step's outcome in its colour."""
    table = Table(show_edge=False, pad_edge=False)
    for i, name in enumerate(_HEADER):
        table.add_column(name, justify="left" if i in _LEFT else "right", no_wrap=i != 0)
    for row in _step_rows(run):
        cells = [Text(cell) for cell in row]
        cells[1].stylize(OUTCOME_STYLE.get(row[1], ""))
        table.add_row(*cells)
    return table


def print_summary(run: Run, stream: TextIO, tty: bool) -> None:
    """Print the closing report to ``stream``: a ``rich`` table on a terminal, else text."""
    if not tty:
        stream.write(summary(run) + "\n")
        stream.flush()
        return
    console = Console(file=stream, highlight=False, emoji=False)
    console.print(summary_table(run))
    for line in _closing_lines(run):
        console.print(Text(line), soft_wrap=True)  # long paths stay whole, to copy


def _returned_values(run: Run) -> list[tuple[str, str]]:
    """Each returned value in a few words: arrays by shape and count, others by their repr."""
    try:
        values = run.outputs.return_values
    except Exception:  # a run without outputs yet, or an unreadable one: summary goes on
        return []
    out = []
    for name in values:
        value = values[name]
        if isinstance(value, FileBasedObjectArray):
            present = int(value.present().size)
            out.append((name, f"array {value.shape}, {present} of {value.size} elements present"))
            continue
        try:
            text = repr(value.fetch_value())
        except Exception as e:  # unpickling user objects can fail in many ways
            text = f"<cannot load: {type(e).__name__}: {e}>"
        text = " ".join(text.split())
        out.append((name, text if len(text) <= 70 else text[:67] + "..."))
    return out
