"""The plan the command line is handed: ``FILE.py:NAME`` or ``package.module:NAME``.

A file is imported as a script would run it, and what it defines is sent to the workers
by value (they cannot import it).  Every problem is a :class:`UsageError` naming the file
and the fix, raised before anything is submitted.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cloudpickle

from ..engine.pickling import _importable_on_workers
from ..step import Step
from ..workflow import Call, Concurrently, Workflow, first
from .common import UsageError

__all__ = ["load_plan"]


def load_plan(target: str, default_name: str = "flow") -> Workflow:
    """The workflow named by ``FILE.py:NAME`` (or ``package.module:NAME``).

    NAME may be a workflow, a step or map (run alone), or a function of no arguments that
    returns one.  Without ``:NAME``, the file's ``flow`` is used.
    """
    source, _, name = target.rpartition(":") if ":" in target else (target, "", "")
    name = name or default_name
    namespace, where = _load_source(source)
    if name not in namespace:
        public = {k: v for k, v in namespace.items() if not k.startswith("_")}
        flows = sorted(k for k, v in public.items() if isinstance(v, Workflow))
        steps = sorted(k for k, v in public.items() if isinstance(v, Step | Call))
        have = [f"workflows {', '.join(flows)}" if flows else "no workflow"]
        if steps:
            have.append(f"steps {', '.join(steps)}")
        raise UsageError(f"{where} has no {name!r}; it defines {'; '.join(have)}")
    obj = namespace[name]
    if inspect.isfunction(obj):
        required = [
            p.name
            for p in inspect.signature(obj).parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            raise UsageError(
                f"{where}:{name} is a function of {', '.join(required)}; the command line "
                "calls it with no arguments, so give them defaults"
            )
        try:
            obj = obj()
        except Exception as e:  # the user's code: report it, with the traceback on --debug
            raise UsageError(f"{where}:{name}() raised {type(e).__name__}: {e}") from e
    if isinstance(obj, Workflow):
        return obj
    if isinstance(obj, Step | Call | Concurrently):
        return first(obj)
    raise UsageError(
        f"{where}:{name} is a {type(obj).__name__}, not a workflow (or a step, or a function "
        "returning a workflow)"
    )


def _load_source(source: str) -> tuple[Mapping[str, Any], str]:
    """Import a ``.py`` file (as a script would run) or an importable module."""
    path = Path(source).expanduser()
    if source.endswith(".py") or path.exists():
        if not path.is_file():
            raise UsageError(f"no file {path}")
        return vars(_import_file(path.resolve())), str(source)
    try:
        module = importlib.import_module(source)
    except ImportError as e:
        raise UsageError(f"{source!r} is neither a .py file nor an importable module ({e})") from e
    return vars(module), source


def _import_file(path: Path) -> Any:
    """Run ``path`` as a module whose steps and classes travel to workers by value.

    The file's folder goes first on ``sys.path`` (as for ``python path``), so it can import
    its neighbours; those neighbours cannot be imported on the workers either, so they too
    are sent by value.
    """
    name = path.stem
    if not _free_module_name(name, path):
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        name = f"_parsl_flows_file_{digest}"
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[name]
        raise UsageError(f"{e.filename or path}:{e.lineno}: syntax error: {e.msg}") from e
    except Exception as e:
        del sys.modules[name]
        raise UsageError(f"cannot load {path}: {type(e).__name__}: {e}") from e
    for new in set(sys.modules) - before:
        mod = sys.modules.get(new)
        file = getattr(mod, "__file__", None)
        if (
            mod is not None
            and file
            and Path(file).resolve().is_relative_to(path.parent)
            and not _importable_on_workers(mod)  # e.g. a virtualenv inside the project folder
        ):
            cloudpickle.register_pickle_by_value(mod)
    return module


def _free_module_name(name: str, path: Path) -> bool:
    """Can ``path`` be imported under ``name`` without hiding another module of that name?"""
    if not name.isidentifier() or name in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is None or (spec.origin is not None and Path(spec.origin).resolve() == path)
