"""parsl_flows: failure-tolerant, mapped scientific workflows on Parsl.

>>> import parsl_flows as flows
>>> from parsl_flows import step
>>> from parsl_flows.workflow import first, concurrently, map_, new_workflow
"""

import importlib
from typing import Any

from . import engine, mapspec, report, workflow
from .engine import execution_environment
from .errors import InfrastructureError, OutOfMemoryError
from .launch import run, submit
from .mapspec import MapSpec
from .preview import preview
from .run import Run, StepRun, load_run
from .step import Step, step
from .store import FileBasedObjectArray
from .workflow import build, concurrently, first, map_, new_workflow

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # xarray (and pandas) load only when results are asked for, not on every worker.
    if name == "input_samples":
        from .dataset import input_samples

        return input_samples
    if name == "dataset":
        return importlib.import_module(".dataset", __name__)
    raise AttributeError(f"module 'parsl_flows' has no attribute {name!r}")


__all__ = [
    "FileBasedObjectArray",
    "InfrastructureError",
    "MapSpec",
    "OutOfMemoryError",
    "Run",
    "Step",
    "StepRun",
    "__version__",
    "build",
    "concurrently",
    "engine",
    "execution_environment",
    "first",
    "input_samples",
    "load_run",
    "map_",
    "mapspec",
    "new_workflow",
    "preview",
    "report",
    "run",
    "step",
    "submit",
    "workflow",
]
