"""One driver per run: a lock file with the owner's pid and host, and its Parsl helpers.

The lock also lists the helper processes (HTEX interchange and worker pools) the driver
started: a killed driver leaves them running, still executing queued tasks, and whoever
takes over a stale lock stops them before resubmitting anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from .files import write_json

__all__ = ["RunLock", "RunLockedError", "driver_alive", "parsl_processes", "stop_processes"]

logger = logging.getLogger(__name__)

LOCK_NAME = "driver.lock"


class RunLockedError(RuntimeError):
    """Another live process drives this run."""


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(pid: int, create_time: float | None) -> bool:
    """True if ``pid`` is the same process as recorded (not a reused pid)."""
    now = _create_time(pid)
    return now is not None and (create_time is None or abs(now - create_time) < 1.0)


class RunLock:
    """The lock of one run directory, held by this process while it drives the run."""

    def __init__(
        self, run_dir: Path, cancel_jobs: Callable[[list[str]], list[str]] | None = None
    ) -> None:
        """``cancel_jobs`` cancels a dead driver's batch jobs (Slurm blocks) on take-over."""
        self.path = run_dir / LOCK_NAME
        self.run_id = run_dir.name
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.cancel_jobs = cancel_jobs
        self._helpers: list[list[float]] = []
        self._parsl_run_dir: str | None = None
        self._batch_jobs: list[str] = []

    def _record(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "host": self.host,
            "create_time": _create_time(self.pid),
            "since": time.time(),
            "helpers": self._helpers,
            "parsl_run_dir": self._parsl_run_dir,
            "batch_jobs": self._batch_jobs,
        }

    def read(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                data: dict[str, Any] = json.load(f)
                return data
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def acquire(self, log: Callable[[str], None]) -> None:
        """Take the lock; take over a stale one (its owner is dead); refuse a live one."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._take_over(log)
            return
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)

    def _take_over(self, log: Callable[[str], None]) -> None:
        owner = self.read() or {}
        pid, host = owner.get("pid"), owner.get("host")
        if pid == self.pid and host == self.host:
            write_json(self.path, self._record())
            return
        if host != self.host:
            raise RunLockedError(
                f"run {self.run_id} is driven by pid {pid} on host {host}; this host cannot "
                f"tell whether it is alive. Stop it there, or delete {self.path} if it is gone"
            )
        if isinstance(pid, int) and _alive(pid, owner.get("create_time")):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
            raise RunLockedError(
                f"run {self.run_id} is already being driven by pid {pid} on {host} (since "
                f"{since}); wait for it to end or stop that process, then resume"
            )
        log(f"taking over the stale lock of driver pid {pid} on {host} (that process is gone)")
        self.stop_leftovers(owner, log)
        write_json(self.path, self._record())

    def stop_leftovers(self, owner: dict[str, Any], log: Callable[[str], None]) -> None:
        """Stop what a dead driver (its lock record ``owner``) left: processes, batch jobs."""
        self._stop_orphans(owner.get("helpers") or [], owner.get("parsl_run_dir"), log)
        jobs = [str(j) for j in owner.get("batch_jobs") or []]
        if jobs and self.cancel_jobs is not None:
            cancelled = self.cancel_jobs(jobs)
            if cancelled:
                log(f"cancelled the dead driver's batch job(s) {', '.join(cancelled)}")

    @staticmethod
    def _stop_orphans(
        helpers: list[list[float]], parsl_run_dir: str | None, log: Callable[[str], None]
    ) -> None:
        """Stop the dead driver's interchange and its worker pools, if any are left."""
        procs = parsl_processes(parsl_run_dir, helpers)
        if not procs:
            return
        log(f"stopping {len(procs)} Parsl process(es) the dead driver left running")
        stop_processes(procs, timeout=5)

    def note_helpers(self, parsl_run_dir: str | None, batch_jobs: list[str] | None = None) -> None:
        """Record the Parsl processes and batch jobs this driver started, for a successor."""
        found = []
        for p in _parsl_children(psutil.Process(self.pid)):
            with contextlib.suppress(psutil.Error):
                found.append([p.pid, p.create_time()])
        jobs = sorted(set(self._batch_jobs) | set(batch_jobs or []))
        if (
            sorted(found) != sorted(self._helpers)
            or parsl_run_dir != self._parsl_run_dir
            or jobs != self._batch_jobs
        ):
            self._helpers = found
            self._parsl_run_dir = parsl_run_dir
            self._batch_jobs = jobs
            write_json(self.path, self._record())

    def release(self) -> None:
        owner = self.read()
        if owner and owner.get("pid") == self.pid and owner.get("host") == self.host:
            self.path.unlink(missing_ok=True)


def _parsl_children(parent: psutil.Process) -> list[psutil.Process]:
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
        roots.extend(_parsl_children(psutil.Process()))
    else:
        for pid, created in helpers:
            if _alive(int(pid), created):
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


def driver_alive(run_dir: Path) -> bool | None:
    """Is the run's driver alive?  None when this host cannot tell (another host)."""
    lock = RunLock(run_dir)
    owner = lock.read()
    if owner is None:
        return False
    if owner.get("host") != lock.host:
        return None
    pid = owner.get("pid")
    return isinstance(pid, int) and _alive(pid, owner.get("create_time"))
