"""parsl_flows: failure-tolerant, mapped scientific workflows on Parsl.

>>> import parsl_flows as flows
>>> from parsl_flows import step
>>> from parsl_flows.workflow import first, concurrently, map_, new_workflow
"""

from . import mapspec, workflow
from .mapspec import MapSpec
from .step import Step, step
from .workflow import build, concurrently, first, map_, new_workflow

__version__ = "0.1.0"

__all__ = [
    "MapSpec",
    "Step",
    "__version__",
    "build",
    "concurrently",
    "first",
    "map_",
    "mapspec",
    "new_workflow",
    "step",
    "workflow",
]
