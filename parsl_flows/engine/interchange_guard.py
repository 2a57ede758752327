"""Run Parsl's HTEX interchange so that it leaves when the driver that started it dies.

Parsl starts the interchange as a child of the driver (``interchange_launch_cmd``) and
nothing in it checks on the driver: a SIGKILLed driver (a killed notebook kernel, an
OOM kill, a ``timeout``) leaves it running, and its worker pools keep executing queued
tasks for as long as it lives, on Slurm until the blocks' walltime.  Worker pools already
leave by themselves once their interchange is silent for ``heartbeat_threshold``
seconds, so an interchange that follows its driver is enough for everything the driver
started to go.

Used as ``interchange_launch_cmd = [python, "<this file>", DRIVER_PID]``: a thread watches
the parent pid and ends the process when the driver is gone; the main thread runs Parsl's
own interchange module, which reads its settings from standard input as usual.  The file
is run as a script, not with ``-m``, so the interchange does not import ``parsl_flows``;
it needs only the standard library and Parsl.

A parent-death signal (``PR_SET_PDEATHSIG``) would not do: Linux sends it when the
*thread* that started the child ends, and the driver starts executors from short-lived
threads.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading

__all__ = ["launch_command", "watch_driver"]

_INTERCHANGE_MODULE = "parsl.executors.high_throughput.interchange"
POLL_SECONDS = 1.0


def launch_command(driver_pid: int | None = None) -> list[str]:
    """The ``interchange_launch_cmd`` that guards an interchange with this process."""
    pid = os.getpid() if driver_pid is None else driver_pid
    return [sys.executable, os.path.abspath(__file__), str(pid)]


def watch_driver(driver_pid: int, poll_seconds: float = POLL_SECONDS) -> threading.Thread:
    """Start a daemon thread that ends this process once ``driver_pid`` is no longer its parent.

    The parent pid changes when the driver dies (the orphan is adopted by init or a
    subreaper), which, unlike probing ``driver_pid``, cannot be fooled by a reused pid.
    """

    def follow() -> None:
        stopped = threading.Event()
        while not stopped.wait(poll_seconds):
            if os.getppid() != driver_pid:
                os._exit(0)  # nothing to flush: the interchange keeps no state worth saving

    thread = threading.Thread(target=follow, name="follow-driver", daemon=True)
    thread.start()
    return thread


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not argv[0].isdigit():
        raise SystemExit(f"usage: python {__file__} DRIVER_PID")
    driver_pid = int(argv[0])
    if os.getppid() != driver_pid:  # the driver died before we got here
        raise SystemExit(0)
    watch_driver(driver_pid)
    runpy.run_module(_INTERCHANGE_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
