"""Ready Parsl configurations.  ``configs/*.py`` at the top of the repository wraps these.

Both are plain ``parsl.config.Config`` objects: print one to see every setting.
"""

from __future__ import annotations

import os

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.providers import LocalProvider

__all__ = ["local_config", "thread_config"]


def local_config(max_workers: int | None = None, label: str = "local") -> Config:
    """A HighThroughputExecutor on this machine: one block of ``max_workers`` processes.

    ``strategy_period=0.5`` brings the first result in about a second (Parsl's default of
    5 s delays it by five); ``heartbeat_period=2`` notices a lost worker in seconds rather
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
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            )
        ],
        strategy_period=0.5,
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
