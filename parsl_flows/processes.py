"""A driver's Parsl processes: find them (by pid and start time, or by their run folder)
and stop them.

A killed driver may leave its HTEX interchange and worker pools running; whoever takes
over its run (resume, cleanup) finds them here.  A pid alone is not a process: pids are
reused, so a process is the pid *and* its start time.
"""

from __future__ import annotations

import contextlib
import os
import time

import psutil

__all__ = [
    "alive",
    "create_time",
    "parsl_children",
    "parsl_processes",
    "stop_processes",
    "wait_ended",
]


def create_time(pid: int) -> float | None:
    """When process ``pid`` started (psutil's clock), or None if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int, created: float | None) -> bool:
    """True if ``pid`` is the same process as recorded (not a reused pid)."""
    now = create_time(pid)
    return now is not None and (created is None or abs(now - created) < 1.0)


def parsl_children(parent: psutil.Process) -> list[psutil.Process]:
    """The direct children of ``parent`` that Parsl started (interchanges, local pools)."""
    found = []
    with contextlib.suppress(psutil.Error):
        for p in parent.children(recursive=False):
            with contextlib.suppress(psutil.Error):
                cmd = " ".join(p.cmdline())
                if "interchange" in cmd or "process_worker_pool" in cmd or "parsl" in cmd:
                    found.append(p)
    return found


def parsl_processes(
    parsl_run_dir: str | None, helpers: list[list[float]] | None = None
) -> list[psutil.Process]:
    """Every live process of one driver's Parsl, with their children.

    ``helpers`` are ``[pid, create_time]`` of the interchanges (children of the driver);
    without them, the calling process's own Parsl children are taken.  Worker pools were
    detached by Parsl's LocalProvider (new process group, adopted by init), but name the
    driver's Parsl run directory on their command line.
    """
    roots: list[psutil.Process] = []
    if helpers is None:
        roots.extend(parsl_children(psutil.Process()))
    else:
        for pid, created in helpers:
            if alive(int(pid), created):
                with contextlib.suppress(psutil.Error):
                    roots.append(psutil.Process(int(pid)))
    if parsl_run_dir:
        marker = parsl_run_dir.rstrip("/") + "/"
        for p in psutil.process_iter(["cmdline"]):
            if p.pid != os.getpid() and marker in " ".join(p.info.get("cmdline") or []):
                roots.append(p)
    procs: dict[int, psutil.Process] = {}
    for root in roots:
        with contextlib.suppress(psutil.Error):
            for p in [root, *root.children(recursive=True)]:
                procs.setdefault(p.pid, p)
    return list(procs.values())


def stop_processes(procs: list[psutil.Process], timeout: float) -> None:
    """SIGTERM ``procs``, then SIGKILL those still alive after ``timeout`` seconds."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    alive = wait_ended(procs, timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    wait_ended(alive, timeout)


def wait_ended(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for ``procs`` to end; those still running.

    A zombie has ended: it only waits for its parent to reap it.  Worker pools are
    adopted by process 1, and where that is not a real init (containers, this
    project's machines) nobody ever reaps them; ``psutil.wait_procs`` would wait out
    the whole timeout for each, which made every driver's exit a second slower.
    """
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while True:
        alive = [p for p in alive if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.01)


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
