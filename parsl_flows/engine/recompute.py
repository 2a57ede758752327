"""Elements a restart computes again although an earlier run has them, and what follows.

``run.get_builder_restart(recompute={STEP: selection})`` names elements of some steps;
they are not taken from the earlier run even where their code and inputs did not change.
Every element downstream that reads one of them (through the mapspecs, as its keys
would) is computed again too; everything else is reused as usual.  The keys stay what
they are (code and inputs): a later restart of the new run reuses its results.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..workflow import Call, Map

__all__ = ["Recompute"]


class Recompute:
    """The elements asked for, per step, and the outputs they reach, as steps finish."""

    def __init__(self, chosen: Mapping[str, np.ndarray] | None = None) -> None:
        self.chosen = {
            step: np.asarray(idx, dtype=np.int64) for step, idx in (chosen or {}).items()
        }
        #: Per output reached: a map's, which elements (bool, over its shape); a plain
        #: value's, True.  Outputs nothing reached are not kept.
        self.reached: dict[str, np.ndarray | bool] = {}

    def __bool__(self) -> bool:
        return bool(self.chosen)

    def of_node(self, node: Call, shape: tuple[int, ...]) -> np.ndarray:
        """The elements of ``node`` (flat) to compute whatever an earlier run holds."""
        total = max(1, int(np.prod(shape, dtype=np.int64)))
        if not self.chosen:
            return np.empty(0, dtype=np.int64)
        mask = np.zeros(total, dtype=bool)
        chosen = self.chosen.get(node.name)
        if chosen is not None:
            mask[chosen[chosen < total]] = True
        mapped = node.mapspec.input_names if isinstance(node, Map) else ()
        for p in node.parameters:
            reached = self.reached.get(p)
            if reached is None:
                continue
            if isinstance(reached, bool) or p not in mapped:
                mask[:] |= bool(np.any(reached))  # read whole: every element reads it
                continue
            assert isinstance(node, Map)
            arr = node.mapspec.input(p)
            whole = tuple(k for k, a in enumerate(arr.axes) if a is None)
            named = np.asarray(reached.any(axis=whole)) if whole else reached
            mask |= np.asarray(node.mapspec.on_output_grid(p, named, shape)).ravel()
        return np.flatnonzero(mask)

    def note_outputs(self, node: Call, forced: np.ndarray, shape: tuple[int, ...]) -> None:
        """``node`` computed ``forced`` again: the steps reading its outputs follow."""
        if not len(forced):
            return
        for out in node.outputs:
            if isinstance(node, Map):
                mask = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=bool)
                mask[forced] = True
                self.reached[out] = mask.reshape(shape)
            else:
                self.reached[out] = True
