"""Runs and step runs as the user sees them: read from the store, live or finished.

A :class:`Run` is a view of ``<store>/runs/<run-id>``; everything it reports is read from
the files there, so a run opened with :func:`load_run` in a new process (or while
another process drives it) shows the same as the one ``submit`` returned.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine.orchestrator import Execution
from .engine.submit import resume
from .lock import driver_alive
from .reproduce import reproduce_element
from .selection import select_elements
from .status import FINAL_RUN_STATES, RunRecord, StepStatus
from .store import FileBasedObjectArray, default_store, element_path, load_pickle, present_indices
from .workflow import Builder, Inputs, Workflow

if TYPE_CHECKING:
    import xarray as xr


__all__ = ["Namespace", "Run", "StepRun", "StoredValue", "load_run"]


class StoredValue:
    """One value in the store; ``fetch_value()`` loads it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fetch_value(self) -> Any:
        return load_pickle(self.path)

    def __repr__(self) -> str:
        return f"StoredValue('{self.path}')"


class Namespace:
    """Named outputs, read as attributes (``outputs.return_values.charge``)."""

    def __init__(self, what: str, entries: dict[str, Any]) -> None:
        self._what = what
        self._entries = entries

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._entries[name]
        except KeyError:
            have = ", ".join(self._entries) or "none"
            raise AttributeError(f"{self._what} has no {name!r} (it has: {have})") from None

    def __getitem__(self, name: str) -> Any:
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __dir__(self) -> list[str]:
        return list(self._entries)

    def __repr__(self) -> str:
        return f"<{self._what}: {', '.join(self._entries) or 'empty'}>"


class StepRun:
    """One step of a run: its state, exit code, log, attributes and outputs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def record(self) -> StepStatus:
        return StepStatus.load(self.path)

    @property
    def name(self) -> str:
        return self.path.name.split("-", 1)[1]

    @property
    def status(self) -> str:
        """'waiting', 'running', 'finished', 'failed' or 'skipped'."""
        return self.record.state

    @property
    def exit_code(self) -> int | None:
        return self.record.exit_code

    @property
    def is_map(self) -> bool:
        return self.record.kind == "map"

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """One record per attempt: submitted elements, succeeded, failed."""
        return self.record.attempts

    @property
    def attributes(self) -> dict[str, Any]:
        """The step's record as a dict (``submitted_elements``, ``exit_code``, ...)."""
        import dataclasses

        return dataclasses.asdict(self.record)

    def log(self) -> str:
        try:
            return (self.path / "log.txt").read_text()
        except FileNotFoundError:
            return ""

    def output(self, name: str) -> Any:
        """An output as stored: a ``FileBasedObjectArray`` for maps, else a ``StoredValue``."""
        rec = self.record
        if name not in rec.outputs:
            raise KeyError(f"step {rec.name!r} has no output {name!r} (outputs: {rec.outputs})")
        folder = self.path / "return_values" / name
        if rec.kind == "map":
            return FileBasedObjectArray(folder, rec.shape or ())
        return StoredValue(element_path(folder, 0))

    def _has_output(self, rec: StepStatus, name: str) -> bool:
        folder = self.path / "return_values" / name
        if rec.kind == "map":
            # What the step's record says first: no look at the folder for a map that
            # has elements (a run written before task files has no index to read).
            return rec.shape is not None and (
                rec.n_elements == 0 or rec.n_done > 0 or present_indices(folder).size > 0
            )
        return element_path(folder, 0).exists()

    @property
    def outputs(self) -> Namespace:
        """``return_values`` (the outputs that exist) and, after a failure, ``exception``."""
        rec = self.record
        values = {n: self.output(n) for n in rec.outputs if self._has_output(rec, n)}
        entries: dict[str, Any] = {"return_values": Namespace(f"step {rec.name!r} outputs", values)}
        exc_folder = self.path / "exception"
        some_failed = rec.exit_code not in (0, None) or rec.n_failed or rec.n_infra
        if some_failed and present_indices(exc_folder).size:
            entries["exception"] = (
                FileBasedObjectArray(exc_folder, rec.shape or ())
                if rec.kind == "map"
                else StoredValue(element_path(exc_folder, 0))
            )
        return Namespace(f"step {rec.name!r}", entries)

    def reproduce(self, **where: Any) -> Any:
        """Run one element again in this process, with the inputs it had; for debugging.

        ``where`` names it by swept values (``V_left=0.3, V_right=-0.1``), index labels
        (``a=2, b=7``) or flat index (``n=47``); a plain step takes none.  A failed
        element raises its exception (``%debug`` and ``pdb`` work); else its value is
        returned.  Nothing is written to the store.
        """
        return reproduce_element(self.path.parents[1], self.name, where)

    def dataset(self) -> xr.Dataset:
        """This map step's results as an ``xarray.Dataset`` (see ``parsl_flows.dataset``)."""
        from .dataset import step_dataset

        return step_dataset(self)

    def plot(
        self,
        *,
        ax: Any = None,
        path: str | os.PathLike[str] | None = None,
        max_panels: int = 16,
        figsize: tuple[float, float] | None = None,
    ) -> Any:
        """Draw where this map's elements worked, failed (by exception type), never ran,
        or were reused: a strip (1-D), a heat map (2-D), or panels (more), with the swept
        values on the axes.  Returns the matplotlib Figure; ``ax=`` draws into given
        axes, ``path=`` also saves the picture.  Needs matplotlib
        (``pip install "parsl_flows[plot]"``); see :mod:`parsl_flows.outcome_plot`.
        """
        from .outcome_plot import plot_outcome

        return plot_outcome(self, ax=ax, path=path, max_panels=max_panels, figsize=figsize)

    def __repr__(self) -> str:
        rec = self.record
        return f"<StepRun {rec.name!r}: {rec.state}, exit code {rec.exit_code}>"


class Run:
    """A workflow run in the store.  ``flows.submit`` returns one; ``load_run`` opens one."""

    def __init__(self, path: str | os.PathLike[str], execution: Execution | None = None) -> None:
        self.path = Path(path).resolve()
        if not (self.path / "run.json").exists():
            raise FileNotFoundError(f"no run at {self.path} (no run.json there)")
        self._execution = execution

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def record(self) -> RunRecord:
        return RunRecord.load(self.path)

    @property
    def status(self) -> str:
        """'running', 'finished' (exit code 0), 'failed' (any other end) or 'interrupted'.

        'interrupted': the record says running, but its driver process is gone (a killed
        kernel or CLI); ``resume()`` carries on from what is in the store.
        """
        status = self.record.status
        if status != "running":
            return status
        if self._execution is not None:  # ended here, but a full or read-only store kept
            return self._execution.outcome  # run.json from saying so
        return "interrupted" if driver_alive(self.path) is False else status

    @property
    def exit_code(self) -> int | None:
        code = self.record.exit_code
        if code is None and self._execution is not None and self._execution.done.is_set():
            return self._execution.outcome_code  # run.json could not be written (full store)
        return code

    @property
    def is_finished(self) -> bool:
        return self.status in FINAL_RUN_STATES

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends (or ``timeout`` seconds pass: ``TimeoutError``)."""
        if self._execution is not None:
            try:
                ended = self._execution.done.wait(timeout)
            except KeyboardInterrupt:  # Ctrl-C means stop: the run ends 'interrupted'
                self._execution.interrupt()
                raise
            if not ended:
                raise TimeoutError(f"run {self.id} still running after {timeout} s")
            return self
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.status == "running":
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.id} still running after {timeout} s")
            time.sleep(0.2)
        return self

    def interrupt(self) -> Run:
        """Stop this run now, as Ctrl-C does; ``resume()`` carries it on later.

        Only the process that drives a run can stop it this way; what finished is kept.
        """
        if self._execution is None:
            raise RuntimeError(
                f"run {self.id} is not driven by this process; stop its driver (pid "
                f"{self.record.driver_pid} on {self.record.driver_host}) with Ctrl-C or a signal"
            )
        self._execution.interrupt()
        return self

    @property
    def steps(self) -> list[StepRun]:
        """Every step, in plan order, skipped ones included."""
        return [StepRun(self.path / "steps" / d) for d in self.record.steps]

    @property
    def called(self) -> list[StepRun]:
        """The steps that were started, in plan order (skipped and waiting ones left out)."""
        return [s for s in self.steps if s.status not in ("skipped", "waiting")]

    def step(self, name: str) -> StepRun:
        """Any step by name, skipped ones included."""
        for s in self.steps:
            if s.name == name:
                return s
        names = ", ".join(s.name for s in self.steps)
        raise KeyError(f"run {self.id} has no step {name!r} (steps: {names})")

    @property
    def outputs(self) -> Namespace:
        """``outputs.return_values.<name>``: the workflow's returned values that exist."""
        rec = self.record
        by_output = {out: s for s in self.steps for out in s.record.outputs}
        values = {}
        for exposed, out in rec.returns:
            s = by_output[out]
            if out in s.outputs.return_values:
                values[exposed] = s.output(out)
        return Namespace(
            f"run {self.id}", {"return_values": Namespace(f"run {self.id} return values", values)}
        )

    @property
    def plan(self) -> Workflow:
        plan: Workflow = load_pickle(self.path / "plan.pickle")
        return plan

    @property
    def inputs(self) -> Inputs:
        return Inputs(
            {
                name: load_pickle(self.path / "inputs" / f"{name}.pickle")
                for name in self.record.inputs
            }
        )

    def get_builder_restart(self, recompute: Mapping[str, Any] | None = None) -> Builder:
        """A builder with this run's plan and inputs; edit ``.kwargs`` and submit it.

        Submitting it reuses every result of this run whose code and inputs did not change
        (``flows.submit(builder, reuse=False)`` recomputes everything).  ``recompute``
        names elements to compute again all the same, per step: ``"failed"``, an
        exception type, a boolean array or ``DataArray`` over the step's coordinates, a
        dict of labels or label slices (``{"V_left": slice(0.3, None)}``) or ``"all"``;
        every element downstream that reads them is computed again too.
        """
        chosen = {
            name: select_elements(self.step(name).path, selection)
            for name, selection in (recompute or {}).items()
        }
        return Builder(self.plan, self.inputs, restarted_from=str(self.path), recompute=chosen)

    def resume(self) -> Run:
        """Carry on a run whose driver died: compute only what is not in the store yet.

        Returns the resumed run at once (``.wait()`` for it).  A run that already ended is
        left alone (a warning says so); a run whose driver is alive is an error.
        """
        execution = resume(self.path)
        return self if execution is None else Run(self.path, execution=execution)

    def log(self) -> str:
        try:
            return (self.path / "log.txt").read_text()
        except FileNotFoundError:
            return ""

    def dataset(self) -> xr.Dataset:
        """Every map output of the run in one ``xarray.Dataset`` (see ``parsl_flows.dataset``)."""
        from .dataset import run_dataset

        return run_dataset(self)

    def __repr__(self) -> str:
        rec = self.record
        return f"<Run {rec.run_id}: {rec.workflow}, {rec.status}, exit code {rec.exit_code}>"


def load_run(
    path_or_id: str | os.PathLike[str], store: str | os.PathLike[str] | None = None
) -> Run:
    """Open a run from its directory, its id, or a unique prefix of its id."""
    path = Path(path_or_id).expanduser()
    if (path / "run.json").exists():
        return Run(path)
    if path.is_dir() or os.sep in str(path_or_id):
        raise FileNotFoundError(
            f"no run at {path} (no run.json there: not a run directory, or one still being created)"
        )
    runs = default_store(store) / "runs"
    matches = sorted(p for p in runs.glob(f"{path_or_id}*") if (p / "run.json").exists())
    if len(matches) == 1:
        return Run(matches[0])
    if not matches:
        raise FileNotFoundError(f"no run {str(path_or_id)!r} in {runs}")
    raise ValueError(
        f"{str(path_or_id)!r} matches {len(matches)} runs in {runs}: "
        f"{', '.join(p.name for p in matches[:5])}; give more of the id"
    )
