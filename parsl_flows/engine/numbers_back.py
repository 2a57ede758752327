"""The numbers a map's workers sent back, kept until the map's ``dataset.nc`` is written.

A worker sends back the values of a map output along with its task's codes when every
element of the task that succeeded gave a plain number (``TaskResult.values``): eight
bytes an element.  The helper that writes ``dataset.nc`` (``engine/datasets.py``) then
takes them as they are, instead of reading every element's file again, which cost it
several seconds of the two cores that the workers use, for a map of 100,000 elements.

An output is known only while every task that has succeeded elements sent its values;
one task without them (values that are not plain numbers, a task the driver read from
the store after its worker died) and the helper reads the files, as before.

An output whose values all had one type is also kept in the map's numbers file
(``parsl_flows/numbers_file.py``), where the next steps read it instead of the files.
"""

from __future__ import annotations

import numpy as np

from .task_spec import OK, TaskResult

__all__ = ["NumbersBack"]


class NumbersBack:
    """The values of each output of one map, as its tasks come back (see module)."""

    def __init__(self, outputs: tuple[str, ...] | list[str]) -> None:
        self._parts: dict[str, list[tuple[np.ndarray, np.ndarray]] | None] = {
            out: [] for out in outputs
        }
        self._kinds: dict[str, set[str]] = {out: set() for out in outputs}

    def add(self, result: TaskResult) -> None:
        """Take the values of ``result``'s elements that succeeded."""
        ok = result.codes == OK
        if not ok.any():
            return
        indices = result.indices[ok]
        for out, parts in self._parts.items():
            values = result.values.get(out)
            if parts is None:
                continue
            if values is None or len(values) != len(indices):
                self._parts[out] = None  # this output's files must be read
            else:
                parts.append((indices, values))
                self._kinds[out].add(result.kinds.get(out, ""))

    def known(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{output: (indices, values)}`` for the outputs of which every value came back."""
        return {
            out: (np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts]))
            for out, parts in self._parts.items()
            if parts
        }

    def kinds(self) -> dict[str, str]:
        """For each known output, the one type of all its values; "" if they had several."""
        return {
            out: next(iter(self._kinds[out])) if len(self._kinds[out]) == 1 else ""
            for out, parts in self._parts.items()
            if parts
        }
