"""The plan: steps composed with ``then``, ``concurrently``, ``map_`` and ``join``.

A workflow is an immutable, ordered list of stages.  Each stage holds one node (a
plain call of a step, or a map of a step over arrays) or several nodes that run side
by side.  Data flows by name: a node reads its parameters from the run's context (the
inputs plus every output produced by earlier stages) and adds its outputs to it.
Building a plan never runs anything; every method returns a new plan.

>>> from parsl_flows import step
>>> @step(returns="y")
... def double(x):
...     return 2 * x
>>> @step(returns="total")
... def add_up(y):
...     return sum(y.to_array())
>>> flow = new_workflow("demo").then(map_(double, "x[i] -> y[i]")).then(add_up)
>>> sorted(flow.parameters), sorted(flow.all_outputs)
(['x'], ['total', 'y'])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .nodes import Call, Concurrently, Map, _as_node, _check_restarts, concurrently, map_
from .shapes import as_mapped_array, mapped_shape, nested_shape, validate_inputs
from .step import Step
from .visualize import plan_graph, render

__all__ = [
    "Builder",
    "as_mapped_array",
    "mapped_shape",
    "nested_shape",
    "Call",
    "Inputs",
    "Map",
    "Workflow",
    "build",
    "concurrently",
    "first",
    "map_",
    "new_workflow",
]


# -- the workflow --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workflow:
    """An immutable plan.  Make one with :func:`new_workflow` or :func:`first`."""

    name: str
    stages: tuple[tuple[Call, ...], ...] = ()
    return_mapping: tuple[tuple[str, str], ...] | None = None  # (exposed name, output)
    environment: Any = None

    # -- composition -----------------------------------------------------------------------

    def then(self, x: Step | Call | Concurrently | Workflow) -> Workflow:
        """A new plan with ``x`` (a step, map, concurrently(...) or workflow) appended."""
        if isinstance(x, Workflow):
            new_stages = x.stages
        elif isinstance(x, Concurrently):
            new_stages = (x.nodes,)
        else:
            new_stages = ((_as_node(x),),)
        flow = self
        for stage in new_stages:
            flow = flow._append(stage)
        return flow

    def join(self, other: Workflow) -> Workflow:
        """A new plan with all of ``other``'s stages after this one's."""
        if not isinstance(other, Workflow):
            raise TypeError(f"join() takes a workflow, not {other!r}; use then() for steps")
        return self.then(other)

    def _append(self, stage: tuple[Call, ...]) -> Workflow:
        if len(stage) > 1:
            concurrently(*stage)  # the same checks for stages rebuilt by replace_steps
        produced = {out: n.name for n in self.nodes for out in n.outputs}
        names = {n.name for n in self.nodes}
        for node in stage:
            own = sorted(set(node.parameters) & set(node.outputs))
            if own:
                raise ValueError(
                    f"step {node.name!r} reads {', '.join(map(repr, own))}, which it produces "
                    "itself; give the input and the output different names"
                )
            if node.name in names:
                raise ValueError(
                    f"workflow {self.name!r} already has a step named {node.name!r}; each step "
                    "may appear once (wrap the function again with step(...) under another name)"
                )
            for out in node.outputs:
                if out in produced:
                    raise ValueError(
                        f"step {node.name!r} produces {out!r}, which step {produced[out]!r} "
                        f"already produces in workflow {self.name!r}; every output name must "
                        "be produced once"
                    )
                consumers = [n.name for n in self.nodes if out in n.parameters]
                if consumers:
                    raise ValueError(
                        f"step {consumers[0]!r} reads {out!r}, which is produced only later "
                        f"by {node.name!r}; move {node.name!r} before {consumers[0]!r}"
                    )
        return dataclasses.replace(self, stages=(*self.stages, stage))

    def returning(self, *names: str, **renames: str) -> Workflow:
        """Choose the outputs the workflow returns: ``returning("a", b="b_as_returned")``."""
        pairs = [(n, n) for n in names] + [(exposed, out) for out, exposed in renames.items()]
        unknown = [out for _, out in pairs if out not in self.all_outputs]
        if unknown:
            raise ValueError(
                f"workflow {self.name!r} cannot return {', '.join(map(repr, unknown))}: no "
                f"step produces it (outputs: {', '.join(sorted(self.all_outputs))})"
            )
        exposed = [e for e, _ in pairs]
        if len(set(exposed)) != len(exposed):
            raise ValueError(f"returning(): a returned name appears twice in {exposed}")
        return dataclasses.replace(self, return_mapping=tuple(pairs))

    def rename(self, name: str) -> Workflow:
        """The same plan under another name."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a workflow name must be a non-empty string, not {name!r}")
        return dataclasses.replace(self, name=name)

    def replace_steps(self, replacements: Mapping[Step | str, Step]) -> Workflow:
        """Swap steps for new ones that take (at least) the same inputs and return the same.

        Extra parameters of the new step become new workflow parameters.
        """

        def replace(node: Call, new: Step) -> Call:
            _check_replacement(node, new)
            return node.with_step(new)

        return self._with_nodes_changed("replace_steps", replacements, replace)

    def with_restarts(self, restarts: Mapping[Step | str, int]) -> Workflow:
        """Allow up to ``n`` attempts in total for the given steps: ``{get_charge: 5}``."""

        def restart(node: Call, n: int) -> Call:
            _check_restarts(n, node.name)
            return dataclasses.replace(node, max_restarts=n)

        return self._with_nodes_changed("with_restarts", restarts, restart)

    def _with_nodes_changed(
        self, what: str, changes: Mapping[Step | str, Any], change: Callable[[Call, Any], Call]
    ) -> Workflow:
        """A re-validated plan whose nodes named in ``changes`` went through ``change``."""
        todo = dict(changes)
        new_stages = []
        for stage in self.stages:
            new_nodes = []
            for node in stage:
                key = _find_key(todo, node.step)
                new_nodes.append(node if key is None else change(node, todo.pop(key)))
            new_stages.append(tuple(new_nodes))
        if todo:
            raise ValueError(
                f"{what}(): workflow {self.name!r} has no step "
                f"{', '.join(repr(_label(k)) for k in todo)} (steps: {', '.join(self.step_names)})"
            )
        return self._rebuilt(new_stages)

    def _rebuilt(self, stages: Iterable[tuple[Call, ...]]) -> Workflow:
        """Re-validate a plan whose nodes changed, by appending its stages afresh."""
        flow = dataclasses.replace(self, stages=())
        for stage in stages:
            flow = flow._append(stage)
        return flow

    def on(self, environment: Any) -> Workflow:
        """The same plan, to run in ``environment`` (see ``flows.engine.execution_environment``)."""
        if environment is None:
            raise ValueError("on() needs an execution environment, not None")
        return dataclasses.replace(self, environment=environment)

    # -- introspection ---------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[Call, ...]:
        """Every call and map, in plan order."""
        return tuple(n for stage in self.stages for n in stage)

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def node(self, name: str | Step) -> Call:
        for n in self.nodes:
            if n.step is name or n.name == name:
                return n
        raise KeyError(f"workflow {self.name!r} has no step {_label(name)!r}")

    @property
    def all_outputs(self) -> frozenset[str]:
        """Every output name some step of the plan produces."""
        return frozenset(out for n in self.nodes for out in n.outputs)

    @property
    def parameters(self) -> frozenset[str]:
        """The inputs the plan needs: every step parameter that no step produces."""
        return frozenset(self.parameter_order)

    @property
    def parameter_order(self) -> tuple[str, ...]:
        """The parameters in the order steps first read them."""
        outputs = self.all_outputs
        seen: dict[str, None] = {}
        for n in self.nodes:
            for p in n.parameters:
                if p not in outputs:
                    seen.setdefault(p)
        return tuple(seen)

    @property
    def required_parameters(self) -> frozenset[str]:
        """Parameters that some step reads without a default there (mapped ones always)."""
        return frozenset(
            p
            for n in self.nodes
            for p in n.parameters
            if p in self.parameters
            and (p not in n.step.defaults or (isinstance(n, Map) and p in n.mapped_parameters))
        )

    @property
    def mapped_parameters(self) -> frozenset[str]:
        """Parameters that some map iterates over: they must be sequences or arrays."""
        return frozenset(
            p
            for n in self.nodes
            if isinstance(n, Map)
            for p in n.mapped_parameters
            if p in self.parameters
        )

    @property
    def returns(self) -> tuple[str, ...]:
        """The names under which the workflow returns outputs (all outputs by default)."""
        return tuple(e for e, _ in self.returned_outputs)

    @property
    def returned_outputs(self) -> tuple[tuple[str, str], ...]:
        """``(returned name, output name)`` pairs."""
        if self.return_mapping is None:
            return tuple((o, o) for n in self.nodes for o in n.outputs)
        return self.return_mapping

    def producers(self) -> dict[str, Call]:
        """Which node produces each output."""
        return {out: n for n in self.nodes for out in n.outputs}

    def __iter__(self) -> Iterator[Call]:
        return iter(self.nodes)

    def __repr__(self) -> str:
        stages = []
        for stage in self.stages:
            parts = [
                f"map_({n.name}, '{n.mapspec}')" if isinstance(n, Map) else n.name for n in stage
            ]
            stages.append(parts[0] if len(parts) == 1 else f"concurrently({', '.join(parts)})")
        return f"<Workflow {self.name!r}: {' -> '.join(stages) or '(empty)'}>"

    def visualize(self, as_png: bool = False, filename: str | None = None) -> Any:
        """Draw the plan with graphviz: steps are boxes, data ovals, maps red, inputs grey.

        Returns a ``graphviz.Digraph``; ``as_png=True`` gives a picture a notebook shows;
        ``filename="plan.png"`` (or .svg, .pdf) writes the picture there.
        """
        return render(plan_graph(self), as_png=as_png, filename=filename)


def _find_key(todo: Mapping[Step | str, Any], step: Step) -> Step | str | None:
    for k in todo:
        if k is step or (isinstance(k, str) and k == step.name):
            return k
    return None


def _label(k: Any) -> str:
    return k.name if isinstance(k, Step) else str(k)


def _check_replacement(node: Call, new: Step) -> None:
    if not isinstance(new, Step):
        raise TypeError(
            f"replace_steps(): the replacement for {node.name!r} must be a step, not {new!r}"
        )
    if set(new.returns) != set(node.step.returns):
        raise ValueError(
            f"replace_steps(): {new.name!r} returns {new.returns}, but {node.name!r} returns "
            f"{node.step.returns}; a replacement must return the same names"
        )
    needed = [p for p in node.step.parameters if p not in node.step.defaults]
    if isinstance(node, Map):
        needed += [p for p in node.mapped_parameters if p not in needed]
    missing = [p for p in needed if p not in new.parameters]
    if missing:
        raise ValueError(
            f"replace_steps(): {new.name!r} does not take {', '.join(map(repr, missing))}, "
            f"which the plan gives to {node.name!r}; a replacement must accept every input "
            "of the step it replaces"
        )


def new_workflow(name: str) -> Workflow:
    """An empty plan called ``name``; add steps with ``.then(...)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a workflow name must be a non-empty string, not {name!r}")
    return Workflow(name)


def first(x: Step | Call | Concurrently | Workflow) -> Workflow:
    """A plan that starts with ``x``: ``first(map_(f, "x[i] -> y[i]")).then(g)``."""
    if isinstance(x, Workflow):
        return x
    name = "_".join(n.name for n in x.nodes) if isinstance(x, Concurrently) else _as_node(x).name
    return new_workflow(name).then(x)


# -- building: a plan plus inputs ----------------------------------------------------------


class Inputs(dict[str, Any]):
    """The inputs of a built workflow; entries read and written as attributes too."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"no input {name!r} (inputs: {', '.join(self) or 'none'})"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


@dataclass
class Builder:
    """A workflow with its inputs, ready for ``flows.submit``.  Edit ``kwargs`` freely."""

    workflow: Workflow
    kwargs: Inputs
    restarted_from: str | None = None  # the run whose results a restart may reuse
    #: Per step, elements (flat indices) not to reuse from ``restarted_from``: computed
    #: again, with every element downstream that reads them (``get_builder_restart``).
    recompute: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> dict[str, tuple[int, ...]]:
        """Check the inputs against the plan; return the shape of every map output."""
        return validate_inputs(self.workflow, self.kwargs)

    def __repr__(self) -> str:
        return f"<Builder {self.workflow.name!r} with inputs {', '.join(self.kwargs)}>"

    def __setattr__(self, name: str, value: Any) -> None:
        # ``builder.x = ...`` would otherwise be kept and ignored: the run would use the old x.
        if name not in ("workflow", "kwargs", "restarted_from", "recompute"):
            where = "an input" if name in getattr(self, "kwargs", {}) else "no input"
            raise AttributeError(
                f"a Builder has no attribute {name!r} ({where} of that name): set inputs "
                f"as builder.kwargs.{name} = ..."
            )
        super().__setattr__(name, value)


def build(workflow: Workflow, **inputs: Any) -> Builder:
    """Pair a plan (given an environment with ``.on(env)``) with its inputs, checked now.

    Raises ``ValueError`` for missing or surplus inputs, a plan without environment,
    mapped inputs that are not sequences or arrays, and shapes the mapspecs reject.
    """
    if not isinstance(workflow, Workflow):
        raise TypeError(f"build() takes a workflow, not {workflow!r}")
    builder = Builder(workflow, Inputs(inputs))
    builder.validate()
    return builder
