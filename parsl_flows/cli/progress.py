"""Live progress of a run, as the command line shows it while it follows one.

Two audiences, two followers, both polling the store (so they follow runs driven by other
processes too):

- on a terminal, :class:`LiveFollower` keeps a ``rich`` live display at the bottom with a
  bar per running step (its done, failed and remaining elements, its rate and the time
  left) and prints each step once as it ends, above the bars;
- into a file or a pipe, :class:`PlainFollower` redraws nothing: it prints a line for each
  change (a step starting or ending, and map counts at most every few seconds), so logs
  stay readable and scripts can read them.  These lines are part of the interface.
"""

from __future__ import annotations

import time
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

from ..report import _counts, _detail, _duration
from ..run import Run
from ..status import FINAL_STEP_STATES, StepStatus

__all__ = ["LiveFollower", "PlainFollower", "follow", "step_line"]

_COUNT_LINE_EVERY = 5.0  # seconds between count lines of one map when not on a terminal
#: How each outcome looks on a terminal (the words are the same as in a pipe).
OUTCOME_STYLE = {"ok": "green", "partial": "yellow", "failed": "bold red", "skipped": "dim"}


def step_line(rec: StepStatus) -> str:
    """One finished (or skipped) step: outcome, name, exit code and what happened."""
    detail = _detail(rec)
    took = ""
    if rec.started is not None and rec.finished is not None:
        took = _duration(rec.finished - rec.started)
    if len(rec.attempts) > 1:
        detail += f" ({len(rec.attempts)} attempts)"
    code = "" if rec.exit_code is None else f"exit {rec.exit_code}"
    return f"  {rec.outcome:<8} {rec.name}  {code}  {took}  {detail}".rstrip()


class Follower(Protocol):
    """What :func:`follow` needs of a way of showing progress."""

    def update(self) -> None:
        """Read the step records again and show what changed."""

    def close(self) -> None:
        """Show what is left, and leave the output clean for what follows."""

    def abandon(self) -> None:
        """Stop at once (Ctrl-C), leaving the terminal usable; print nothing more."""


def _records(run: Run) -> list[StepStatus]:
    records = []
    for step in run.steps:
        try:
            records.append(step.record)
        except (FileNotFoundError, ValueError):
            continue  # being rewritten this instant
    return records


class PlainFollower:
    """Prints the progress of one run to a file or pipe as lines; call :meth:`update`."""

    def __init__(self, run: Run, stream: TextIO) -> None:
        self.run = run
        self.stream = stream
        self._states: dict[str, str] = {}  # the state last seen of each step
        self._count_lines: dict[str, tuple[float, str]] = {}  # when and what was last printed

    def update(self) -> None:
        for rec in _records(self.run):
            before = self._states.get(rec.name)
            if rec.state in FINAL_STEP_STATES and before != rec.state:
                self._print(step_line(rec))
            elif rec.state == "running":
                self._report_running(rec, started=before != "running")
            self._states[rec.name] = rec.state

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

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.update()

    def abandon(self) -> None:
        pass


class _Rate(ProgressColumn):
    """Elements per second, over rich's recent samples (blank until there are two)."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        if task.total is None or not speed:
            return Text("")
        return Text(f"{speed:.1f}/s", style="progress.data.speed")


class _TimeLeft(ProgressColumn):
    """A map's time left at its recent rate; a plain step's time so far (it has no count)."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text(_duration(task.elapsed or 0.0), style="progress.elapsed")
        left = task.time_remaining
        text = "" if left is None else f"{_duration(left)} left"
        return Text(text, style="progress.remaining")


class LiveFollower:
    """Shows the progress of one run on a terminal with ``rich``; call :meth:`update`.

    Each running step is a task of a ``rich`` :class:`~rich.progress.Progress`: completed
    is the elements that ended (done, failed or lost), total those submitted or reused.
    A task starts at the count it has when first seen, so elements reused from an earlier
    run do not count as speed.  The display is transient: when the run ends only the
    finished-step lines stay, and the summary table follows them.
    """

    def __init__(self, run: Run, stream: TextIO) -> None:
        self.run = run
        self.console = Console(file=stream, highlight=False, emoji=False)
        no_wrap = Column(no_wrap=True, overflow="ellipsis")
        self.progress = Progress(
            TextColumn("{task.description}", markup=False, table_column=no_wrap),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[counts]}", markup=False, table_column=no_wrap),
            _Rate(),
            _TimeLeft(),
            console=self.console,
            transient=True,
            refresh_per_second=4,
        )
        self._states: dict[str, str] = {}
        self._tasks: dict[str, TaskID] = {}
        self.progress.start()

    def update(self) -> None:
        for rec in _records(self.run):
            before = self._states.get(rec.name)
            if rec.state in FINAL_STEP_STATES and before != rec.state:
                self._finish(rec)
            elif rec.state == "running":
                self._show_running(rec)
            self._states[rec.name] = rec.state
        self.progress.refresh()

    def _show_running(self, rec: StepStatus) -> None:
        is_map = rec.kind == "map" and rec.shape is not None
        total = rec.n_submitted + rec.n_reused if is_map else None
        ended = (total - rec.n_remaining) if total is not None else 0
        counts = _counts(rec) if is_map else ""
        task = self._tasks.get(rec.name)
        if task is None:
            self._tasks[rec.name] = self.progress.add_task(
                rec.name, total=total, completed=ended, counts=counts
            )
        else:
            self.progress.update(task, total=total, completed=ended, counts=counts)

    def _finish(self, rec: StepStatus) -> None:
        task = self._tasks.pop(rec.name, None)
        if task is not None:
            self.progress.remove_task(task)
            self.progress.refresh()  # else the line below is printed above the stale bar
        line = Text(step_line(rec))
        line.stylize(OUTCOME_STYLE.get(rec.outcome, ""), 2, 2 + len(rec.outcome))
        self.console.print(line, soft_wrap=True)

    def close(self) -> None:
        self.update()
        self.progress.stop()

    def abandon(self) -> None:
        self.progress.stop()


def follow(run: Run, stream: TextIO, tty: bool, interval: float = 0.25) -> Run:
    """Show ``run``'s progress on ``stream`` until it ends (or its driver is found dead).

    ``tty``: ``stream`` is a terminal, so progress is drawn live; otherwise it is lines.
    """
    follower: Follower = LiveFollower(run, stream) if tty else PlainFollower(run, stream)
    try:
        while True:
            follower.update()
            try:
                run.wait(timeout=interval)
                break
            except TimeoutError:
                continue
    except BaseException:
        follower.abandon()
        raise
    follower.close()
    return run
