"""What a restart or a resume would do, before it runs: ``flows.preview(builder)``.

Per step: how many elements would be taken from the earlier run (and which run), how
many computed, how many left out for masked inputs.  Nothing is written and no Parsl
is started.  A restart's preview works out every element's key as the run would
(``engine.hashing``) and looks them up in the earlier run's keys and indexes, opening no
result file; it takes every element it would compute to succeed, so downstream counts
are what a run without new failures does.  A map over a plain step's output that would
be computed again has a shape only once that step ran: its row says so.

A resume's preview reads each step's record and which elements its folders hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .element_folders import present_indices
from .engine.hashing import KeyBook, combine, value_key
from .engine.inputs import MappedInputs
from .engine.recompute import Recompute
from .engine.reuse import Reuse, check_reuse, matching_elements, origin_step_dir
from .engine.reuse_index import find_in_store
from .engine.task_spec import Source
from .mapspec import MapSpecError
from .ranges import common, expand, without
from .shapes import map_shapes, mapped_shape
from .status import RunRecord, StepStatus
from .store import default_store, element_path, load_pickle
from .workflow import Builder, Map, Workflow

__all__ = ["Preview", "StepPreview", "preview", "preview_resume"]

_ROOT = Path("/preview")  # where the preview pretends the new run's steps are


@dataclass
class StepPreview:
    """One step of a preview.  ``elements`` is None where the shape is not known yet."""

    name: str
    kind: str  # "map" or "call"
    elements: int | None
    reuse: int = 0
    compute: int = 0
    masked: int = 0  # left out: a mapped input is masked there (as far as known)
    reused_from: str | None = None
    note: str = ""
    shape: tuple[int, ...] | None = None
    taken_from: Path | None = None  # the earlier run's step folder it would take from


@dataclass
class Preview:
    """Per step, what a run would reuse and compute (``print`` it for a table)."""

    what: str  # "restart of RUN", "resume of RUN", "new run"
    steps: list[StepPreview]

    @property
    def compute(self) -> int:
        return sum(s.compute for s in self.steps)

    @property
    def reuse(self) -> int:
        return sum(s.reuse for s in self.steps)

    def __str__(self) -> str:
        width = max([4, *(len(s.name) for s in self.steps)])
        lines = [
            f"preview of the {self.what}: {self.compute} elements to compute, "
            f"{self.reuse} to reuse",
            f"{'step':<{width}}  {'elements':>8}  {'reuse':>7}  {'compute':>7}  {'masked':>6}",
        ]
        for s in self.steps:
            n = "?" if s.elements is None else str(s.elements)
            row = f"{s.name:<{width}}  {n:>8}  {s.reuse:>7}  {s.compute:>7}  {s.masked:>6}"
            extra = [f"from {s.reused_from}"] if s.reuse and s.reused_from else []
            said = [t for t in (*extra, s.note) if t]
            lines.append(row + ("  " + "; ".join(said) if said else ""))
        return "\n".join(line.rstrip() for line in lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))


class _Unknown(Exception):
    """A value the preview cannot know: a plain step's output it would compute."""


def preview(
    builder: Builder, *, reuse: Reuse = True, store: str | os.PathLike[str] | None = None
) -> Preview:
    """What submitting ``builder`` would reuse and compute, per step (see module);
    ``reuse`` and ``store`` as for ``flows.submit``."""
    check_reuse(reuse)
    wf, inputs = builder.workflow, dict(builder.kwargs)
    shapes = builder.validate()
    origin = Path(builder.restarted_from) if reuse and builder.restarted_from else None
    lookup = default_store(store) if reuse == "store" else None  # the store's reuse index
    keys, mapped = KeyBook(), MappedInputs()
    for name, value in inputs.items():
        keys.value[name], _ = value_key(value)
    recompute = Recompute(builder.recompute if origin is not None else None)
    producers = wf.producers()
    sources: dict[str, Source] = {}
    for name in inputs:
        sources[name] = Source("value", f"preview:{name}")
        mapped.remember(f"preview:{name}", inputs[name])
    rows = []
    for node in wf.nodes:
        params = {p: sources[p] for p in node.parameters if p in sources}
        lost = [p for p in node.parameters if p in producers and p not in sources]
        kind = "map" if isinstance(node, Map) else "call"
        if lost:
            rows.append(StepPreview(node.name, kind, None, note=f"{', '.join(lost)} unknown"))
            continue
        row = _preview_node(node, params, shapes, origin, keys, mapped, recompute, lookup)
        rows.append(row)
        step_dir = _ROOT / node.name
        if isinstance(node, Map):
            shape = row.shape
            if shape is None:
                continue
            for out in node.outputs:
                sources[out] = Source("array", str(step_dir / "return_values" / out), shape)
        else:
            for out in node.outputs:
                path = f"preview:{out}"
                sources[out] = Source("value", path)
                origin_dir = row.taken_from
                if row.reuse and origin_dir is not None:
                    folder = origin_dir / "return_values" / out
                    mapped.remember(path, load_pickle(element_path(folder, 0)))
                else:
                    mapped.remember(path, _UNKNOWN)
    what = f"restart of run {origin.name}" if origin is not None else "new run"
    if lookup is not None:
        what += f", reusing from the store {lookup}"
    return Preview(what, rows)


_UNKNOWN = object()


def _preview_node(
    node: Any,
    params: dict[str, Source],
    shapes: dict[str, tuple[int, ...]],
    origin: Path | None,
    keys: KeyBook,
    mapped: MappedInputs,
    recompute: Recompute,
    lookup: Path | None = None,  # reuse="store": the store whose index is read, never written
) -> StepPreview:
    def value_of(src: Source) -> Any:
        value = mapped.value(src)
        if value is _UNKNOWN:
            raise _Unknown(src.path.split(":", 1)[-1])
        return value

    kind = "map" if isinstance(node, Map) else "call"
    shape: tuple[int, ...] = ()
    try:
        if isinstance(node, Map):
            shape = node.mapspec.shape(
                {
                    a.name: params[a.name].shape
                    if params[a.name].kind == "array"
                    else mapped_shape(value_of(params[a.name]), a.rank)
                    for a in node.mapspec.inputs
                }
            )
            wanted = np.flatnonzero(mapped.submittable(node.mapspec, params, shape).ravel())
        else:
            wanted = np.array([0], dtype=np.int64)
        node_keys, why = keys.node_keys(node, params, shape, value_of)
    except _Unknown as e:
        row = StepPreview(node.name, kind, None, note=f"shape known once {e} is computed")
        for out in node.outputs:
            keys.array[out] = None
        return row
    except (MapSpecError, ValueError) as e:
        row = StepPreview(node.name, kind, None, note=f"would fail: {e}")
        return row
    total = int(np.prod(shape, dtype=np.int64))
    row = StepPreview(node.name, kind, total if isinstance(node, Map) else 1, shape=shape)
    row.masked = (total if isinstance(node, Map) else 1) - len(wanted)
    forced = common(recompute.of_node(node, shape), wanted)
    reused = np.empty(0, dtype=np.int64)
    if origin is not None:
        origin_dir = origin_step_dir(origin, node.name)
        if origin_dir is None:
            row.note = f"not in run {origin.name}"
        elif node_keys is None:
            row.note = f"cannot be reused: {why}"
        else:
            reused = matching_elements(
                origin_dir, list(node.outputs), node_keys, without(wanted, forced)
            )
            row.reused_from = origin.name
            row.taken_from = origin_dir
    if lookup is not None and node_keys is not None:
        rest = without(without(wanted, forced), reused)
        found = find_in_store(lookup, None, kind, tuple(node.outputs), node_keys, rest, write=False)
        runs = [origin.name] if len(reused) and origin is not None else []
        for f in found:
            reused = np.union1d(reused, f.new)
            runs += [f.run_id] if f.run_id not in runs else []
            row.taken_from = row.taken_from or f.step_dir
        row.reused_from = ", ".join(runs) or None
    if len(forced):
        row.note = (row.note + "; " if row.note else "") + f"{len(forced)} recomputed as asked"
    row.reuse = len(reused)
    row.compute = len(wanted) - len(reused)
    recompute.note_outputs(node, forced, shape)
    if isinstance(node, Map):
        present = mapped.note_present(_ROOT / node.name, node.outputs, total, wanted, wanted)
        keys.note_map_outputs(node.outputs, present, node_keys)
    else:
        for out in node.outputs:
            keys.value[out] = None if node_keys is None else combine(node_keys.tobytes(), out)
    return row


def preview_resume(run_dir: Path) -> Preview:
    """What resuming the run in ``run_dir`` would compute, per step (see module)."""
    record = RunRecord.load(run_dir)
    plan: Workflow = load_pickle(run_dir / "plan.pickle")
    inputs = {n: load_pickle(run_dir / "inputs" / f"{n}.pickle") for n in record.inputs}
    try:
        shapes = map_shapes(plan, inputs)
    except ValueError:
        shapes = {}
    rows = []
    for d in record.steps:
        step_dir = run_dir / "steps" / d
        st = StepStatus.load(step_dir)
        kind = st.kind
        if st.state in ("finished", "skipped") or (st.state == "failed" and st.finished):
            n = st.n_elements if kind == "map" else 1
            rows.append(StepPreview(st.name, kind, n, reuse=st.n_done, note=f"{st.state}"))
            continue
        shape = tuple(st.shape) if st.shape is not None else shapes.get(st.outputs[0])
        if kind == "call":
            have = all(element_path(step_dir / "return_values" / o, 0).exists() for o in st.outputs)
            rows.append(StepPreview(st.name, kind, 1, reuse=int(have), compute=int(not have)))
            continue
        if shape is None:
            rows.append(StepPreview(st.name, kind, None, note="shape known once it starts"))
            continue
        total = int(np.prod(shape, dtype=np.int64))
        present = np.arange(total, dtype=np.int64)
        for out in st.outputs:
            present = common(present, present_indices(step_dir / "return_values" / out))
        wanted = np.arange(total, dtype=np.int64)
        if st.submitted_elements:  # a started map: what it submitted, and what it holds
            wanted = np.union1d(np.asarray(expand(st.submitted_elements), np.int64), present)
        row = StepPreview(st.name, kind, total, reuse=len(present), shape=shape)
        row.compute = len(without(wanted, present))
        row.masked = st.n_inputs_masked
        row.note = f"{st.state}, {len(present)} elements in the store already"
        rows.append(row)
    return Preview(f"resume of run {record.run_id}", rows)
