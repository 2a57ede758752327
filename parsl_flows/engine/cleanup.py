"""Find and stop what dead drivers left behind in a store.

The interchange follows its driver (``interchange_guard``) and worker pools follow their
interchange, so a dead driver's processes usually leave within seconds, and its Slurm
blocks within a heartbeat.  What no mechanism covers is cleaned here: a driver on a login
node that was rebooted (its pending Slurm jobs start later, for nobody), an interchange
that was frozen when its driver died, processes started by an older version.  ``resume()``
does the same for the run it takes over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..lock import RunLock, driver_alive
from ..store import default_store
from .slurm import cancel_jobs

__all__ = ["Cleaned", "cleanup"]


@dataclass
class Cleaned:
    """What was found for one run whose driver is gone."""

    run_id: str
    actions: list[str] = field(default_factory=list)


def cleanup(store: str | os.PathLike[str] | None = None) -> list[Cleaned]:
    """Stop the leftovers of every run in ``store`` whose driver died on this host.

    For each such run: its Parsl processes are stopped, its batch jobs still pending or
    running are cancelled, and its stale lock is removed (the run stays 'interrupted',
    so ``resume()`` carries it on).  Runs driven from another host are left alone: this
    host cannot tell whether their driver lives.
    """
    runs = default_store(store) / "runs"
    cleaned = []
    for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
        lock = RunLock(run_dir, cancel_jobs=cancel_jobs)
        owner = lock.read()
        if owner is None or driver_alive(run_dir) is not False:
            continue
        found = Cleaned(run_dir.name)
        lock.stop_leftovers(owner, found.actions.append)
        lock.path.unlink(missing_ok=True)
        found.actions.append(f"removed the stale lock of driver pid {owner.get('pid')}")
        cleaned.append(found)
    return cleaned
