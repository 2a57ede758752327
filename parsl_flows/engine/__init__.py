"""The engine: turns a plan and its inputs into Parsl tasks and follows them to the store."""

from .environment import ExecutionEnvironment, execution_environment, from_config, from_file
from .runner import runner

__all__ = [
    "ExecutionEnvironment",
    "execution_environment",
    "from_config",
    "from_file",
    "runner",
]
