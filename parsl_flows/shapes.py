"""The shapes of the values a map iterates over: sequences, nested lists and arrays.

Shared by the plan (checking inputs before any work), the workers (taking elements) and
the datasets (coordinates).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .mapspec import MapSpecError, as_lengths
from .nodes import Map

if TYPE_CHECKING:
    from .workflow import Workflow

__all__ = [
    "as_element_array",
    "as_mapped_array",
    "map_shapes",
    "mapped_shape",
    "nested_shape",
    "validate_inputs",
]


def _is_sequence(v: Any) -> bool:
    return isinstance(v, list | tuple | range)


def mapped_shape(value: Any, rank: int) -> tuple[int, ...]:
    """The shape of a value a map iterates over, checked to have at least ``rank`` axes."""
    if _is_array_like(value):
        shape = as_lengths(value.shape)
        if shape is None:
            raise ValueError(
                f"{type(value).__name__} has shape {value.shape!r}, but a shape must be a "
                "tuple of lengths (ints >= 0); pass a numpy array or a list instead"
            )
        if len(shape) < rank:
            hint = (
                "; a 0-d array is a single value: map over np.atleast_1d(value), or leave it "
                "out of the mapspec to give it whole to every element"
                if not shape
                else ""
            )
            raise ValueError(f"expected an array of rank {rank}, got shape {shape}{hint}")
        return shape
    return nested_shape(value, rank)


def _is_array_like(value: Any) -> bool:
    """A numpy array or something with a ``shape`` (xarray, pandas), but no numpy scalar."""
    return getattr(value, "shape", None) is not None and not np.isscalar(value)


def nested_shape(value: Any, rank: int) -> tuple[int, ...]:
    """The shape of nested lists/tuples, ``rank`` levels deep; ragged nesting is an error."""
    if not _is_sequence(value):
        raise ValueError(
            f"a mapped input must be a list, tuple or numpy array, not {type(value).__name__} "
            f"({value!r:.60})"
        )
    shape: list[int] = []
    level = [value]
    for depth in range(rank):
        lengths = set()
        for v in level:
            if not _is_sequence(v):
                hint = (
                    "; make the whole input one array (np.stack) instead of a list of arrays"
                    if isinstance(v, np.ndarray)
                    else ""
                )
                raise ValueError(
                    f"expected nested sequences {rank} deep, found {type(v).__name__} at depth "
                    f"{depth}{hint}"
                )
            try:
                lengths.add(len(v))
            except OverflowError:  # a range longer than sys.maxsize
                raise ValueError(
                    f"{v!r:.60} is too long to map over (more than {sys.maxsize} elements)"
                ) from None
        if len(lengths) > 1:
            raise ValueError(f"ragged nesting: lengths {sorted(lengths)} at depth {depth}")
        shape.append(lengths.pop() if lengths else 0)
        if depth < rank - 1:
            if any(isinstance(v, range) and len(v) for v in level):  # never list a long range
                raise ValueError(
                    f"expected nested sequences {rank} deep, found int at depth {depth + 1}"
                )
            level = [x for v in level for x in v]
    return tuple(shape)


def as_mapped_array(value: Any, rank: int) -> np.ndarray:
    """``value`` as a numpy array whose first ``rank`` axes are the mapped ones.

    Lists of numbers become numeric arrays; lists of anything else (tuples, objects)
    become object arrays of exactly ``rank`` dimensions, so a tuple stays one element.
    """
    if isinstance(value, np.ndarray):
        mapped_shape(value, rank)
        return value
    if _is_array_like(value):  # xarray, pandas: what build() accepted, the workers can use
        shape = mapped_shape(value, rank)
        array = np.asanyarray(value)
        if array.shape != shape:
            raise ValueError(
                f"{type(value).__name__} of shape {shape} is not an array: numpy made one of "
                f"shape {array.shape} of it; pass a numpy array or a list instead"
            )
        return array
    shape = nested_shape(value, rank)
    flat = _flattened(value, rank)
    if flat and all(isinstance(x, int | float | complex | np.number) for x in flat):
        return np.asarray(flat).reshape(shape)
    return _object_array(flat, shape)


def as_element_array(value: Any, rank: int) -> np.ndarray:
    """What the elements of a map are given of ``value``: its items, as the user made them.

    As :func:`as_mapped_array`, except that the items of (nested) lists keep their own
    types: a list of floats gives each element a Python ``float``, not a ``numpy.float64``,
    which computes several times slower in plain Python code and pickles five times larger
    into the element's outputs.  Arrays give their own scalars, as numpy indexes them.
    """
    if isinstance(value, np.ndarray) or _is_array_like(value):
        return as_mapped_array(value, rank)
    return _object_array(_flattened(value, rank), nested_shape(value, rank))


def _flattened(value: Any, rank: int) -> list[Any]:
    """The items of nested sequences ``rank`` levels deep, in C order."""
    flat: list[Any] = [value]
    for _ in range(rank):
        flat = [x for v in flat for x in v]
    return flat


def _object_array(flat: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    """An object array of ``shape`` holding ``flat``'s items (a tuple stays one item)."""
    arr = np.empty(len(flat), dtype=object)
    for i, x in enumerate(flat):
        arr[i] = x
    return arr.reshape(shape)


def validate_inputs(workflow: Workflow, inputs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    if workflow.environment is None:
        raise ValueError(
            f"workflow {workflow.name!r} has no execution environment; build "
            f"{workflow.name}.on(env) with env = flows.engine.execution_environment(None, "
            "'localhost') or another environment"
        )
    named = [k for k in inputs if not isinstance(k, str)]
    if named:  # only possible by editing Builder.kwargs
        raise TypeError(
            f"workflow {workflow.name!r}: input names are strings, not {named[0]!r}; "
            f"it takes: {', '.join(workflow.parameter_order)}"
        )
    missing = [
        p for p in workflow.parameter_order if p in workflow.required_parameters and p not in inputs
    ]
    surplus = [k for k in inputs if k not in workflow.parameters]
    problems = []
    if missing:
        problems.append(f"missing input(s) {', '.join(missing)}")
    if surplus:
        problems.append(f"unknown input(s) {', '.join(surplus)}")
    if problems:
        raise ValueError(
            f"workflow {workflow.name!r}: {'; '.join(problems)}. It takes: "
            f"{', '.join(workflow.parameter_order)}"
        )
    return map_shapes(workflow, inputs)


def map_shapes(workflow: Workflow, inputs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every map output that can be known from the inputs alone.

    Outputs of plain steps are only known at run time; maps over them are checked then.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for node in workflow.nodes:
        if not isinstance(node, Map):
            continue
        spec = node.mapspec
        in_shapes: dict[str, tuple[int, ...]] = {}
        for arr in spec.inputs:
            if arr.name in shapes:
                in_shapes[arr.name] = shapes[arr.name]
            elif arr.name in inputs:
                try:
                    in_shapes[arr.name] = mapped_shape(inputs[arr.name], arr.rank)
                except ValueError as e:
                    raise ValueError(f"input {arr.name!r} of map {node.name!r}: {e}") from None
        if len(in_shapes) < len(spec.inputs):
            continue
        try:
            out = spec.shape(in_shapes)
        except MapSpecError as e:
            raise ValueError(f"map {node.name!r}: {e}") from None
        for name in spec.output_names:
            shapes[name] = out
    return shapes
