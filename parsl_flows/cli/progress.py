"""Live progress and the closing summary of a run, as the command line prints them.

On a terminal, finished steps are printed once each and one line at the bottom is
redrawn (with ``\\r``) to show the running steps with their element counts.  When the
output is a file or a pipe, nothing is redrawn: a line is printed for each change (a step
starting or ending, and map counts at most every few seconds), so logs stay readable.
"""

from __future__ import annotations

import shutil
import time
from typing import TextIO

from ..errors import EXIT_CODES
from ..report import _counts, _duration
from ..run import Run
from ..status import StepStatus
from ..store import FileBasedObjectArray

__all__ = ["Follower", "follow", "summary"]

_COUNT_LINE_EVERY = 5.0  # seconds between count lines of one map when not on a terminal
_FINAL_STEP = ("finished", "failed", "skipped")


def _bar(rec: StepStatus, width: int = 12) -> str:
    total = rec.n_done + rec.n_failed + rec.n_infra + rec.n_remaining
    if not total:
        return ""
    filled = round(width * (total - rec.n_remaining) / total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def step_line(rec: StepStatus) -> str:
    """One finished (or skipped) step: outcome, name, exit code and what happened."""
    detail = _counts(rec)
    if rec.state == "skipped":
        detail = f"missing {', '.join(rec.missing_inputs)}" if rec.missing_inputs else rec.message
    elif rec.exit_code not in (None, 0) and rec.kind == "call":
        detail = rec.message
    took = ""
    if rec.started is not None and rec.finished is not None:
        took = _duration(rec.finished - rec.started)
    if len(rec.attempts) > 1:
        detail += f" ({len(rec.attempts)} attempts)"
    code = "" if rec.exit_code is None else f"exit {rec.exit_code}"
    return f"  {rec.outcome:<8} {rec.name}  {code}  {took}  {detail}".rstrip()


class Follower:
    """Prints the progress of one run to ``stream`` as it changes; call :meth:`update`."""

    def __init__(self, run: Run, stream: TextIO, tty: bool) -> None:
        self.run = run
        self.stream = stream
        self.tty = tty
        self._states: dict[str, str] = {}  # the state last seen of each step
        self._count_lines: dict[str, tuple[float, str]] = {}  # when and what was last printed
        self._live = ""  # the live line on screen now (tty only)

    def update(self) -> None:
        running = []
        for step in self.run.steps:
            try:
                rec = step.record
            except (FileNotFoundError, ValueError):
                continue  # being rewritten this instant
            before = self._states.get(rec.name)
            if rec.state in _FINAL_STEP and before != rec.state:
                self._print(step_line(rec))
            elif rec.state == "running":
                running.append(rec)
                if not self.tty:
                    self._report_running(rec, started=before != "running")
            self._states[rec.name] = rec.state
        if self.tty:
            self._draw_live(running)

    def _report_running(self, rec: StepStatus, started: bool) -> None:
        clock = time.monotonic()
        counts = _counts(rec)
        if started:
            self._print(f"  started  {rec.name}")
            self._count_lines[rec.name] = (clock, counts)
            return
        last_time, last_counts = self._count_lines.get(rec.name, (0.0, ""))
        if counts and counts != last_counts and clock - last_time >= _COUNT_LINE_EVERY:
            self._print(f"  running  {rec.name}  {counts}")
            self._count_lines[rec.name] = (clock, counts)

    def _draw_live(self, running: list[StepStatus]) -> None:
        parts = []
        for rec in running:
            counts = _counts(rec)
            parts.append(f"{rec.name} {_bar(rec)} {counts}".rstrip() if counts else rec.name)
        line = ("running: " + "  |  ".join(parts)) if parts else ""
        width = shutil.get_terminal_size((100, 24)).columns - 1
        line = line[:width]
        if line != self._live:
            self.stream.write("\r" + line.ljust(len(self._live)))
            self.stream.flush()
            self._live = line

    def _print(self, text: str) -> None:
        if self.tty and self._live:
            self.stream.write("\r" + " " * len(self._live) + "\r")
            self._live = ""
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Print what is left and clear the live line."""
        self.update()
        if self.tty and self._live:
            self.stream.write("\r" + " " * len(self._live) + "\r")
            self.stream.flush()
            self._live = ""


def follow(run: Run, stream: TextIO, tty: bool, interval: float = 0.25) -> Run:
    """Print ``run``'s progress until it ends (or its driver is found dead)."""
    follower = Follower(run, stream, tty)
    while True:
        follower.update()
        try:
            run.wait(timeout=interval)
            break
        except TimeoutError:
            continue
    follower.close()
    return run


def summary(run: Run) -> str:
    """The closing report: a table of the steps, the returned values, the run and its store."""
    rec = run.record
    header = ("STEP", "STATE", "EXIT", "DONE", "FAILED", "LOST", "NOT RUN", "ATTEMPTS", "TIME")
    rows = [header]
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
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    left = {0, 1}
    lines = [
        "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
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
    return "\n".join(lines)


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
