"""The nodes of a plan: a plain call of a step, a map of a step, and steps side by side.

``map_`` and ``concurrently`` make them; :mod:`parsl_flows.workflow` strings them together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .mapspec import MapSpec
from .step import Step

__all__ = ["Call", "Concurrently", "Map", "concurrently", "map_"]


@dataclass(frozen=True)
class Call:
    """One call of a step on the run's context.

    ``max_restarts`` is the number of attempts in total (1: no restart); ``retry_on``
    limits which exception types are retried (``None``: all of them).
    """

    step: Step
    max_restarts: int = 1
    retry_on: tuple[type[BaseException], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.step, Step):
            raise TypeError(f"expected a step (a function decorated with @step), not {self.step!r}")
        _check_restarts(self.max_restarts, self.step.name)
        if self.retry_on is not None:
            types = self.retry_on if isinstance(self.retry_on, tuple) else (self.retry_on,)
            for t in types:
                if not (isinstance(t, type) and issubclass(t, BaseException)):
                    raise TypeError(
                        f"retry_on of step {self.step.name!r} must hold exception types, not {t!r}"
                    )
            object.__setattr__(self, "retry_on", types)

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.step.parameters

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.step.returns

    @property
    def is_map(self) -> bool:
        return False

    @property
    def mapped_parameters(self) -> tuple[str, ...]:
        """The parameters iterated over: none for a plain call."""
        return ()

    def with_step(self, new: Step) -> Call:
        return dataclasses.replace(self, step=new)


@dataclass(frozen=True)
class Map(Call):
    """A step mapped over arrays as its ``mapspec`` says; one task per chunk of elements."""

    mapspec: MapSpec = None  # type: ignore[assignment]
    chunksize: int | str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        spec = self.mapspec
        if isinstance(spec, str):
            spec = MapSpec.from_string(spec)
            object.__setattr__(self, "mapspec", spec)
        if not isinstance(spec, MapSpec):
            raise TypeError(f"map_ of step {self.step.name!r} needs a mapspec string")
        unknown = [n for n in spec.input_names if n not in self.step.parameters]
        if unknown:
            raise ValueError(
                f"mapspec '{spec}' maps over {', '.join(map(repr, unknown))}, but step "
                f"{self.step.name!r} has no such parameter (it takes "
                f"{', '.join(self.step.parameters) or 'no parameters'})"
            )
        if set(spec.output_names) != set(self.step.returns):
            raise ValueError(
                f"mapspec '{spec}' names outputs {', '.join(spec.output_names)}, but step "
                f"{self.step.name!r} returns {', '.join(self.step.returns)}; the outputs of "
                "the mapspec must be exactly the step's returns"
            )
        cs = self.chunksize
        if cs != "auto" and (isinstance(cs, bool) or not isinstance(cs, int) or cs < 1):
            raise ValueError(
                f"chunksize of map {self.step.name!r} must be 'auto' or an int >= 1, not {cs!r}"
            )

    @property
    def is_map(self) -> bool:
        return True

    @property
    def mapped_parameters(self) -> tuple[str, ...]:
        return self.mapspec.input_names


def _check_restarts(n: Any, owner: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(
            f"max_restarts of step {owner!r} is the number of attempts in total and must be "
            f"an int >= 1, not {n!r}"
        )


def map_(
    step: Step,
    mapspec: str | MapSpec,
    *,
    max_restarts: int = 1,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    chunksize: int | str = "auto",
) -> Map:
    """Map ``step`` over arrays: ``map_(f, "x[i], y[j] -> z[i, j]")``.

    Every element runs independently; failed elements are masked in the output.
    ``max_restarts`` is the number of attempts in total for failed elements.
    """
    if not isinstance(step, Step):
        raise TypeError(f"map_ needs a step (decorate the function with @step), not {step!r}")
    spec = mapspec if isinstance(mapspec, MapSpec) else MapSpec.from_string(mapspec)
    types = retry_on if retry_on is None or isinstance(retry_on, tuple) else (retry_on,)
    return Map(step, max_restarts, types, spec, chunksize)


@dataclass(frozen=True)
class Concurrently:
    """Nodes that run side by side; none reads what another writes."""

    nodes: tuple[Call, ...]


def concurrently(*steps: Step | Call) -> Concurrently:
    """Run several steps (or maps) at the same time: ``concurrently(make_mesh, make_materials)``."""
    if len(steps) < 2:
        raise ValueError("concurrently() needs at least two steps; use .then(step) for one")
    nodes = tuple(_as_node(s) for s in steps)
    seen: dict[str, str] = {}
    for node in nodes:
        for out in node.outputs:
            if out in seen:
                raise ValueError(
                    f"concurrently(): {node.name!r} and {seen[out]!r} both produce {out!r}"
                )
            seen[out] = node.name
    for node in nodes:
        for p in node.parameters:
            if p in seen and seen[p] != node.name:
                raise ValueError(
                    f"concurrently(): {node.name!r} reads {p!r}, which {seen[p]!r} produces; "
                    f"steps that depend on each other cannot run at the same time, so put "
                    f"{node.name!r} in a later .then()"
                )
    return Concurrently(nodes)


def _as_node(x: Any) -> Call:
    if isinstance(x, Call):
        return x
    if isinstance(x, Step):
        return Call(x)
    raise TypeError(
        f"expected a step, map_(...) or concurrently(...), not {x!r}; decorate functions "
        "with @step first"
    )
