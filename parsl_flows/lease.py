"""A lease on a file of a shared filesystem: renewed by its holder, judged by anyone.

A cluster has several login nodes, and a driver's pid means nothing on another one.  So
the driver rewrites its lock every :data:`RENEW_SECONDS` (a temporary file renamed into
place), and whoever looks at the lock compares the file's modification time with the
filesystem's "now": the modification time of a small probe file written beside it.  The
file server stamps both, so clocks that disagree between hosts do not matter; the local
clock (``time.time()``) is never compared with a file's time.

A client of a shared filesystem may show a modification time that is stale by its
attribute cache (NFS's ``acdirmax``: 60 s; sshfs's ``cache_timeout``: 20 s by default), so
a lease lasts :func:`lease_seconds` (90 s, or ``$PARSL_FLOWS_LEASE_SECONDS``): more than
a renewal period plus that staleness.  A lease read as live may have ended up to that long
ago; one read as expired has surely ended.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as folder:
...     lock = Path(folder, "driver.lock")
...     _ = lock.write_text("{}")
...     print(lease_age(lock) < lease_seconds())
True
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "LEASE_ENV",
    "RENEW_SECONDS",
    "Renewal",
    "lease_age",
    "lease_seconds",
    "server_now",
]

logger = logging.getLogger(__name__)

#: How often a driver rewrites its lock.  One small write per period, whatever the run does.
RENEW_SECONDS = 5.0
#: A lease not renewed for this long (by the file server's clock) has expired.
DEFAULT_LEASE_SECONDS = 90.0
LEASE_ENV = "PARSL_FLOWS_LEASE_SECONDS"
#: How long one measurement of a filesystem's clock serves (against the local monotonic
#: clock): ``list`` or ``status`` over many runs writes one probe, not one per run.
_OFFSET_SECONDS = 30.0
_offsets: dict[int, tuple[float, float]] = {}  # st_dev -> (server - monotonic, measured at)
_offsets_lock = threading.Lock()


def lease_seconds() -> float:
    """How long a lease lasts without renewal: ``$PARSL_FLOWS_LEASE_SECONDS``, else 90 s.

    Tests shorten it; on a cluster it must exceed :data:`RENEW_SECONDS` plus how stale
    the shared filesystem's client caches may be.
    """
    value = os.environ.get(LEASE_ENV)
    if not value:
        return DEFAULT_LEASE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"${LEASE_ENV}={value!r} is not a number of seconds") from None
    if seconds <= RENEW_SECONDS:
        raise ValueError(
            f"${LEASE_ENV}={value!r} must exceed the renewal period ({RENEW_SECONDS:g} s) "
            "plus how stale the shared filesystem's caches may be"
        )
    return seconds


def server_now(folder: Path) -> float | None:
    """The clock of the filesystem holding ``folder``, as it stamps files; None if unwritable.

    Measured by writing a probe file there and reading its modification time, then kept
    for a while as an offset from this host's monotonic clock (which ``time.time()``
    changes, NTP steps included, do not move).
    """
    try:
        dev = os.stat(folder).st_dev
    except OSError:
        return None
    with _offsets_lock:
        known = _offsets.get(dev)
    now = time.monotonic()
    if known is not None and now - known[1] < _OFFSET_SECONDS:
        return now + known[0]
    stamp = _probe(folder)
    if stamp is None:
        return None
    measured = time.monotonic()
    with _offsets_lock:
        _offsets[dev] = (stamp - measured, measured)
    return stamp


def _probe(folder: Path) -> float | None:
    """Write a new file in ``folder`` and read back the time the file server gave it.

    A new name each time: no client has cached attributes for it.
    """
    probe = folder / f".lease-probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"\n")
        finally:
            os.close(fd)
        return os.stat(probe).st_mtime
    except OSError as e:  # a read-only or full store: the caller cannot tell
        logger.debug("cannot probe the clock of %s: %s", folder, e)
        return None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def lease_age(path: Path) -> float | None:
    """Seconds since ``path`` was last written, by its filesystem's clock.

    None when this host cannot write beside it to read that clock.  Raises
    ``FileNotFoundError`` when ``path`` is gone.
    """
    written = os.stat(path).st_mtime
    now = server_now(path.parent)
    return None if now is None else max(0.0, now - written)


class Renewal:
    """A daemon thread that calls ``renew`` every ``period`` seconds until told to stop.

    ``renew`` returns False to end the renewals (the lease was lost); an ``OSError`` it
    raises (a full store, a stalled filesystem) is logged and the next period tries again.
    A daemon: a process that dies stops renewing, which is how others learn it died.
    """

    def __init__(self, renew: Callable[[], bool], period: float, name: str) -> None:
        self._renew = renew
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            try:
                if not self._renew():
                    return
            except OSError as e:
                logger.warning("%s: cannot renew the lease: %s", self._thread.name, e)
