"""The inputs behind each element of a map output: ``flows.input_samples``.

Part of :mod:`parsl_flows.dataset`: read from the run's folder (its plan, inputs and step
records), so it needs the plan's classes but no ``Run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..element_folders import present_indices
from ..files import MISSING_ELEMENT, load_pickle
from ..status import StepStatus
from ..workflow import Call, Map, Workflow, as_mapped_array
from .layout import _records, _value_loader

__all__ = ["input_samples"]


def _lineage(plan: Workflow, node: Map) -> dict[str, tuple[str, tuple[str | None, ...]]]:
    """What produced each element of ``node``: ``label -> (root, axes)``.

    A root is a workflow input or a plain step's output.  ``axes`` gives, for each mapped
    axis of the root, the index of ``node`` it follows (None: the whole axis); ``()`` is a
    value every element shares.  Maps upstream are followed through, their index letters
    translated into ``node``'s.  A root reached twice in different ways gets a second
    label such as ``"x[:]"``.
    """
    producers = plan.producers()
    entries: dict[str, tuple[str, tuple[str | None, ...]]] = {}
    seen_calls: set[str] = set()

    def add(root: str, axes: tuple[str | None, ...]) -> None:
        if axes and all(a is None for a in axes):
            axes = ()  # the whole array: the same for every element
        if (root, axes) in entries.values():
            return
        label = root
        if label in entries:  # "x[v]": x again, along another index; "x[:]": all of it
            label = f"{root}[{', '.join(a or ':' for a in axes) or ':'}]"
        entries.setdefault(label, (root, axes))

    def whole(name: str) -> None:
        src = producers.get(name)
        if src is None:
            add(name, ())
        elif isinstance(src, Map):
            visit_map(src, {u: None for u in src.mapspec.output_indices})
        else:
            visit_call(src)

    def visit_call(c: Call) -> None:
        if c.name not in seen_calls:
            seen_calls.add(c.name)
            for p in c.parameters:
                whole(p)

    def visit_map(m: Map, translate: dict[str, str | None]) -> None:
        spec = m.mapspec
        for arr in spec.inputs:
            axes = tuple(None if a is None else translate[a] for a in arr.axes)
            src = producers.get(arr.name)
            if isinstance(src, Map):
                up = src.mapspec.output_indices
                visit_map(src, {u: axes[p] if p < len(axes) else None for p, u in enumerate(up)})
            else:
                add(arr.name, axes)
                if src is not None:
                    visit_call(src)
        for p in m.parameters:
            if p not in spec.input_names:
                whole(p)

    visit_map(node, {i: i for i in node.mapspec.output_indices})
    return entries


def input_samples(array_or_step: Any) -> list[dict[str, Any]]:
    """The input values that produced each element of a map output, in C order.

    One dict per element: the mapped inputs it received (traced back through upstream
    maps to the workflow inputs, so ``charge[i, j]`` lists ``V_left`` and ``V_right``),
    the inputs every element shared, and ``<output>_mask`` (True: the element is
    missing).  Masked elements are included, so the list lines up with
    ``arr.to_array().ravel()``.  ``pandas.DataFrame(input_samples(charge))`` is a
    table of samples.  Loading the inputs runs pickled code: only for stores you trust.

    >>> charge = run.step("modified_get_charge").outputs.return_values.charge  # doctest: +SKIP
    >>> df = pd.DataFrame(flows.input_samples(charge))  # doctest: +SKIP
    >>> df.assign(charge=charge.to_array().filled(np.nan).ravel())  # doctest: +SKIP
    """
    folder = getattr(array_or_step, "folder", None)
    step_path = getattr(array_or_step, "path", None)
    if folder is not None:  # a FileBasedObjectArray
        folder = Path(folder)
        if (
            folder.parent.name != "return_values"
            or not (folder.parents[1] / "status.json").exists()
        ):
            raise ValueError(
                f"{array_or_step!r} is not a map output in a run, so nothing records the "
                "inputs that produced it; pass step.outputs.return_values.<name>"
            )
        step_dir, outputs = folder.parents[1], [folder.name]
    elif step_path is not None and (Path(step_path) / "status.json").exists():  # a StepRun
        step_dir = Path(step_path)
        outputs = list(StepStatus.load(step_dir).outputs)
    else:
        raise TypeError(
            "input_samples() takes a map output (step.outputs.return_values.<name>) or a "
            f"step of a run, not {type(array_or_step).__name__}"
        )
    rec = StepStatus.load(step_dir)
    run_dir = step_dir.parents[1]
    plan: Workflow = load_pickle(run_dir / "plan.pickle")
    node = plan.node(rec.name)
    if not isinstance(node, Map) or rec.shape is None:
        raise ValueError(f"step {rec.name!r} is not a map with elements; it has no samples")
    entries = _lineage(plan, node)
    value_of = _value_loader(run_dir, _records(run_dir))
    values = {root: value_of(root) for root in {r for r, _ in entries.values()}}
    order = node.mapspec.output_indices
    shared: dict[str, Any] = {}
    arrays: dict[str, tuple[np.ndarray, tuple[str | None, ...]]] = {}
    for label, (root, axes) in entries.items():
        if values[root] is MISSING_ELEMENT:  # an input left to its default
            continue
        if axes:
            arrays[label] = (as_mapped_array(values[root], len(axes)), axes)
        else:
            shared[label] = values[root]
    shape = tuple(rec.shape)
    size = int(np.prod(shape, dtype=np.int64))
    masks = {f"{o}_mask": _missing(step_dir / "return_values" / o, size) for o in outputs}
    samples = []
    for n, key in enumerate(np.ndindex(*shape)):
        pos = dict(zip(order, key, strict=True))
        sample = {
            label: shared[label]
            if label in shared
            else arrays[label][0][tuple(slice(None) if a is None else pos[a] for a in axes)]
            for label, (_, axes) in entries.items()
            if label in shared or label in arrays
        }
        sample.update({m: bool(mask[n]) for m, mask in masks.items()})
        samples.append(sample)
    return samples


def _missing(folder: Path, size: int) -> np.ndarray:
    mask = np.ones(size, dtype=bool)
    present = present_indices(folder)
    mask[present[present < size]] = False
    return mask
