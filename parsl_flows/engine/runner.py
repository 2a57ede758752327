"""The one owner of the Parsl DataFlowKernel in this process.

The kernel starts on the first submission and is cleaned up at interpreter exit.  Later
submissions reuse it; an environment not seen before adds its executors to the running
kernel (with labels made unique), so a notebook can submit many runs, on several
environments, without ``parsl.clear()`` and without "Config has already been loaded".
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from parsl.app.python import PythonApp
from parsl.dataflow.dflow import DataFlowKernel

from ..step import Resources
from .environment import ExecutionEnvironment
from .worker import TaskSpec, run_task

__all__ = ["Runner", "runner"]

logger = logging.getLogger(__name__)


def _prepare_process_environment() -> None:
    """Make the executors' helper scripts and this package findable by what Parsl starts.

    HTEX launches ``interchange.py`` and ``process_worker_pool.py`` from PATH, which fails
    when a virtual environment's python is run without activating it; and workers must
    import ``parsl_flows`` even when it is not installed (a source checkout).
    """
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = bindir + (os.pathsep + path if path else "")
    pkg_parent = str(Path(__file__).resolve().parents[2])
    pythonpath = os.environ.get("PYTHONPATH", "")
    if pkg_parent not in pythonpath.split(os.pathsep):
        os.environ["PYTHONPATH"] = pkg_parent + (os.pathsep + pythonpath if pythonpath else "")


class Runner:
    """Holds the DataFlowKernel and one app per executor label."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._dfk: DataFlowKernel | None = None
        self._labels: dict[str, list[str]] = {}  # environment name -> executor labels
        self._class_labels: dict[tuple[str, Resources], str] = {}  # per resource class
        self._apps: dict[str, PythonApp] = {}
        self._atexit_registered = False

    @property
    def dfk(self) -> DataFlowKernel | None:
        return self._dfk

    def executors_for(self, env: ExecutionEnvironment, run_dir: Path) -> list[str]:
        """Start ``env``'s executors (once per process) and return their labels."""
        with self._lock:
            if env.name in self._labels:
                return self._labels[env.name]
            _prepare_process_environment()
            config = env.config()
            if self._dfk is None:
                if config.run_dir == "runinfo":  # Parsl's default: keep it out of the cwd
                    config.run_dir = str(run_dir)
                logger.info("starting Parsl for environment %r", env.name)
                self._dfk = DataFlowKernel(config)
                labels = [e.label for e in config.executors]
            else:
                taken = set(self._dfk.executors)
                labels = []
                for ex in config.executors:
                    if ex.label in taken:
                        ex.label = f"{env.name}-{ex.label}"
                    taken.add(ex.label)
                    labels.append(ex.label)
                logger.info("adding executors %s for environment %r", labels, env.name)
                self._dfk.add_executors(config.executors)
            if not self._atexit_registered:
                atexit.register(self.shutdown)
                self._atexit_registered = True
            self._labels[env.name] = labels
            return labels

    def executor_for(self, env: ExecutionEnvironment, resources: Resources, run_dir: Path) -> str:
        """The executor for steps of ``env`` that ask for ``resources``.

        Steps without resources, and environments that cannot size executors (local
        ones), use the environment's first executor.  Each new resource class adds an
        executor to the running kernel, so its blocks are sized for it.
        """
        default = self.executors_for(env, run_dir)[0]
        if not resources or env.make_executor is None:
            return default
        with self._lock:
            key = (env.name, resources)
            if key not in self._class_labels:
                label = f"{env.name}-{resources.label()}"
                executor = env.make_executor(resources, label)
                logger.info("adding executor %s for resources %s", label, resources.as_dict())
                assert self._dfk is not None
                self._dfk.add_executors([executor])
                self._class_labels[key] = label
            return self._class_labels[key]

    def batch_jobs(self, label: str) -> list[str]:
        """The scheduler job ids of the blocks an executor has started (Slurm job ids)."""
        executor = None if self._dfk is None else self._dfk.executors.get(label)
        jobs = getattr(executor, "blocks_to_job_id", {}) or {}
        return [str(j) for j in jobs.values()]

    def submit(self, label: str, task: TaskSpec) -> Future[Any]:
        """Send one task to the executor ``label``; the future resolves to element results."""
        with self._lock:
            app = self._apps.get(label)
            if app is None:
                app = PythonApp(run_task, data_flow_kernel=self._dfk, executors=[label])
                self._apps[label] = app
        return app(task)

    def shutdown(self) -> None:
        """Stop every executor (called at interpreter exit)."""
        with self._lock:
            dfk, self._dfk = self._dfk, None
            self._labels.clear()
            self._class_labels.clear()
            self._apps.clear()
        if dfk is not None:
            logger.info("shutting down Parsl")
            try:
                dfk.cleanup()
            except Exception:  # at exit, a failing cleanup must not hide the real outcome
                logger.exception("Parsl cleanup failed")


runner = Runner()
