"""Take a step's results from earlier runs before computing it: from the run a restart
comes from (``reuse.take_from_run``), then, with ``reuse="store"``, from any earlier run
of the store (``reuse_index.take_from_store``); the step's record and log say how many
came from which run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..status import StepStatus
from ..workflow import Call, Map
from .reuse import take_from_run
from .reuse_index import take_from_store

if TYPE_CHECKING:
    from .attempts import RunContext
    from .step_index import StepIndex

__all__ = ["take_earlier_results"]


def take_earlier_results(
    run: RunContext,
    node: Call,
    st: StepStatus,
    step_dir: Path,
    keys: np.ndarray | None,
    wanted: np.ndarray,
    log: Callable[[str], None],
    index: StepIndex | None = None,
) -> None:
    """Link the wanted elements earlier runs have under the same keys into ``step_dir``."""
    if keys is None:
        return
    taken: dict[str, int] = {}
    origin = run.reuse_from
    if origin is not None:
        count = take_from_run(
            origin, node.name, list(node.outputs), step_dir, keys, wanted, index, log
        )
        if count == 0:
            log(f"nothing to reuse from run {origin.name} (code or inputs changed)")
        elif count:
            taken[origin.name] = count
    if run.reuse_store is not None:
        kind = "map" if isinstance(node, Map) else "call"
        from_store = take_from_store(
            run.reuse_store, step_dir.parents[1].name, kind, list(node.outputs), step_dir,
            keys, wanted, index, log,
        )  # fmt: skip
        if not from_store and not taken:
            log("nothing to reuse from the store's runs (no ended run has these keys)")
        for run_id, count in from_store.items():
            taken[run_id] = taken.get(run_id, 0) + count
    if not taken:
        return
    st.reused_from = ", ".join(taken)
    total = sum(taken.values())
    if len(taken) == 1:
        where = f"run {st.reused_from}"
    else:
        runs = ", ".join(f"{run_id} ({count})" for run_id, count in taken.items())
        where = f"{len(taken)} runs: {runs}"
    log(f"reused {total} of {len(wanted)} elements from {where}")
