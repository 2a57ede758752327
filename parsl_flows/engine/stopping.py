"""Stopping runs on request: Ctrl-C in a script, a notebook cell or the CLI.

The runs a process is carrying out are registered here.  :func:`interrupt` tells them to
stop submitting, waits for their threads to unwind (they look four times a second), and,
when no run of the process is left, shuts Parsl down and stops every process it started.
A hook at interpreter exit waits for runs that a script submitted without waiting for
them, and Ctrl-C there stops them the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from ..processes import parsl_processes
from .runner import STOP_SECONDS, runner

__all__ = ["exit_at_once", "interrupt", "live_executions", "register", "unregister"]

#: How long the orchestrator may take to notice a stop and unwind.
UNWIND_SECONDS = 3.0


class Stoppable(Protocol):
    done: threading.Event

    def request_stop(self, reason: str) -> None: ...


_LIVE: set[Stoppable] = set()
_LIVE_LOCK = threading.Lock()
_AT_EXIT_REGISTERED = False


def register(execution: Stoppable) -> None:
    """Note a run this process starts carrying out."""
    global _AT_EXIT_REGISTERED
    with _LIVE_LOCK:
        _LIVE.add(execution)
        if not _AT_EXIT_REGISTERED:
            # Runs before the interpreter joins our (non-daemon) threads: a script that
            # submitted and ended still finishes its runs, and Ctrl-C there stops them.
            threading._register_atexit(_finish_at_exit)  # type: ignore[attr-defined]
            _AT_EXIT_REGISTERED = True


def unregister(execution: Stoppable) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(execution)


def live_executions() -> list[Any]:
    """The runs this process is carrying out right now."""
    with _LIVE_LOCK:
        return list(_LIVE)


def interrupt(executions: list[Any], reason: str) -> None:
    """Stop ``executions`` at once: what Ctrl-C does to a script, a notebook cell or the CLI.

    Nothing more is submitted; each run ends ``interrupted`` with what finished kept in
    the store, and its lock is released, so ``resume()`` carries it on here or elsewhere.
    When no other run of this process is left, Parsl is shut down and every process it
    started is stopped (the next submission starts a new one).  Runs of this process that
    were not interrupted keep the shared workers, and with them this run's queued tasks.
    A second Ctrl-C while this happens ends the process at once.
    """
    with _second_interrupt_exits():
        for ex in executions:
            ex.request_stop(reason)
        deadline = time.monotonic() + UNWIND_SECONDS
        for ex in executions:
            ex.done.wait(max(0.0, deadline - time.monotonic()))
        if not live_executions():
            runner.shutdown(timeout=STOP_SECONDS)


@contextlib.contextmanager
def _second_interrupt_exits() -> Iterator[None]:
    """While stopping, a second SIGINT kills Parsl's processes and exits (status 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, exit_at_once)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def exit_at_once(signum: int, frame: Any) -> None:
    """A SIGINT handler for a second Ctrl-C: kill Parsl's processes, exit with status 130."""
    for p in parsl_processes(None):  # the interchanges: their pools follow them
        with contextlib.suppress(Exception):
            p.kill()
    os._exit(130)


def _finish_at_exit() -> None:
    """At interpreter exit, wait for this process's runs; Ctrl-C there interrupts them."""
    try:
        for ex in live_executions():
            ex.done.wait()
    except KeyboardInterrupt:
        interrupt(live_executions(), "interrupted by Ctrl-C (SIGINT) at the end of the script")
