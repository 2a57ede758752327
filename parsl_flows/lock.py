"""One driver per run: a lock file that names it, renewed as a lease, and its Parsl helpers.

The lock names the driver (pid, host) and lists the helper processes (HTEX interchange
and worker pools) and batch jobs it started: a killed driver may leave them running,
still executing queued tasks, and whoever takes over a stale lock stops them before
resubmitting anything.

On its own host a driver is judged by its pid at once.  From another host (a cluster's
other login node) it is judged by its lease (:mod:`parsl_flows.lease`): the driver
rewrites the lock every few seconds, and a lock the file server has not seen rewritten
for :func:`~parsl_flows.lease.lease_seconds` belongs to a dead driver.  Nobody signals a
process of another host: its pids mean other processes here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .files import write_bytes
from .lease import RENEW_SECONDS, Renewal, lease_age, lease_seconds
from .processes import alive, create_time, parsl_children, parsl_processes, stop_processes

__all__ = [
    "Holder",
    "RunLock",
    "RunLockedError",
    "driver_alive",
]

logger = logging.getLogger(__name__)

LOCK_NAME = "driver.lock"
#: The record is padded to a multiple of this many bytes (see :func:`_encode`).
_PAD = 512


class RunLockedError(RuntimeError):
    """Another live process drives this run."""


def _encode(record: dict[str, Any]) -> bytes:
    """The record as JSON, padded with spaces to a multiple of :data:`_PAD` bytes.

    A client of a shared filesystem may read a rewritten file with the size it cached
    for the old one (sshfs did, here): a renewal of another length would read cut short
    on other hosts.  Renewals of one driver keep one length, so they read whole.
    """
    text = json.dumps(record, indent=1).encode()
    return text + b" " * (-(len(text) + 1) % _PAD) + b"\n"


@dataclass(frozen=True)
class Holder:
    """Who holds a run's lock, as this host can tell (:meth:`RunLock.holder`).

    ``alive`` is None when this host cannot tell: a lock of another host written by a
    version without leases, or a store this host cannot write a probe file to.
    """

    record: dict[str, Any]
    here: bool  # on this host: judged by its pid
    alive: bool | None
    age: float | None = None  # seconds since its last renewal, by the file server's clock
    lease: float = 0.0  # how long a lease lasts, as this host counts it

    @property
    def who(self) -> str:
        return f"pid {self.record.get('pid')} on host {self.record.get('host')}"


class RunLock:
    """The lock of one run directory, held by this process while it drives the run.

    While held, a daemon thread renews it every :data:`~parsl_flows.lease.RENEW_SECONDS`
    (one small write, whatever the run does).  A renewal that finds the lock taken over
    by another driver (this one was frozen, or its filesystem stalled, past the lease)
    stops renewing, never writes the lock again, and tells the callbacks given to
    :meth:`on_lost`, so the run stops.
    """

    def __init__(
        self, run_dir: Path, cancel_jobs: Callable[[list[str]], list[str]] | None = None
    ) -> None:
        """``cancel_jobs`` cancels a dead driver's batch jobs (Slurm blocks) on take-over."""
        self.path = run_dir / LOCK_NAME
        self.run_id = run_dir.name
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.cancel_jobs = cancel_jobs
        self.lost = ""  # why this driver lost the lock, once it has
        self._create_time = create_time(self.pid)
        self._since = time.time()
        self._helpers: list[list[float]] = []
        self._parsl_run_dir: str | None = None
        self._batch_jobs: list[str] = []
        self._writing = threading.Lock()  # the renewal thread and the run's thread
        self._renewal: Renewal | None = None
        self._on_lost: list[Callable[[str], None]] = []

    def _record(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "host": self.host,
            "create_time": self._create_time,
            "since": self._since,
            "renewed": round(time.time(), 3),  # for people; leases go by the file's time
            "renew_seconds": RENEW_SECONDS,
            "helpers": self._helpers,
            "parsl_run_dir": self._parsl_run_dir,
            "batch_jobs": self._batch_jobs,
        }

    def _write(self) -> None:
        write_bytes(self.path, _encode(self._record()))

    def _is_mine(self, record: dict[str, Any]) -> bool:
        return record.get("pid") == self.pid and record.get("host") == self.host

    def read(self) -> dict[str, Any] | None:
        """The lock's record; None without a lock; ``{}`` if it does not read as one.

        Through a client with a stale cached size a record being renewed can read cut
        short: it is read again a few times first.
        """
        for attempt in range(4):
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            with contextlib.suppress(ValueError):
                record = json.loads(data)
                if isinstance(record, dict):
                    return record
            time.sleep(0.05 * (attempt + 1))
        return {}

    def holder(self) -> Holder | None:
        """Who holds the lock and whether it lives; None when nobody does."""
        owner = self.read()
        if owner is None:
            return None
        if owner.get("host") == self.host:
            pid = owner.get("pid")
            living = isinstance(pid, int) and alive(pid, owner.get("create_time"))
            return Holder(owner, here=True, alive=living)
        lease = lease_seconds()
        if owner and "renew_seconds" not in owner:  # an older version's: never renewed
            return Holder(owner, here=False, alive=None, lease=lease)
        try:
            age = lease_age(self.path)
        except FileNotFoundError:
            return None
        verdict = None if age is None else age < lease
        return Holder(owner, here=False, alive=verdict, age=age, lease=lease)

    def acquire(self, log: Callable[[str], None]) -> None:
        """Take the lock; take over a stale one (its owner is dead); refuse a live one.

        Then renew it until :meth:`release`.
        """
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._take_over(log)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(_encode(self._record()))
        if self._renewal is None:
            self._renewal = Renewal(self._renew, RENEW_SECONDS, f"lease-{self.run_id}")
            self._renewal.start()

    def _take_over(self, log: Callable[[str], None]) -> None:
        holder = self.holder()
        if holder is None or self._is_mine(holder.record):  # released meanwhile, or ours
            self._write()
            return
        if holder.alive:
            raise RunLockedError(self._refusal(holder))
        if holder.alive is None:
            why = (
                "cannot write a probe file beside its lock to read the filesystem's clock"
                if "renew_seconds" in holder.record
                else "its lock has no lease: an older parsl_flows wrote it"
            )
            raise RunLockedError(
                f"run {self.run_id} is driven by {holder.who}, and this host cannot tell "
                f"whether it is alive ({why}). Stop it there, or delete {self.path} if it "
                "is gone"
            )
        if holder.here:
            log(f"taking over the stale lock of driver {holder.who} (that process is gone)")
        else:
            log(
                f"taking over the expired lease of driver {holder.who} (last renewed "
                f"{holder.age:.0f} s ago by the file server's clock; a lease lasts "
                f"{holder.lease:.0f} s)"
            )
        # Claim the run first: another host that judged the lease expired at the same
        # time sees this record; the one of the two that loses learns it at its renewal.
        self._write()
        self.stop_leftovers(holder.record, log)

    def _refusal(self, holder: Holder) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.record.get("since") or 0))
        driven = f"run {self.run_id} is already being driven by {holder.who} (since {since})"
        if holder.here:
            return f"{driven}; wait for it to end or stop that process, then resume"
        age = holder.age or 0.0
        left = max(0.0, holder.lease - age)
        at = time.strftime("%H:%M:%S", time.localtime(time.time() + left))
        return (
            f"{driven}: it renewed its lease {age:.0f} s ago, so it is alive or died less "
            f"than {holder.lease:.0f} s ago. If it is dead, the lease expires in {left:.0f} s "
            f"(about {at} here): resume again then. Otherwise wait for it to end, or stop "
            f"it on {holder.record.get('host')} (kill {holder.record.get('pid')}), then resume"
        )

    def _renew(self) -> bool:
        """One renewal: rewrite the record, unless another driver took the lock."""
        with self._writing:
            if self.lost:
                return False
            owner = self.read()
            if owner is None or (owner and not self._is_mine(owner)):
                self._lose(owner)
                return False
            self._write()
            return True

    def _lose(self, owner: dict[str, Any] | None) -> None:
        who = (
            "nobody: its lock file was removed"
            if owner is None
            else f"pid {owner.get('pid')} on host {owner.get('host')}"
        )
        self.lost = (
            f"run {self.run_id}: this driver (pid {self.pid} on host {self.host}) lost its "
            f"lease to {who}; it stops driving the run and writes nothing more to it"
        )
        logger.error(self.lost)
        for callback in list(self._on_lost):
            callback(self.lost)

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` when the lock is lost (at once, if it already is)."""
        self._on_lost.append(callback)
        if self.lost:
            callback(self.lost)

    def stop_leftovers(self, owner: dict[str, Any], log: Callable[[str], None]) -> None:
        """Stop what a dead driver (its lock record ``owner``) left: processes, batch jobs.

        The processes only on its own host: on another one, they are named, not signalled.
        """
        jobs = [str(j) for j in owner.get("batch_jobs") or []]
        if jobs and self.cancel_jobs is not None:
            cancelled = self.cancel_jobs(jobs)
            if cancelled:
                log(f"cancelled the dead driver's batch job(s) {', '.join(cancelled)}")
        if owner.get("host") == self.host:
            self._stop_orphans(owner.get("helpers") or [], owner.get("parsl_run_dir"), log)
        else:
            _name_remote_leftovers(owner, log)

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
        for p in parsl_children(psutil.Process(self.pid)):
            with contextlib.suppress(psutil.Error):
                found.append([p.pid, p.create_time()])
        with self._writing:
            jobs = sorted(set(self._batch_jobs) | set(batch_jobs or []))
            if self.lost or (
                sorted(found) == sorted(self._helpers)
                and parsl_run_dir == self._parsl_run_dir
                and jobs == self._batch_jobs
            ):
                return
            self._helpers = found
            self._parsl_run_dir = parsl_run_dir
            self._batch_jobs = jobs
            self._write()

    def release(self) -> None:
        """Stop renewing and remove the lock, if it is still this driver's."""
        if self._renewal is not None:
            self._renewal.stop()
            self._renewal = None
        with self._writing:
            owner = self.read()
            if not self.lost and owner and self._is_mine(owner):
                self.path.unlink(missing_ok=True)

    def remove_stale(self, owner: dict[str, Any]) -> bool:
        """Remove the lock if it still holds the dead driver's record ``owner``.

        Not if someone took the run over since it was judged dead.
        """
        now = self.read()
        keys = ("pid", "host", "since")
        if now is None or any(now.get(k) != owner.get(k) for k in keys):
            return False
        self.path.unlink(missing_ok=True)
        return True


def _name_remote_leftovers(owner: dict[str, Any], log: Callable[[str], None]) -> None:
    """Say which processes of another host's dead driver were left alone, and why."""
    host = owner.get("host")
    pids = [str(int(pid)) for pid, _ in owner.get("helpers") or []]
    parsl_run_dir = owner.get("parsl_run_dir")
    if not pids and not parsl_run_dir:
        return
    which = f"{len(pids)} process(es) of host {host}" if pids else f"the processes of host {host}"
    listed = f" (pids {', '.join(pids)})" if pids else ""
    pools = f"; its worker pools name {parsl_run_dir}" if parsl_run_dir else ""
    log(f"left {which} alone{listed}: stop them there if they still run{pools}")


def driver_alive(run_dir: Path) -> bool | None:
    """Is the run's driver alive?  By its pid on this host, by its lease on another.

    None only when this host cannot tell (see :class:`Holder`).
    """
    holder = RunLock(run_dir).holder()
    return False if holder is None else holder.alive
