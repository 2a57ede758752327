"""Execution environments: where a workflow's steps run, as a recipe for a Parsl Config.

An environment is a name plus a function that makes a fresh ``parsl.config.Config``.
It is stored with a run (so a run can be resumed in a new process), which is why it
holds a recipe rather than a Config: Parsl executors can start only once.

>>> env = execution_environment(None, "localhost")
>>> env.name
'localhost'
"""

from __future__ import annotations

import logging
import os
import runpy
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..step import Resources
from .slurm import SlurmSite, describe, slurm_parts

if TYPE_CHECKING:  # Parsl loads when a run starts: see _parsl_config
    from parsl.config import Config
    from parsl.executors.base import ParslExecutor

__all__ = [
    "ExecutionEnvironment",
    "execution_environment",
    "from_config",
    "from_file",
    "known_computers",
]

logger = logging.getLogger(__name__)


def _parsl_config() -> type[Config]:
    """Parsl's Config class, imported on first use.

    Importing Parsl takes most of a second (it loads every executor and provider).  Not
    doing it when ``parsl_flows`` is imported keeps it out of what needs no Parsl: the
    ``status``, ``list`` and ``log`` commands, and the helper process that writes the
    ``dataset.nc`` files beside a run, on the cores the workers use.
    """
    from parsl.config import Config

    return Config


def _local_config(workers: int | None) -> Config:
    from .configs import local_config

    return local_config(max_workers=workers)


def _thread_config() -> Config:
    from .configs import thread_config

    return thread_config()


@dataclass(frozen=True)
class ExecutionEnvironment:
    """A named recipe for a Parsl Config.  ``name`` identifies it within one driver.

    ``make_executor(resources, label)``, when set, makes an executor for steps that ask
    for ``resources`` (one per resource class, so Parsl places each step correctly);
    ``check(workflow)``, when set, raises before anything is submitted if the workflow
    cannot run there (no ``sbatch``, an unknown partition, a step bigger than a node).
    """

    name: str
    make_config: Callable[[], Config] = field(repr=False, compare=False)
    description: str = ""
    make_executor: Callable[[Resources, str], ParslExecutor] | None = field(
        default=None, repr=False, compare=False
    )
    check: Callable[[Any], None] | None = field(default=None, repr=False, compare=False)

    def config(self) -> Config:
        cfg = self.make_config()
        if not isinstance(cfg, _parsl_config()):
            raise TypeError(f"environment {self.name!r} made {cfg!r}, not a parsl.config.Config")
        return cfg


def execution_environment(
    conda_env: str | None,
    computer: str,
    queue: tuple[str, int] | None = None,
) -> ExecutionEnvironment:
    """The environment for ``computer``: ``"localhost"`` is this machine, others are Slurm.

    ``execution_environment(None, "localhost")`` runs steps on a local Parsl
    HighThroughputExecutor with one worker per core, in the driver's Python.
    ``execution_environment("py39", "my-cluster", queue=("some-queue", 24))`` runs them in
    Slurm jobs on partition ``some-queue`` (24 cores per node), with the conda
    environment ``py39`` activated on the workers.  Computers named in the computers
    file (``~/.config/parsl_flows/computers.toml`` or ``$PARSL_FLOWS_COMPUTERS``) supply
    their partition, cores, account and ``worker_init``; ``queue`` overrides them.
    """
    if computer in ("localhost", "local"):
        if conda_env is not None:
            logger.info(
                "localhost workers run in the driver's Python; conda_env=%r is not activated",
                conda_env,
            )
        workers = queue[1] if queue else None
        return ExecutionEnvironment(
            "localhost" if workers is None else f"localhost-{workers}",
            lambda: _local_config(workers),
            "local HighThroughputExecutor",
        )
    if computer == "threads":
        return ExecutionEnvironment("threads", _thread_config, "thread pool in the driver")
    computers = known_computers()
    site_settings = dict(computers.get(computer, {}))
    if queue is not None:
        if not (isinstance(queue, tuple | list) and len(queue) == 2):
            raise ValueError(
                f"queue must be (partition, cores_per_node), e.g. ('debug', 2), not {queue!r}"
            )
        site_settings["partition"], site_settings["cores_per_node"] = queue
    if computer not in computers and queue is None:
        known = ", ".join(["localhost", "threads", *sorted(computers)])
        raise ValueError(
            f"unknown computer {computer!r}; known computers: {known}. Name a Slurm "
            f"partition with queue=(partition, cores_per_node), or describe {computer!r} in "
            f"{computers_file()}"
        )
    site = SlurmSite.from_settings(computer, conda_env, site_settings)
    make_config, make_executor, check = slurm_parts(site)
    return ExecutionEnvironment(
        f"{computer}-{site.partition or 'default'}",
        make_config,
        describe(site),
        make_executor=make_executor,
        check=check,
    )


def computers_file() -> Path:
    """Where computers are described: ``$PARSL_FLOWS_COMPUTERS`` or the user's config dir."""
    env = os.environ.get("PARSL_FLOWS_COMPUTERS")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "parsl_flows" / "computers.toml"


def known_computers() -> dict[str, dict[str, Any]]:
    """The computers of the computers file (a TOML table per computer)."""
    path = computers_file()
    if not path.exists():
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"cannot read the computers file {path}: {e}") from None
    bad = [k for k, v in data.items() if not isinstance(v, dict)]
    if bad:
        raise ValueError(
            f"{path}: {', '.join(bad)} should be tables such as [{bad[0]}] with partition = ..."
        )
    return data


_from_config_count = 0


def from_config(config: Config, name: str | None = None) -> ExecutionEnvironment:
    """An environment that runs on a Parsl ``Config`` you made yourself.

    A Config's executors start once, so such an environment serves one driver process;
    a run that must be resumed elsewhere should use :func:`from_file`.
    """
    global _from_config_count
    if not isinstance(config, _parsl_config()):
        raise TypeError(f"from_config() takes a parsl.config.Config, not {config!r}")
    _from_config_count += 1
    label = name or f"config-{_from_config_count}"
    return ExecutionEnvironment(label, lambda: config, "user-supplied Parsl Config")


def from_file(path: str | os.PathLike[str]) -> ExecutionEnvironment:
    """An environment from a Python file that defines ``config`` (see ``configs/``)."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise FileNotFoundError(f"no Parsl config file at {file}")

    def make() -> Config:
        try:
            namespace: dict[str, Any] = runpy.run_path(str(file))
        except Exception as e:
            raise ValueError(f"the Parsl config file {file} does not load: {_oneline(e)}") from e
        if "config" not in namespace:
            raise ValueError(f"{file} defines no 'config' (a parsl.config.Config)")
        cfg = namespace["config"]
        if not isinstance(cfg, _parsl_config()):
            raise TypeError(
                f"'config' in {file} is a {type(cfg).__name__}, not a parsl.config.Config"
            )
        return cfg

    make()  # fail now, not at submission, if the file is broken
    return ExecutionEnvironment(f"file:{file}", make, f"Parsl config from {file}")


def _oneline(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} (line {e.lineno})"
    return f"{type(e).__name__}: {e}"


# The seed calls these as attributes of execution_environment.
execution_environment.from_config = from_config  # type: ignore[attr-defined]
execution_environment.from_file = from_file  # type: ignore[attr-defined]
