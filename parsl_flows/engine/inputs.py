"""What a map's inputs allow: their shapes, where they have values, which elements can run.

A mixin of :class:`~parsl_flows.engine.orchestrator.Execution` (through ``StepAttempts``).
An element can run when every mapped input it reads has a value there: a masked element
of an upstream map, or of a masked-array input, leaves it out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..mapspec import ArraySpec, MapSpec
from ..store import load_pickle, present_indices
from ..workflow import mapped_shape
from .worker import Source

__all__ = ["MappedInputs"]


def _time_stamp(folder: Path) -> int | None:
    try:
        return os.stat(folder).st_mtime_ns
    except OSError:
        return None


class MappedInputs:
    """Shapes and masks of a step's mapped inputs (mixed into ``Execution``)."""

    _values: dict[str, Any]  # value files already in memory (the inputs)
    #: Output folder -> which elements have a file, and the folder's time stamp then (None
    #: if it changed while it was listed).
    _presence: dict[str, tuple[np.ndarray, int | None]]

    def _value(self, src: Source) -> Any:
        if src.path not in self._values:
            self._values[src.path] = load_pickle(Path(src.path))
        return self._values[src.path]

    def _shape_of(self, src: Source, arr: ArraySpec) -> tuple[int, ...]:
        if src.kind == "array":
            return src.shape
        return mapped_shape(self._value(src), arr.rank)

    def _present_mask(self, src: Source, arr: ArraySpec) -> np.ndarray | None:
        """Where ``arr``'s input has a value, over its ``rank`` mapped axes (None: everywhere)."""
        if src.kind == "array":
            assert src.shape is not None
            size = int(np.prod(src.shape, dtype=np.int64))
            present = self._present(Path(src.path), size).reshape(src.shape)
        else:
            value = self._value(src)
            if not isinstance(value, np.ma.MaskedArray):
                return None
            present = ~np.ma.getmaskarray(value)
        extra = tuple(range(arr.rank, present.ndim))
        return np.asarray(present.any(axis=extra) if extra else present)

    def _present(self, folder: Path, size: int) -> np.ndarray:
        """Which of ``size`` elements have a file in a finished map's output ``folder``.

        One listing per output and run: the map's own end and every map downstream ask,
        and listing a folder of a million files takes seconds.
        """
        key = str(folder)
        if key not in self._presence:
            before = _time_stamp(folder)
            present = np.zeros(size, dtype=bool)
            found = present_indices(folder)
            present[found[found < size]] = True
            self._presence[key] = (present, before if before == _time_stamp(folder) else None)
        return self._presence[key][0]

    def _listed_exactly(self, folder: Path, indices: np.ndarray) -> int | None:
        """The time stamp of ``folder`` when its listing found exactly ``indices`` (None:
        not listed, changed while listed, or other files)."""
        present, stamp = self._presence.get(str(folder), (None, None))
        if present is None or stamp is None:
            return None
        return stamp if np.array_equal(np.sort(indices), np.flatnonzero(present)) else None

    def _submittable(
        self, spec: MapSpec, params: dict[str, Source], shape: tuple[int, ...]
    ) -> np.ndarray:
        """Elements whose mapped inputs all exist (``:`` axes need one present value)."""
        out = np.ones(shape, dtype=bool)
        for arr in spec.inputs:
            present = self._present_mask(params[arr.name], arr)
            if present is None:
                continue
            whole = tuple(k for k, a in enumerate(arr.axes) if a is None)
            if whole:
                present = np.asarray(present.any(axis=whole))
            out &= spec.on_output_grid(arr.name, present, shape)
        return out
