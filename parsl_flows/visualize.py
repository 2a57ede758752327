"""Pictures of plans (and, through ``report.graph``, of runs) with graphviz.

Steps are boxes and data are ovals; workflow inputs are grey; mapped steps and the
arrays they make are red, and a map's box shows its mapspec.  The same drawing serves
runs: ``report.graph`` passes a colour and an extra label line per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import graphviz

if TYPE_CHECKING:
    from .workflow import Workflow

__all__ = ["PNG", "StepLook", "plan_graph", "render"]

MAP_COLOR = "red"
INPUT_FILL = "lightgrey"


@dataclass(frozen=True)
class StepLook:
    """How to draw one step of a run: a fill colour and extra label lines."""

    fill: str
    note: str = ""
    dashed: bool = False


def _id(kind: str, name: str) -> str:
    return f"{kind}__{name}"


def plan_graph(workflow: Workflow, looks: Mapping[str, StepLook] | None = None) -> graphviz.Digraph:
    """The plan as a ``graphviz.Digraph``; ``looks`` colours steps by name (for runs)."""
    looks = looks or {}
    dot = graphviz.Digraph(name=workflow.name, graph_attr={"rankdir": "TB", "label": workflow.name})
    producers = workflow.producers()
    mapped_data = {out for n in workflow.nodes if n.is_map for out in n.outputs}
    mapped_inputs = workflow.mapped_parameters
    returned = {out for _, out in workflow.returned_outputs}

    for p in workflow.parameter_order:
        attrs: dict[str, str] = {"shape": "ellipse", "style": "filled", "fillcolor": INPUT_FILL}
        if p in mapped_inputs:
            attrs["color"] = MAP_COLOR
        dot.node(_id("data", p), p, **attrs)
    for out in producers:
        attrs = {"shape": "ellipse"}  # a fresh dict per data node
        if out in mapped_data:
            attrs["color"] = MAP_COLOR
            attrs["fontcolor"] = MAP_COLOR
        if out in returned:
            attrs["peripheries"] = "2"
        dot.node(_id("data", out), out, **attrs)

    for node in workflow.nodes:
        label = node.name
        attrs = {"shape": "box"}
        if node.is_map:
            label += f"\n{getattr(node, 'mapspec', '')}"
            attrs["color"] = MAP_COLOR
            attrs["fontcolor"] = MAP_COLOR
        if node.max_restarts > 1:
            label += f"\n(max_restarts={node.max_restarts})"
        look = looks.get(node.name)
        if look is not None:
            attrs["style"] = "filled,dashed" if look.dashed else "filled"
            attrs["fillcolor"] = look.fill
            if look.note:
                label += f"\n{look.note}"
        dot.node(_id("step", node.name), label, **attrs)
        for p in node.parameters:
            if p in producers or p in workflow.parameters:
                edge = {"color": MAP_COLOR} if p in node.mapped_parameters else {}
                dot.edge(_id("data", p), _id("step", node.name), **edge)
        for out in node.outputs:
            dot.edge(_id("step", node.name), _id("data", out))
    return dot


class PNG(bytes):
    """PNG bytes that a notebook displays as a picture (used when IPython is absent)."""

    def _repr_png_(self) -> bytes:
        return bytes(self)


def render(dot: graphviz.Digraph, as_png: bool = False, filename: str | None = None) -> Any:
    """Return the graph itself, or a PNG picture; write it to ``filename`` when given."""
    if filename is not None:
        path = Path(filename)
        fmt = path.suffix.lstrip(".") or "png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_pipe(dot, fmt))
    if not as_png:
        return dot
    data = _pipe(dot, "png")
    try:
        from IPython.display import Image
    except ImportError:
        return PNG(data)
    return Image(data=data, format="png")


def _pipe(dot: graphviz.Digraph, fmt: str) -> bytes:
    try:
        return dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise RuntimeError(
            "drawing needs graphviz's 'dot' program: install it with "
            "'apt-get install graphviz' (Debian/Ubuntu), 'brew install graphviz' (macOS) or "
            "'conda install graphviz'"
        ) from None
