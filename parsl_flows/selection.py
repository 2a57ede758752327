"""Which elements of a step a user means: one to reproduce, or a selection to recompute.

An element is named the way the step's dataset labels it: by the swept values
(``V_left=0.3, V_right=-0.1``: the nearest, within half a step of the sweep), by index labels
(``a=2, b=7``), or by its flat index (``n=47``).  A selection to recompute is a boolean
array or ``DataArray`` over the step's coordinates, a dict of labels or label slices
(``{"V_left": slice(0.3, None)}``), an exception type, ``"failed"`` or ``"all"``; on
the command line ``STEP:failed``, ``STEP:ConvergenceError`` or ``STEP:V_left>0.3``.

Nothing here reads a result: the coordinates come from the run's inputs
(``dataset.element_grid``), failures from the step's record and exception files.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .element_folders import load_elements
from .files import MISSING_ELEMENT
from .ranges import expand
from .status import StepStatus

__all__ = ["element_index", "failed_elements", "parse_selection", "select_elements"]

_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}


def _grid(step_dir: Path) -> Any:
    """The step's element grid; dimensions labelled by swept values get positions too
    (``a=2``, ``b<2``), as the dimensions without any have already."""
    from .dataset.layout import element_grid

    grid = element_grid(step_dir)
    bare = {d: np.arange(grid.sizes[d]) for d in grid.dims if d not in grid.coords}
    return grid.assign_coords(bare) if bare else grid


def _names(grid: Any) -> str:
    dims = ", ".join(grid.dims)
    swept = ", ".join(str(c) for c in grid.coords if c not in grid.dims)
    return f"index labels {dims}" + (f"; swept values {swept}" if swept else "")


def _pick_one(grid: Any, name: str, value: Any) -> Any:
    """``grid`` at ``name=value``: a position for an index label, else the nearest swept
    value, which must be close to ``value`` (floats are rarely typed exactly)."""
    if name in grid.dims:
        size = grid.sizes[name]
        if not isinstance(value, int | np.integer) or not -size <= value < size:
            raise IndexError(f"{name}={value!r}: index label {name} takes 0 to {size - 1}")
        return grid.isel({name: int(value)})
    if name not in grid.coords:
        raise KeyError(f"no {name!r} to name an element by; use {_names(grid)}, or n=")
    try:
        picked = grid.sel({name: value}, method="nearest")
    except (KeyError, ValueError, TypeError) as e:
        raise KeyError(f"cannot select {name}={value!r}: {e}") from None
    found = np.asarray(picked[name].values).ravel()
    if not all(_near(v, value, grid[name].values) for v in found.tolist()):
        near = found[0] if len(found) else None
        near = near.item() if isinstance(near, np.generic) else near
        raise KeyError(f"no element with {name}={value!r} (the nearest has {name}={near!r})")
    return picked


def _near(found: Any, value: Any, values: np.ndarray) -> bool:
    """Is ``found``, the nearest swept value, the one meant by ``value``?  Equal, or a
    number within half the step between the swept values (``V_left=0.3`` of 0, 1/9, ...)."""
    if found == value:
        return True
    if not (isinstance(found, int | float) and isinstance(value, int | float | np.number)):
        return False
    steps = np.diff(np.unique(np.asarray(values, dtype=float).ravel()))
    half = float(steps.min()) / 2 if len(steps) else 0.0
    return bool(abs(found - float(value)) <= half or np.isclose(found, float(value)))


def element_index(step_dir: Path, where: Mapping[str, Any]) -> int:
    """The flat index of the one element of a step that ``where`` names (see module)."""
    rec = StepStatus.load(step_dir)
    if rec.kind != "map":
        if where:
            raise TypeError(f"step {rec.name!r} is a plain call: it has one element, name none")
        return 0
    if rec.shape is None:
        raise ValueError(f"map {rec.name!r} has no elements ({rec.state}: {rec.message})")
    total = rec.n_elements
    if "n" in where:
        n = where["n"]
        if len(where) > 1:
            raise TypeError("n= names an element alone; give it without other labels")
        if not isinstance(n, int | np.integer) or not 0 <= n < total:
            raise IndexError(f"n={n!r}: map {rec.name!r} has elements 0 to {total - 1}")
        return int(n)
    grid = _grid(step_dir)
    if not where:
        raise TypeError(f"name an element of map {rec.name!r}: n=, or {_names(grid)}")
    picked = grid
    for name, value in where.items():
        picked = _pick_one(picked, name, value)
    if picked.size != 1:
        free = ", ".join(d for d in picked.dims)
        raise ValueError(f"{dict(where)} names {picked.size} elements; also give {free}")
    return int(picked.values.ravel()[0])


def failed_elements(rec: StepStatus) -> np.ndarray:
    """Elements whose last attempt failed, whatever the reason (401, 402, 403)."""
    idx = [n for text in rec.element_codes.values() for n in expand(text)]
    return np.unique(np.asarray(idx, dtype=np.int64))


def _raised(step_dir: Path, rec: StepStatus, kind: type[BaseException] | str) -> np.ndarray:
    """Failed elements whose exception is ``kind`` (a type, or a class name in its MRO)."""
    failed = failed_elements(rec)
    hits: list[int] = []
    for n, exc in zip(failed.tolist(), load_elements(step_dir / "exception", failed), strict=True):
        if exc is MISSING_ELEMENT:
            continue
        if isinstance(kind, type):
            if isinstance(exc, kind):
                hits.append(n)
            continue
        names = {c.__name__ for c in type(exc).__mro__}
        names.add(str(getattr(exc, "type_name", "")).rsplit(".", 1)[-1])  # UnpicklableError
        if kind in names:
            hits.append(n)
    return np.asarray(hits, dtype=np.int64)


def select_elements(step_dir: Path, selection: Any) -> np.ndarray:
    """The flat indices (sorted) of a step's elements that ``selection`` picks (see module)."""
    rec = StepStatus.load(step_dir)
    total = rec.n_elements if rec.kind == "map" else 1
    if rec.kind == "map" and rec.shape is None:
        raise ValueError(f"map {rec.name!r} has no elements ({rec.state}): nothing to select")
    if selection is True or (isinstance(selection, str) and selection == "all"):
        return np.arange(total, dtype=np.int64)
    if isinstance(selection, str) and selection == "failed":
        return failed_elements(rec)
    if isinstance(selection, type) and issubclass(selection, BaseException):
        return _raised(step_dir, rec, selection)
    if rec.kind != "map":
        raise TypeError(
            f"step {rec.name!r} is a plain call: select it with True, 'all', 'failed' or an "
            f"exception type, not {selection!r}"
        )
    if isinstance(selection, str):
        return _from_text(step_dir, rec, selection)
    grid = _grid(step_dir)
    if isinstance(selection, Mapping):
        picked = grid
        for name, value in selection.items():
            if isinstance(value, slice | list | tuple | np.ndarray):
                if name not in grid.coords:
                    raise KeyError(f"no {name!r} to select by; use {_names(grid)}")
                picked = picked.sel({name: value})
            else:
                picked = _pick_one(picked, name, value)
        return np.unique(np.asarray(picked.values, dtype=np.int64).ravel())
    return _from_mask(grid, rec, selection)


def _from_mask(grid: Any, rec: StepStatus, selection: Any) -> np.ndarray:
    import xarray as xr

    if isinstance(selection, xr.DataArray):
        unknown = [d for d in selection.dims if d not in grid.dims]
        if unknown:
            raise ValueError(f"selection has dimensions {unknown} that map {rec.name!r} lacks")
        mask = selection.broadcast_like(grid).transpose(*grid.dims).values
    else:
        mask = np.asarray(selection)
    if mask.dtype != bool or mask.shape != grid.shape:
        raise TypeError(
            f"a selection of map {rec.name!r} is a boolean array of shape {grid.shape} "
            f"(dims {tuple(grid.dims)}), a dict of labels, an exception type or 'failed'; "
            f"got {type(selection).__name__} of dtype {mask.dtype} and shape {mask.shape}"
        )
    return np.flatnonzero(mask.ravel()).astype(np.int64)


def _from_text(step_dir: Path, rec: StepStatus, text: str) -> np.ndarray:
    """``V_left>0.3`` (a comparison with a swept value or index label) or an exception name."""
    m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*", text)
    if m is None:
        if re.fullmatch(r"[A-Za-z_][\w.]*", text):
            return _raised(step_dir, rec, text.rsplit(".", 1)[-1])
        raise ValueError(
            f"cannot read selection {text!r}: give failed, all, an exception name "
            f"(ConvergenceError) or a comparison (V_left>0.3)"
        )
    name, op, raw = m.groups()
    grid = _grid(step_dir)
    if name not in grid.coords:
        raise KeyError(f"no {name!r} to select by in map {rec.name!r}; use {_names(grid)}")
    value: Any = raw
    try:
        value = float(raw) if any(c in raw for c in ".eE") else int(raw)
    except ValueError:
        value = raw.strip("'\"")
    mask = _COMPARISONS[op](grid[name], value).broadcast_like(grid).transpose(*grid.dims)
    return np.flatnonzero(np.asarray(mask.values).ravel()).astype(np.int64)


def parse_selection(text: str) -> tuple[str, str]:
    """``"STEP:SELECTION"`` of ``--recompute`` as ``(STEP, SELECTION)``."""
    step, sep, what = text.partition(":")
    if not sep or not step or not what:
        raise ValueError(
            f"--recompute {text!r}: give STEP:failed, STEP:ExceptionName or STEP:V_left>0.3"
        )
    return step.strip(), what.strip()
