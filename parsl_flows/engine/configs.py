"""Ready Parsl configurations.  ``configs/*.py`` at the top of the repository wraps these.

Local: a HighThroughputExecutor on this machine, or threads.  Slurm: HighThroughputExecutors
whose blocks are Slurm jobs, one per resource class of the steps.

Both are plain ``parsl.config.Config`` objects: print one to see every setting.
"""

from __future__ import annotations

import os
from typing import Any

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.error_handlers import simple_error_handler
from parsl.jobs.states import JobState, JobStatus
from parsl.launchers import SingleNodeLauncher, SrunLauncher
from parsl.launchers.base import Launcher
from parsl.providers import LocalProvider
from parsl.providers import SlurmProvider as _ParslSlurmProvider

from .memory_kills import memory_kill_lines
from .memory_limit import block_memory_mb

__all__ = [
    "SlurmProvider",
    "fail_blocks_once",
    "local_config",
    "slurm_config",
    "slurm_executor",
    "thread_config",
]


def fail_blocks_once(executor: BlockProviderExecutor, status: dict[str, JobStatus]) -> None:
    """Parsl's ``simple_error_handler``, but only until the executor is in bad state.

    Parsl 2026.10 calls the handler on every poll; once the executor is bad, failing its
    (already failed) futures again raises ``InvalidStateError``, which aborts the poll of
    *every* executor: no executor of the driver starts or stops a block again.  Seen here:
    after one computer's broken ``worker_init``, a run on a healthy computer waited
    forever for a block.
    """
    if executor.bad_state_is_set:
        return
    # A block that Slurm killed for memory says nothing of whether blocks can start: its
    # elements are out of memory (``memory_kills``), and the executor stays in service for
    # the other elements and for retries with more memory.  With ``sacct`` such a job
    # reads FAILED (``squeue`` soon forgets it, and Parsl takes it for COMPLETED).
    status = {
        block: s
        for block, s in status.items()
        if not (s.state == JobState.FAILED and _killed_for_memory(s.stderr_path))
    }
    simple_error_handler(executor, status)


_KILLED: dict[str, bool] = {}  # stderr file -> killed for memory (asked once a job ended)


def _killed_for_memory(stderr: str | None) -> bool:
    """Does a failed block's stderr say Slurm killed it for memory (read once per file)?"""
    if not stderr:
        return False
    if stderr not in _KILLED:
        _KILLED[stderr] = bool(memory_kill_lines(stderr, fresh=False))
    return _KILLED[stderr]


def local_config(max_workers: int | None = None, label: str = "local") -> Config:
    """A HighThroughputExecutor on this machine: one block of ``max_workers`` processes.

    Parsl starts the block on its first strategy tick: ``strategy_period=0.1`` starts it at
    once (Parsl's default of 5 s delays the first result by five; a tick costs well under
    a millisecond); ``heartbeat_period=2`` notices a lost worker in seconds rather
    than half a minute; Parsl's own DEBUG log is off, since it costs throughput and disk.
    """
    workers = max_workers or os.cpu_count() or 1
    return Config(
        executors=[
            HighThroughputExecutor(
                label=label,
                address="127.0.0.1",
                max_workers_per_node=workers,
                cores_per_worker=1,
                heartbeat_period=2,
                heartbeat_threshold=10,
                poll_period=10,
                block_error_handler=fail_blocks_once,
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            )
        ],
        strategy_period=0.1,
        initialize_logging=False,
        usage_tracking=0,
    )


def thread_config(max_threads: int | None = None, label: str = "threads") -> Config:
    """Threads in the driver process: no worker start-up, handy for debugging a step.

    A step that crashes its process takes the driver with it here; use the local
    HighThroughputExecutor for real work.
    """
    return Config(
        executors=[ThreadPoolExecutor(label=label, max_threads=max_threads or os.cpu_count() or 1)],
        strategy_period=0.5,
        initialize_logging=False,
        usage_tracking=0,
    )


#: Reasons ``squeue`` gives for a pending job that Slurm will never start as asked.
NEVER_STARTS = frozenset(
    {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
     "InvalidAccount", "InvalidQOS", "QOSMaxNodePerJobLimit", "QOSMaxCpuPerJobLimit",
     "QOSMaxMemoryPerJob", "QOSMaxWallDurationPerJobLimit", "AssocMaxNodesPerJob",
     "AssocMaxCpuPerJobLimit", "AssocMaxWallDurationPerJobLimit"}
)  # fmt: skip


class SlurmProvider(_ParslSlurmProvider):
    """Parsl's SlurmProvider, polling Slurm every ``status_poll_seconds`` (Parsl: 60).

    A block that dies at start (a bad ``worker_init``) is noticed only when Slurm is next
    polled; 30 s reports it within about a minute without hammering ``squeue``.

    A block that Slurm accepts but will never start (more nodes than its partition has,
    a partition or QOS limit: ``squeue`` says why, e.g. ``PartitionConfig``) would
    otherwise stay pending for ever, and the run with it.  Such a block is cancelled and
    reported failed at the poll that sees it, so its elements end as infrastructure
    failures naming the reason.
    """

    def __init__(self, *args: Any, status_poll_seconds: int = 30, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status_poll_seconds = status_poll_seconds

    @property
    def status_polling_interval(self) -> int:
        return self.status_poll_seconds

    def _status(self) -> None:
        super()._status()
        pending = [
            str(j) for j, job in self.resources.items() if job["status"].state == JobState.PENDING
        ]
        if not pending:
            return
        retcode, out, _ = self.execute_wait(
            f"squeue --noheader --format='%i %r' --job {','.join(pending)}"
        )
        if retcode != 0:
            return
        for line in out.splitlines():
            job_id, _, reason = line.strip().partition(" ")
            if job_id in self.resources and reason in NEVER_STARTS:
                self.execute_wait(f"scancel {job_id}")
                job = self.resources[job_id]
                message = (
                    f"Slurm will never start block job {job_id} as asked (pending: {reason}); "
                    "ask for fewer nodes, cores, memory or time, or another partition"
                )
                job["status"] = JobStatus(
                    JobState.FAILED,
                    message=message,
                    stdout_path=job["job_stdout_path"],
                    stderr_path=job["job_stderr_path"],
                )


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"PARSL_FLOWS_SLURM_{name.upper()}", default)


def slurm_executor(
    label: str = "slurm",
    *,
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    walltime: str | None = None,
    nodes_per_block: int | None = None,
    max_blocks: int | None = None,
    cores_per_node: int | None = None,
    cores_per_worker: int = 1,
    memory_mb: int | None = None,
    worker_init: str | None = None,
    exclusive: bool | None = None,
    scheduler_options: str | None = None,
    address: str | None = None,
    status_poll_seconds: int | None = None,
) -> HighThroughputExecutor:
    """One HighThroughputExecutor whose blocks are Slurm jobs.

    Every argument left ``None`` comes from ``PARSL_FLOWS_SLURM_<NAME>`` (e.g.
    ``PARSL_FLOWS_SLURM_PARTITION``) or a default that suits the local test cluster of
    ``tools/local-slurm.sh``.  ``cores_per_worker`` and ``memory_mb`` size the workers of
    one resource class: each worker gets that many cores, and the block asks Slurm for
    the memory of all its workers, plus what its worker pool holds itself
    (``#SBATCH --mem``, ``memory_limit.block_memory_mb``).
    """
    partition = partition or _env("partition")
    walltime = walltime or _env("walltime", "00:30:00")
    cores = int(cores_per_node or _env("cores_per_node", 0) or 0) or None
    workers = max(1, (cores or cores_per_worker) // cores_per_worker)
    options = scheduler_options if scheduler_options is not None else _env("scheduler_options", "")
    options = options.replace("\\n", "\n")
    if memory_mb is not None:
        options += f"\n#SBATCH --mem={block_memory_mb(memory_mb, workers)}M"
    if cores is not None:
        options += f"\n#SBATCH --cpus-per-task={cores}"
    provider = SlurmProvider(
        partition=partition,
        account=account or _env("account"),
        qos=qos or _env("qos"),
        walltime=walltime,
        nodes_per_block=int(nodes_per_block or _env("nodes_per_block", 1)),
        init_blocks=0,
        min_blocks=0,
        max_blocks=int(max_blocks or _env("max_blocks", 1)),
        exclusive=_truthy(exclusive if exclusive is not None else _env("exclusive", "false")),
        scheduler_options=options.strip(),
        worker_init=_pool_cores(cores)
        + (worker_init if worker_init is not None else _env("worker_init", "")),
        launcher=block_launcher(int(nodes_per_block or _env("nodes_per_block", 1))),
        status_poll_seconds=int(status_poll_seconds or _env("poll_seconds", 30)),
    )
    return HighThroughputExecutor(
        label=label,
        address=address or _env("address"),
        max_workers_per_node=workers,
        cores_per_worker=cores_per_worker,
        heartbeat_period=5,
        heartbeat_threshold=30,
        poll_period=10,
        block_error_handler=fail_blocks_once,
        provider=provider,
    )


def _pool_cores(cores: int | None) -> str:
    """The line that tells each worker pool how many cores its node gives it.

    A pool starts ``min(max_workers_per_node, cores // cores_per_worker)`` workers, where
    ``cores`` is the whole machine's count unless ``PARSL_CORES`` says otherwise: on a
    node advertising more CPUs than the machine has (the test bed), or a pool sharing a
    node with other jobs, it would start fewer or more workers than the block asked
    Slurm for, and the chunker would size tasks for workers that do not exist.
    """
    return f"export PARSL_CORES={cores}\n" if cores else ""


def block_launcher(nodes_per_block: int) -> Launcher:
    """How a block starts its worker pools: one on every node of the block.

    One node: the pool runs in the batch script itself.  Several nodes: ``srun`` starts one
    pool per node (``SingleNodeLauncher`` would start them all on the block's first node,
    leaving the others idle).  Slurm 22.05 and later no longer pass the job's
    ``--cpus-per-task`` on to ``srun``, so it is passed explicitly: on a cluster that binds
    tasks to cores, each pool would otherwise get one core.
    """
    if nodes_per_block <= 1:
        return SingleNodeLauncher()
    return SrunLauncher(
        overrides="--ntasks-per-node=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK}"
    )


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def slurm_config(**kwargs: Any) -> Config:
    """A Parsl Config with one Slurm-backed HighThroughputExecutor (see :func:`slurm_executor`)."""
    return Config(
        executors=[slurm_executor(**kwargs)],
        strategy_period=1,
        max_idletime=60,  # give idle Slurm blocks back after a minute
        initialize_logging=False,
        usage_tracking=0,
    )
