"""Find and stop what dead drivers left behind in a store.

The interchange follows its driver (``interchange_guard``) and worker pools follow their
interchange, so a dead driver's processes usually leave within seconds, and its Slurm
blocks within a heartbeat.  What no mechanism covers is cleaned here: a driver on a login
node that was rebooted (its pending Slurm jobs start later, for nobody), an interchange
that was frozen when its driver died, processes started by an older version.  ``resume()``
does the same for the run it takes over.

A driver of another host (a cluster's other login node) is judged by its lease: once it
expired, its batch jobs are cancelled, but its processes are only named, never signalled
(their pids mean other processes here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..lock import RunLock
from ..store import default_store
from .slurm import cancel_jobs

__all__ = ["Cleaned", "cleanup"]


@dataclass
class Cleaned:
    """What was found for one run whose driver is gone."""

    run_id: str
    actions: list[str] = field(default_factory=list)


def cleanup(store: str | os.PathLike[str] | None = None) -> list[Cleaned]:
    """Stop the leftovers of every run in ``store`` whose driver died.

    For each such run: its batch jobs still pending or running are cancelled, its Parsl
    processes are stopped if they live on this host (and named, not signalled, if on
    another), and its stale lock is removed (the run stays 'interrupted', so ``resume()``
    carries it on).  A driver of another host is dead once its lease expired; runs whose
    driver may live are left alone.
    """
    runs = default_store(store) / "runs"
    cleaned = []
    for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
        lock = RunLock(run_dir, cancel_jobs=cancel_jobs)
        holder = lock.holder()
        if holder is None or holder.alive is not False:
            continue
        found = Cleaned(run_dir.name)
        lock.stop_leftovers(holder.record, found.actions.append)
        if lock.remove_stale(holder.record):
            found.actions.append(f"removed the stale lock of driver {holder.who}")
        else:
            found.actions.append("left its lock: another driver took the run over meanwhile")
        cleaned.append(found)
    return cleaned
