"""Slurm sites: settings for a cluster, executors per resource class, checks before submission.

A :class:`SlurmSite` is what the seed's ``execution_environment("py39", "my-cluster",
queue=("some-queue", 24))`` describes, completed by the computers file.  Steps without
``resources`` share one executor whose blocks fill a node with one worker per core; each
distinct ``resources`` (cores, memory, walltime) gets an executor whose blocks are Slurm
jobs of exactly that size, one worker each, so Slurm itself enforces the request.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..step import Resources, format_walltime, parse_walltime
from .memory_limit import block_memory_mb

if TYPE_CHECKING:  # Parsl loads when a run starts (see environment._parsl_config)
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor

__all__ = ["SlurmSite", "slurm_parts"]

logger = logging.getLogger(__name__)

_SETTINGS = (
    "partition",
    "cores_per_node",
    "account",
    "qos",
    "walltime",
    "worker_init",
    "exclusive",
    "scheduler_options",
    "address",
    "max_blocks",
    "nodes_per_block",
    "poll_seconds",
)


@dataclass(frozen=True)
class SlurmSite:
    """One Slurm cluster (a "computer") and the settings its blocks are submitted with."""

    computer: str
    partition: str | None = None
    cores_per_node: int | None = None
    account: str | None = None
    qos: str | None = None
    walltime: str = "00:30:00"
    worker_init: str = ""
    exclusive: bool = False
    scheduler_options: str = ""
    address: str | None = None
    max_blocks: int = 1
    nodes_per_block: int = 1
    poll_seconds: int = 30

    @classmethod
    def from_settings(
        cls, computer: str, conda_env: str | None, settings: Mapping[str, Any]
    ) -> SlurmSite:
        unknown = sorted(set(settings) - set(_SETTINGS))
        if unknown:
            raise ValueError(
                f"computer {computer!r}: unknown setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(_SETTINGS)}"
            )
        values = dict(settings)
        init = str(values.pop("worker_init", "") or "")
        if conda_env:
            init = "\n".join(filter(None, [init, activation(conda_env)]))
        if "walltime" in values:
            values["walltime"] = format_walltime(parse_walltime(values["walltime"], computer))
        return cls(computer=computer, worker_init=init, **values)

    def executor(self, label: str, resources: Resources | None = None) -> HighThroughputExecutor:
        from .configs import slurm_executor

        common: dict[str, Any] = dict(
            partition=self.partition,
            account=self.account,
            qos=self.qos,
            worker_init=self.worker_init,
            exclusive=self.exclusive,
            scheduler_options=self.scheduler_options,
            address=self.address,
            nodes_per_block=self.nodes_per_block,
            status_poll_seconds=self.poll_seconds,
        )
        if not resources:
            return slurm_executor(
                label,
                cores_per_node=self.cores_per_node,
                walltime=self.walltime,
                max_blocks=self.max_blocks,
                **common,
            )
        cores = resources.cores or 1
        walltime = self.walltime
        if resources.walltime_s is not None:  # the block outlives the call it runs
            walltime = format_walltime(resources.walltime_s + 300)
        per_node = max(1, (self.cores_per_node or cores) // cores)
        return slurm_executor(
            label,
            cores_per_node=cores,
            cores_per_worker=cores,
            memory_mb=resources.memory_mb,
            walltime=walltime,
            max_blocks=per_node * self.max_blocks,
            **common,
        )

    def check(self, workflow: Any) -> None:
        """Raise now, before anything is submitted, if ``workflow`` cannot run here."""
        if shutil.which("sbatch") is None:
            raise RuntimeError(
                f"computer {self.computer!r} runs steps through Slurm, but 'sbatch' is not on "
                "PATH; run on the cluster's login node, or start the local test cluster with "
                "'bash tools/local-slurm.sh start'"
            )
        partitions = _sinfo(["-h", "-o", "%P"])
        names = {p.rstrip("*") for p in partitions}
        default = next((p.rstrip("*") for p in partitions if p.endswith("*")), None)
        partition = self.partition or default
        if partition not in names:
            raise ValueError(
                f"computer {self.computer!r}: Slurm has no partition {partition!r} "
                f"(partitions: {', '.join(sorted(names)) or 'none'})"
            )
        cpus, memory_mb, nodes, largest = 0, 0, 0, 0
        for line in _sinfo(["-h", "-p", str(partition), "-o", "%c %m %D %s"]):
            c, m, d, size = line.split()
            cpus, memory_mb = max(cpus, int(c.rstrip("+"))), max(memory_mb, int(m.rstrip("+")))
            nodes += int(d)
            top = size.rpartition("-")[2]
            largest = max(largest, nodes if top in ("infinite", "UNLIMITED") else int(top))
        largest = min(largest or nodes, nodes)
        if self.nodes_per_block > largest:
            raise ValueError(
                f"computer {self.computer!r} asks for blocks of {self.nodes_per_block} nodes, "
                f"but a job in partition {partition!r} can have at most {largest} "
                f"({nodes} node(s) in the partition); lower 'nodes_per_block'"
            )
        if self.cores_per_node is not None and self.cores_per_node > cpus:
            raise ValueError(
                f"computer {self.computer!r} asks for {self.cores_per_node} cores per node, but "
                f"the nodes of partition {partition!r} have {cpus}; lower 'cores_per_node'"
            )
        for node in workflow.nodes:
            res = node.step.resources
            if res.cores is not None and res.cores > cpus:
                raise ValueError(
                    f"step {node.name!r} asks for {res.cores} cores, but the nodes of "
                    f"partition {partition!r} have {cpus}; lower 'cores' in its resources"
                )
            block = block_memory_mb(res.memory_mb) if res.memory_mb is not None else 0
            if memory_mb and block > memory_mb:
                raise ValueError(
                    f"step {node.name!r} asks for {res.memory_mb} MB of memory (blocks of "
                    f"{block} MB with their worker pool), but the nodes of partition "
                    f"{partition!r} have {memory_mb} MB"
                )


def _sinfo(args: list[str]) -> list[str]:
    try:
        out = subprocess.run(
            ["sinfo", *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"cannot ask Slurm about its partitions (sinfo failed: {e})") from None
    return [line.strip() for line in out.splitlines() if line.strip()]


def activation(conda_env: str) -> str:
    """The shell lines that make a worker use ``conda_env`` (a conda name or a venv path)."""
    path = Path(conda_env).expanduser()
    if (path / "bin" / "activate").exists() and not (path / "conda-meta").exists():
        return f"source {path / 'bin' / 'activate'}"
    return f'eval "$(conda shell.bash hook)" && conda activate {conda_env}'


def slurm_parts(
    site: SlurmSite,
) -> tuple[
    Callable[[], Config], Callable[[Resources, str], HighThroughputExecutor], Callable[[Any], None]
]:
    """What an execution environment needs from a site: a Config, per-class executors, a check."""

    def make_config() -> Config:
        from parsl.config import Config

        return Config(
            executors=[site.executor(site.computer)],
            strategy_period=1,
            max_idletime=60,  # give idle Slurm blocks back after a minute
            initialize_logging=False,
            usage_tracking=0,
        )

    def make_executor(resources: Resources, label: str) -> HighThroughputExecutor:
        return site.executor(label, resources)

    return make_config, make_executor, site.check


def cancel_jobs(job_ids: list[str]) -> list[str]:
    """``scancel`` the jobs of ``job_ids`` that Slurm still knows as pending or running.

    Used for the blocks of a driver that died without a chance to cancel them; a host
    without Slurm has none to cancel.
    """
    if not job_ids or shutil.which("squeue") is None:
        return []
    try:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    alive = [j for j in out.stdout.split() if j in job_ids]
    if alive:
        subprocess.run(["scancel", *alive], capture_output=True, timeout=30, check=False)
        logger.info("cancelled Slurm job(s) %s", ", ".join(alive))
    return alive


def describe(site: SlurmSite) -> str:
    fields = {k: v for k, v in dataclasses.asdict(site).items() if v not in (None, "", False)}
    return "Slurm " + ", ".join(f"{k}={v}" for k, v in fields.items())
