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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parsl.config import Config

from . import configs

__all__ = ["ExecutionEnvironment", "execution_environment", "from_config", "from_file"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutionEnvironment:
    """A named recipe for a Parsl Config.  ``name`` identifies it within one driver."""

    name: str
    make_config: Callable[[], Config] = field(repr=False, compare=False)
    description: str = ""

    def config(self) -> Config:
        cfg = self.make_config()
        if not isinstance(cfg, Config):
            raise TypeError(f"environment {self.name!r} made {cfg!r}, not a parsl.config.Config")
        return cfg


def execution_environment(
    conda_env: str | None,
    computer: str,
    queue: tuple[str, int] | None = None,
) -> ExecutionEnvironment:
    """The environment for ``computer``: ``"localhost"`` is this machine.

    ``execution_environment(None, "localhost")`` runs steps on a local Parsl
    HighThroughputExecutor with one worker per core, in the driver's Python.
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
            lambda: configs.local_config(max_workers=workers),
            "local HighThroughputExecutor",
        )
    if computer == "threads":
        return ExecutionEnvironment("threads", configs.thread_config, "thread pool in the driver")
    raise ValueError(
        f"unknown computer {computer!r}: known computers are 'localhost' and 'threads'. For "
        "any other Parsl setup, use flows.engine.execution_environment.from_config(config) "
        "or .from_file('configs/....py')"
    )


_from_config_count = 0


def from_config(config: Config, name: str | None = None) -> ExecutionEnvironment:
    """An environment that runs on a Parsl ``Config`` you made yourself.

    A Config's executors start once, so such an environment serves one driver process;
    a run that must be resumed elsewhere should use :func:`from_file`.
    """
    global _from_config_count
    if not isinstance(config, Config):
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
        namespace: dict[str, Any] = runpy.run_path(str(file))
        if "config" not in namespace:
            raise ValueError(f"{file} defines no 'config' (a parsl.config.Config)")
        cfg: Config = namespace["config"]
        return cfg

    make()  # fail now, not at submission, if the file is broken
    return ExecutionEnvironment(f"file:{file}", make, f"Parsl config from {file}")


# The seed calls these as attributes of execution_environment.
execution_environment.from_config = from_config  # type: ignore[attr-defined]
execution_environment.from_file = from_file  # type: ignore[attr-defined]
