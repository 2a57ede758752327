"""What a worker task's elements get of their inputs: loaded once per task, kept for the next.

Part of the worker side (:mod:`parsl_flows.engine.worker`).  The keys of each element's
items in each mapped input are worked out for the whole task at once, with numpy; a map
output is read from its numbers file, else from its task files, each read once per task.

This module is imported on workers: it must stay light and importable everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..mapspec import MapSpec
from ..numbers_file import KnownNumbers, read_numbers
from ..shapes import as_element_array, as_mapped_array
from ..store import FileBasedObjectArray, load_pickle
from .task_spec import Source, TaskSpec

__all__ = ["cached_load", "mapped_getters", "whole"]


# Workers are long-lived processes: keep recently used steps and inputs in memory so a
# task of many elements, or many tasks of one map, load them once.
_CACHE: dict[tuple[str, float], Any] = {}
_CACHE_LIMIT = 16


def _cached(key: tuple[str, float], make: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_LIMIT:  # evict the oldest entry
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = make()
    return _CACHE[key]


def cached_load(path: str) -> Any:
    return _cached((path, os.stat(path).st_mtime), lambda: load_pickle(Path(path)))


def _mapped_array(path: str, rank: int, whole_items: bool) -> np.ndarray:
    """The value in ``path`` as an array of ``rank`` mapped axes, kept for later tasks.

    ``whole_items``: each element takes one item, which keeps its own type (a float of a
    list stays a float); else slices are taken, of a numeric array where it can be one.
    """
    key = (f"{path}#mapped{rank}{'items' if whole_items else ''}", os.stat(path).st_mtime)
    convert = as_element_array if whole_items else as_mapped_array
    arr: np.ndarray = _cached(key, lambda: convert(cached_load(path), rank))
    return arr


def whole(source: Source) -> Any:
    if source.kind == "array":
        return FileBasedObjectArray(source.path, source.shape)
    return cached_load(source.path)


def mapped_getters(task: TaskSpec, spec: MapSpec | None) -> list[tuple[str, Callable[[int], Any]]]:
    """For each mapped input, a function from an element's position in the task to what
    that element gets.

    Worked out for the whole task at once, with numpy: the flat index of each element's
    item in each input.  A value input is made an array once per task (and kept for the
    next tasks); a map output stays a ``FileBasedObjectArray``, read one file per element.
    An input of which elements take whole slices (an axis the output does not have) is
    indexed by each element's key instead.
    """
    if spec is None:
        return []
    axes = np.unravel_index(np.asarray(task.indices, dtype=np.int64), task.shape)
    position = {index: k for k, index in enumerate(spec.output_indices)}
    keys: list[tuple[int, ...]] | None = None
    getters: list[tuple[str, Callable[[int], Any]]] = []
    for arr in spec.inputs:
        source = task.sources[arr.name]
        picks = tuple(None if a is None else position[a] for a in arr.axes)
        whole_items = None not in picks
        data: Any = (
            FileBasedObjectArray(source.path, source.shape)
            if source.kind == "array"
            else _mapped_array(source.path, arr.rank, whole_items)
        )
        if not whole_items:
            if keys is None:
                keys = list(zip(*(a.tolist() for a in axes), strict=True))
            getters.append((arr.name, _KeyPick(data, picks, keys)))
            continue
        axis_of = [p for p in picks if p is not None]
        shape = tuple(data.shape[: len(axis_of)])
        flat = np.asarray(np.ravel_multi_index(tuple(axes[p] for p in axis_of), shape)).tolist()
        if isinstance(data, FileBasedObjectArray):
            getters.append((arr.name, _pick_from_map(data, flat)))
        else:
            items = data.reshape(-1, *data.shape[len(axis_of) :])
            getters.append((arr.name, _ItemPick(items.__getitem__, flat)))
    return getters


class _ItemPick:
    """What an element gets of an input it takes one item of: ``get(flat[k])``."""

    def __init__(self, get: Callable[[int], Any], flat: list[int]) -> None:
        self.get = get
        self.flat = flat

    def __call__(self, k: int) -> Any:
        return self.get(self.flat[k])


def _pick_from_map(data: FileBasedObjectArray, flat: list[int]) -> Callable[[int], Any]:
    """Items of a map output: from the map's numbers file (``numbers_file``) where it
    holds them, else read for the whole task at once, each task file once."""
    known = read_numbers(data.folder, data.size)
    if known is not None:
        return _KnownPick(known, flat, data._load)
    return _ItemPick(data.load_many(flat).__getitem__, list(range(len(flat))))


class _KnownPick:
    """An element's item of a map output with a numbers file: from the file's values, or
    (an element it does not hold, reused from an earlier run, say) from its task file."""

    def __init__(self, known: KnownNumbers, flat: list[int], load: Callable[[int], Any]) -> None:
        where = known.position[np.asarray(flat, dtype=np.int64)]
        held = where >= 0
        self.items: list[Any] = [_UNKNOWN] * len(flat)
        for k, value in zip(
            np.flatnonzero(held).tolist(), known.elements(where[held]), strict=True
        ):
            self.items[k] = value
        self.flat, self.load = flat, load

    def __call__(self, k: int) -> Any:
        value = self.items[k]
        return self.load(self.flat[k]) if value is _UNKNOWN else value


_UNKNOWN = object()


class _KeyPick:
    """What an element gets of an input it takes slices of: the input at the element's key.

    ``picks[j]`` is the output axis that gives the input's axis ``j`` (None: all of it).
    """

    def __init__(
        self, data: Any, picks: tuple[int | None, ...], keys: list[tuple[int, ...]]
    ) -> None:
        self.data = data
        self.picks = picks
        self.keys = keys

    def __call__(self, k: int) -> Any:
        key = self.keys[k]
        return self.data[tuple(slice(None) if p is None else key[p] for p in self.picks)]
