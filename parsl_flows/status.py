"""The records a run keeps on disk: ``run.json`` and each step's ``status.json``.

The engine writes them; runs, reports and the command line read them.  They are the
only state shared between a driver and anyone watching it from another process.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .files import read_json, write_json

__all__ = ["FINAL_RUN_STATES", "RunRecord", "StepStatus"]

_R = TypeVar("_R")

#: States a step ends in; "waiting" and "running" are the others.
FINAL_STEP_STATES = frozenset({"finished", "failed", "skipped"})
#: States a run ends in; "running" is the other.  "interrupted": its driver died.
FINAL_RUN_STATES = frozenset({"finished", "failed", "interrupted"})


@dataclass
class StepStatus:
    """One step's progress and outcome (``steps/NN-name/status.json``)."""

    name: str
    index: int
    kind: str  # "call" or "map"
    outputs: list[str]
    mapspec: str | None = None
    max_restarts: int = 1
    # The attributes the step gives its outputs' variables in datasets (@step(attrs=...))
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    state: str = "waiting"
    exit_code: int | None = None
    message: str = ""
    shape: list[int] | None = None
    submitted_elements: str = ""
    n_submitted: int = 0
    n_done: int = 0
    n_failed: int = 0  # the user's code raised (401) or returned too little (403)
    n_infra: int = 0  # infrastructure failures (402)
    n_inputs_masked: int = 0  # not submitted: some mapped input was masked there
    n_reused: int = 0  # taken from the store (an earlier run, or before a crash), not computed
    reused_from: str | None = None  # the run the reused results came from
    missing_inputs: list[str] = field(default_factory=list)
    element_codes: dict[str, str] = field(default_factory=dict)  # "401": "3-5,9"
    # How many attempts each submitted element took: {"1": "0-12,14-63", "2": "13"}
    element_attempts: dict[str, str] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    executor: str | None = None
    batch_jobs: list[str] = field(default_factory=list)  # Slurm job ids its tasks ran in
    started: float | None = None
    finished: float | None = None

    @property
    def dirname(self) -> str:
        return f"{self.index:02d}-{self.name}"

    @property
    def n_elements(self) -> int:
        if self.shape is None:
            return 0
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def n_remaining(self) -> int:
        total = self.n_submitted + self.n_reused
        return max(0, total - self.n_done - self.n_failed - self.n_infra)

    @property
    def outcome(self) -> str:
        """ok, partial (a map with failures whose outputs still flow on), failed, skipped,
        or the state while not final."""
        if self.state == "skipped":
            return "skipped"
        if self.state not in FINAL_STEP_STATES:
            return self.state
        if self.exit_code == 0:
            return "ok"
        if self.kind == "map" and self.n_done > 0:
            return "partial"
        return "failed"

    def save(self, step_dir: Path) -> None:
        write_json(step_dir / "status.json", dataclasses.asdict(self))

    @classmethod
    def load(cls, step_dir: Path) -> StepStatus:
        return _from_json(cls, step_dir / "status.json")


@dataclass
class RunRecord:
    """A run's identity and outcome (``run.json``)."""

    run_id: str
    workflow: str
    steps: list[str]  # step directory names, in plan order
    returns: list[list[str]]  # [returned name, output name]
    inputs: list[str]
    environment: str
    status: str = "running"
    exit_code: int | None = None
    message: str = ""
    created: float = field(default_factory=time.time)
    finished: float | None = None
    driver_pid: int | None = None
    driver_host: str | None = None
    restarted_from: str | None = None

    def save(self, run_dir: Path) -> None:
        write_json(run_dir / "run.json", dataclasses.asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord:
        return _from_json(cls, run_dir / "run.json")


def _from_json(cls: type[_R], path: Path) -> _R:
    """A record from its file; fields it does not know (newer versions) are ignored."""
    data = read_json(path)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})
