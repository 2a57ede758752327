"""What a map's inputs allow: their shapes, where they have values, which elements can run.

One object per run (``Execution.mapped``), shared by its steps: it keeps the input values
already loaded and which elements of each finished map exist.  An element can run when
every mapped input it reads has a value there: a masked element
of an upstream map, or of a masked-array input, leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..mapspec import ArraySpec, MapSpec
from ..store import load_pickle, present_indices
from ..workflow import mapped_shape
from .task_spec import Source

__all__ = ["MappedInputs"]


class MappedInputs:
    """Shapes and masks of the steps' mapped inputs, for one run (see module)."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}  # value files already in memory (the inputs)
        #: Output folder of a finished map -> which elements have a file (flat).
        self._presence: dict[str, np.ndarray] = {}

    def remember(self, path: str, value: Any) -> None:
        """The value of the file ``path`` is ``value`` (already in memory: no load)."""
        self._values[path] = value

    def value(self, src: Source) -> Any:
        if src.path not in self._values:
            self._values[src.path] = load_pickle(Path(src.path))
        return self._values[src.path]

    def shape_of(self, src: Source, arr: ArraySpec) -> tuple[int, ...]:
        if src.kind == "array":
            return src.shape
        return mapped_shape(self.value(src), arr.rank)

    def present_mask(self, src: Source, arr: ArraySpec) -> np.ndarray | None:
        """Where ``arr``'s input has a value, over its ``rank`` mapped axes (None: everywhere)."""
        if src.kind == "array":
            assert src.shape is not None
            size = int(np.prod(src.shape, dtype=np.int64))
            present = self.present(Path(src.path), size).reshape(src.shape)
        else:
            value = self.value(src)
            if not isinstance(value, np.ma.MaskedArray):
                return None
            present = ~np.ma.getmaskarray(value)
        extra = tuple(range(arr.rank, present.ndim))
        return np.asarray(present.any(axis=extra) if extra else present)

    def present(self, folder: Path, size: int) -> np.ndarray:
        """Which of ``size`` elements have a file in a finished map's output ``folder``.

        What the map's end noted (:meth:`note_present`), which every map of this run
        does; else one listing of the folder.  That listing is not made current
        (``files.refresh_folder`` changes the folder, which would set its numbers file
        aside): no map's output reaches here without its end having noted it.
        """
        key = str(folder)
        if key not in self._presence:
            present = np.zeros(size, dtype=bool)
            found = present_indices(folder)
            present[found[found < size]] = True
            self._presence[key] = present
        return self._presence[key]

    def note_present(
        self,
        step_dir: Path,
        outputs: Iterable[str],
        size: int,
        kept: np.ndarray,
        succeeded: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Note which elements of a map that just ended have their files, per output: those
        ``kept`` from before (found in the store and opened) and those that ``succeeded``.

        Not a listing of the folders: on a cluster the workers wrote them through other
        clients of a shared filesystem, and this driver's listing may be a minute behind
        them (NFS ``acdirmax``); a map downstream would take the elements it misses for
        masked.  The tasks' own codes, which came back through Parsl, are the truth.  (A
        failed element has no files: the worker, or ``tasks._lost``, removes them.)
        """
        present = np.zeros(size, dtype=bool)
        present[kept] = True
        present[succeeded] = True
        for out in outputs:
            self._presence[str(step_dir / "return_values" / out)] = present
        return {out: present for out in outputs}

    def holds_every(self, folder: Path, indices: np.ndarray) -> bool:
        """Are ``indices`` every element with a file in ``folder``, as its map's end noted?"""
        present = self._presence.get(str(folder))
        return present is not None and np.array_equal(np.sort(indices), np.flatnonzero(present))

    def submittable(
        self, spec: MapSpec, params: dict[str, Source], shape: tuple[int, ...]
    ) -> np.ndarray:
        """Elements whose mapped inputs all exist (``:`` axes need one present value)."""
        out = np.ones(shape, dtype=bool)
        for arr in spec.inputs:
            present = self.present_mask(params[arr.name], arr)
            if present is None:
                continue
            whole = tuple(k for k, a in enumerate(arr.axes) if a is None)
            if whole:
                present = np.asarray(present.any(axis=whole))
            out &= spec.on_output_grid(arr.name, present, shape)
        return out
