"""Walltime per element: an element that runs past its step's walltime is stopped.

In a worker process's main thread (HTEX), SIGALRM raises the TimeoutError, which also
interrupts ``sleep`` and blocking I/O; an element that swallows it or is stuck in C code
past a grace period has its worker ended.  In another thread (the thread pool, in the
driver) the error is raised asynchronously, at the element's next Python bytecode.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Deadline", "WalltimeExceeded", "grace"]


class WalltimeExceeded(TimeoutError):
    """Raised into an element's code when it runs past the step's walltime."""


def grace(walltime_s: float) -> float:
    """How long an element may ignore its TimeoutError before its worker is ended."""
    return min(60.0, 3.0 + 0.1 * walltime_s)


_ACTIVE: list[Deadline] = []  # the deadline of the element running in the main thread


def _on_alarm(signum: int, frame: Any) -> None:
    if _ACTIVE and not _ACTIVE[-1].finished:
        raise WalltimeExceeded(_ACTIVE[-1].message)


class Deadline:
    """Stop one element at its walltime, whatever thread runs it.

    In a worker process's main thread (HTEX), SIGALRM raises the TimeoutError, which
    also interrupts ``sleep`` and blocking I/O; an element that swallows it or is stuck in
    C code past a grace period gets its exception file written and its worker process
    ended, and Parsl replaces the worker.  In another thread (the thread pool, in the
    driver) the error is raised asynchronously, at the element's next Python bytecode.
    """

    def __init__(self, seconds: float, message: str, hard_stop: Callable[[], None] | None):
        self.seconds = seconds
        self.message = message
        self.hard_stop = hard_stop
        self.finished = False
        self.fired = False
        self._lock = threading.Lock()
        self._main = threading.current_thread() is threading.main_thread()
        self._ident = threading.get_ident()
        delay = seconds + grace(seconds) if self._main else seconds
        self._timer = threading.Timer(delay, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        if self._main:
            if signal.getsignal(signal.SIGALRM) is not _on_alarm:
                signal.signal(signal.SIGALRM, _on_alarm)
            _ACTIVE.append(self)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.finished = True
            self._timer.cancel()
            if self._main:
                signal.setitimer(signal.ITIMER_REAL, 0)
                _ACTIVE.remove(self)
            elif self.fired:  # raised too late to land inside the element: withdraw it
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._ident), None)

    def _fire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.fired = True
            if not self._main:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._ident), ctypes.py_object(WalltimeExceeded)
                )
            elif self.hard_stop is not None:
                self.hard_stop()
