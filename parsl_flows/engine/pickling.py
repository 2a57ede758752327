"""Decide how a step's code travels to the workers: by reference or by value.

Functions from installed packages travel by reference (the worker imports them).
Functions from ``__main__``, a notebook, a test module or a file loaded by path cannot
be imported on a worker, so cloudpickle must carry their code, and the classes they
define, by value.
"""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

__all__ = ["register_for_workers"]


def _installed_roots() -> list[Path]:
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    roots.add(site.getusersitepackages())
    return [Path(r).resolve() for r in roots if r]


def _importable_on_workers(module: ModuleType) -> bool:
    name = module.__name__
    if name == "__main__":
        return True  # cloudpickle already sends __main__ by value
    top = name.partition(".")[0]
    if top in sys.builtin_module_names or top in ("parsl_flows", "parsl"):
        return True
    top_module = sys.modules.get(top)
    file = getattr(top_module, "__file__", None)
    if file is None:
        return True  # namespace or built-in package: leave it to pickle
    path = Path(file).resolve()
    return any(path.is_relative_to(root) for root in _installed_roots())


def register_for_workers(*objects: Any) -> None:
    """Make cloudpickle send the modules defining ``objects`` by value when needed."""
    for obj in objects:
        module_name = getattr(obj, "__module__", None) or type(obj).__module__
        module = sys.modules.get(module_name)
        if module is None or _importable_on_workers(module):
            continue
        cloudpickle.register_pickle_by_value(module)
