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
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..processes import parsl_processes, stop_processes
from ..step import Resources
from .chunking import worker_count
from .environment import ExecutionEnvironment
from .interchange_guard import launch_command
from .worker import TaskSpec, run_task

if TYPE_CHECKING:  # Parsl loads with the first DataFlowKernel (environment._parsl_config)
    from parsl.app.python import PythonApp
    from parsl.dataflow.dflow import DataFlowKernel
    from parsl.executors.base import ParslExecutor

__all__ = ["Runner", "runner"]

logger = logging.getLogger(__name__)


#: How long a Ctrl-C waits for Parsl to shut down cleanly before its processes are killed.
STOP_SECONDS = 4.0


def _guard(executors: Sequence[ParslExecutor]) -> None:
    """Make each HTEX interchange leave when this driver dies (see ``interchange_guard``).

    Only executors that use Parsl's default launch command are changed: a user who set
    ``interchange_launch_cmd`` keeps it.
    """
    from parsl.executors import HighThroughputExecutor

    for ex in executors:
        if isinstance(ex, HighThroughputExecutor) and list(ex.interchange_launch_cmd) == [
            "interchange.py"
        ]:
            ex.interchange_launch_cmd = launch_command()


def _poll_safely(executors: Sequence[ParslExecutor]) -> None:
    """Keep one executor's failing status poll from stopping Parsl's polling of all.

    Parsl's job status poller asks each executor's provider for its blocks in one loop:
    an exception from one (a local provider whose blocks' files went with a deleted store:
    ``FileNotFoundError`` on every poll) ends that poll for every executor after it, whose
    blocks are then never started, and a run on them waits for ever.  Such a provider's
    blocks read as unknown instead, and it is said once.
    """
    for ex in executors:
        provider = getattr(ex, "provider", None)
        if provider is not None and not isinstance(provider.status, _SafeStatus):
            provider.status = _SafeStatus(provider.status, ex.label)


class _SafeStatus:
    """A provider's ``status``, giving unknown states where the provider raises OSError."""

    def __init__(self, status: Callable[[Any], Any], label: str) -> None:
        self.status, self.label, self.said = status, label, False

    def __call__(self, job_ids: Any) -> Any:
        from parsl.jobs.states import JobState, JobStatus

        try:
            return self.status(job_ids)
        except OSError as e:
            if not self.said:
                self.said = True
                logger.warning(
                    "executor %s cannot read the state of its blocks (%s): taken as unknown, "
                    "so that other executors are still polled", self.label, e,
                )  # fmt: skip
            return [JobStatus(JobState.UNKNOWN, f"state unreadable: {e}") for _ in job_ids]


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
            if env.name in self._labels and not self._broken(self._labels[env.name]):
                return self._labels[env.name]
            _prepare_process_environment()
            config = env.config()
            _guard(config.executors)
            _poll_safely(config.executors)
            if self._dfk is None:
                if config.run_dir == "runinfo":  # Parsl's default: keep it out of the cwd
                    config.run_dir = str(run_dir)
                logger.info("starting Parsl for environment %r", env.name)
                from parsl.dataflow.dflow import DataFlowKernel

                self._dfk = DataFlowKernel(config)
                labels = [e.label for e in config.executors]
            else:
                labels = [self._add(ex, f"{env.name}-{ex.label}") for ex in config.executors]
                logger.info("adding executors %s for environment %r", labels, env.name)
                if env.name in self._labels:
                    logger.warning(
                        "executors %s of environment %r could not start blocks; replaced by %s",
                        self._labels[env.name],
                        env.name,
                        labels,
                    )
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
            if key not in self._class_labels or self._broken([self._class_labels[key]]):
                label = f"{env.name}-{resources.label()}"
                executor = env.make_executor(resources, label)
                _guard([executor])
                _poll_safely([executor])
                label = self._add(executor, label)
                logger.info("added executor %s for resources %s", label, resources.as_dict())
                self._class_labels[key] = label
            return self._class_labels[key]

    def _add(self, executor: ParslExecutor, label: str) -> str:
        """Add ``executor`` to the running kernel under ``label`` (made unique); its label."""
        assert self._dfk is not None
        taken = set(self._dfk.executors)
        if executor.label not in taken:
            label = executor.label
        unique, n = label, 1
        while unique in taken:
            n += 1
            unique = f"{label}-{n}"
        executor.label = unique
        # The kernel's folder went with the store it was started in (deleted since): a new
        # executor's logs, scripts and its blocks' worker logs go under it.
        os.makedirs(self._dfk.run_dir, exist_ok=True)
        self._dfk.add_executors([executor])
        return unique

    def _broken(self, labels: list[str]) -> bool:
        """Has Parsl taken one of these executors out of service (its blocks cannot start)?

        Parsl never uses an executor in bad state again, so the next submission after the
        user fixes the cause (a bad ``worker_init``) gets a new one: no restart of the
        notebook kernel.
        """
        executors = {} if self._dfk is None else self._dfk.executors
        return any(
            getattr(executors.get(label), "bad_state_is_set", False)
            or _lost_its_folder(executors.get(label))
            for label in labels
        )

    def batch_jobs(self, label: str) -> list[str]:
        """The scheduler job ids of the blocks an executor has started (Slurm job ids)."""
        executor = None if self._dfk is None else self._dfk.executors.get(label)
        jobs = getattr(executor, "blocks_to_job_id", {}) or {}
        return [str(j) for j in jobs.values()]

    def blocks(self, label: str) -> tuple[Path | None, dict[str, tuple[str, str]]]:
        """Where the executor ``label``'s worker pools log (``block-<id>/<manager>/``), and
        per block it started: its scheduler job id and the job's stderr file (Slurm)."""
        executor = None if self._dfk is None else self._dfk.executors.get(label)
        jobs = getattr(executor, "blocks_to_job_id", {}) or {}
        known = getattr(getattr(executor, "provider", None), "resources", {}) or {}
        logdir = getattr(executor, "worker_logdir", None)
        files = {
            str(b): (str(j), str(known.get(j, {}).get("job_stderr_path") or ""))
            for b, j in jobs.items()
        }
        return (Path(logdir) if logdir else None), files

    def worker_count(self, label: str) -> int:
        """How many workers the executor ``label`` has, or will have once its blocks start."""
        executor = None if self._dfk is None else self._dfk.executors.get(label)
        return worker_count(executor)

    def all_batch_jobs(self) -> list[str]:
        """The scheduler job ids of every block of every executor (for the run lock)."""
        labels = [] if self._dfk is None else list(self._dfk.executors)
        return [j for label in labels for j in self.batch_jobs(label)]

    def submit(self, label: str, task: TaskSpec) -> Future[Any]:
        """Send one task to the executor ``label``; the future resolves to element results."""
        with self._lock:
            app = self._apps.get(label)
            if app is None:
                from parsl.app.python import PythonApp

                app = PythonApp(run_task, data_flow_kernel=self._dfk, executors=[label])
                self._apps[label] = app
        return app(task)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop every executor and every process Parsl started (and at interpreter exit).

        With ``timeout``, Parsl's clean shutdown gets that many seconds; whatever it
        started that is still alive then (an interchange, a worker pool busy with a hung
        element) is killed.  A later submission starts a new kernel.
        """
        with self._lock:
            dfk, self._dfk = self._dfk, None
            self._labels.clear()
            self._class_labels.clear()
            self._apps.clear()
        if dfk is None:
            return
        logger.info("shutting down Parsl")
        leftovers = [p for p in parsl_processes(str(dfk.run_dir)) if p.pid != os.getpid()]
        cleanup = threading.Thread(target=_cleanup, args=(dfk,), name="parsl-cleanup", daemon=True)
        cleanup.start()
        cleanup.join(timeout)
        if cleanup.is_alive():
            logger.warning("Parsl did not shut down within %s s; stopping its processes", timeout)
        stop_processes(leftovers, timeout=1)


def _lost_its_folder(executor: Any) -> bool:
    """Has the folder Parsl keeps an executor's certificates and logs in gone away?

    It lives in the run folder of the run that started the kernel: a store deleted while
    the process lives on (a notebook, a test's temporary folder) takes the certificates
    the executor's new blocks need to connect, and they die at start, unseen, for ever.
    Such an executor is replaced, as one in bad state is.
    """
    if executor is None:
        return False
    folders = (getattr(executor, "cert_dir", None), getattr(executor, "logdir", None))
    return any(isinstance(f, str) and f and not os.path.isdir(f) for f in folders)


def _cleanup(dfk: DataFlowKernel) -> None:
    try:
        dfk.cleanup()
    except Exception:  # at exit, a failing cleanup must not hide the real outcome
        logger.exception("Parsl cleanup failed")


runner = Runner()
