"""Take finished results from an earlier run instead of computing them again.

A restart (``run.get_builder_restart()``) remembers the run it came from.  For each step,
elements whose key (code + inputs, see ``hashing``) matches an element that exists in
that run are taken by hard links, so the new run is complete on its own and the old one
can be deleted.  A map's task file is linked whole, once, as ``reused-<run>-<file>``,
and the new run's index says which of its elements count, and where (the file's own
``indices`` are the earlier run's); an element in its own file (a run written before
task files, a plain call) is linked as the new element's file.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..element_folders import NONE, OWN, Locations, locate
from ..files import write_bytes
from ..ranges import common, compress, without
from ..status import RunRecord
from ..store import element_path, file_exists, is_intact, present_indices
from .hashing import KEY_DTYPE

if TYPE_CHECKING:
    from .step_index import StepIndex

__all__ = [
    "Reuse",
    "check_reuse",
    "link_file",
    "matching_elements",
    "origin_step_dir",
    "present_elements",
    "reusable_elements",
    "save_keys",
    "search_sorted",
    "say_damaged",
    "take_from_run",
    "whole_elements",
]

KEYS_FILE = "keys.npy"

#: What a run may reuse: True, results of the run a restart comes from; "store", those and
#: any earlier run's of the store; False, nothing.
Reuse = bool | Literal["store"]


def check_reuse(reuse: object) -> None:
    """``reuse`` is True, False or "store"; anything else is refused before any work."""
    if reuse is True or reuse is False or reuse == "store":
        return
    raise ValueError(
        f"reuse={reuse!r} is not a choice: reuse=True (the default) takes results of the run "
        "a restart comes from, reuse='store' those of any earlier run of the store too, "
        "reuse=False none"
    )


def link_file(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (copy across filesystems); replaces ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def origin_step_dir(origin_run: Path, step_name: str) -> Path | None:
    """The directory of the step called ``step_name`` in an earlier run, if it has one."""
    try:
        steps = RunRecord.load(origin_run).steps
    except (FileNotFoundError, ValueError):
        return None
    for d in steps:
        if d.split("-", 1)[1] == step_name:
            return origin_run / "steps" / d
    return None


class KeyTable:
    """Keys of a step's elements that have every output, sorted, with their elements: a
    lookup of many keys is one binary search in numpy (``find``), not a loop in Python."""

    def __init__(self, keys: np.ndarray, elements: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=KEY_DTYPE).reshape(-1)
        elements = np.asarray(elements, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        self.keys, self.elements = keys[order], elements[order]

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, wanted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of ``wanted_keys`` are in the table (a bool mask), and their elements."""
        hit, pos = search_sorted(self.keys, wanted_keys)
        return hit, self.elements[pos]


def search_sorted(keys: np.ndarray, wanted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``wanted_keys`` are in the sorted ``keys`` (a bool mask), and where."""
    wanted_keys = np.asarray(wanted_keys, dtype=KEY_DTYPE).reshape(-1)
    if not len(keys) or not len(wanted_keys):
        return np.zeros(len(wanted_keys), dtype=bool), np.empty(0, dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, wanted_keys), len(keys) - 1)
    hit = keys[pos] == wanted_keys
    return hit, pos[hit]


def reusable_elements(
    origin_dir: Path,
    outputs: list[str],
    keys: np.ndarray,
    wanted: np.ndarray,
    damaged: list[Path] | None = None,
) -> tuple[list[tuple[int, int]], dict[str, Locations]]:
    """``(new index, old index)`` pairs for wanted elements whose key exists in ``origin_dir``,
    and where the old elements are, per output; the damaged files met are added to
    ``damaged``.

    Only old elements that have every output, each file whole, are used: a damaged file
    is computed again rather than copied.  The earlier run's folders are read as this
    client sees them, not refreshed (that would write into another run): an element a
    stale listing misses is computed instead of reused, and one it lists that is gone
    fails ``is_intact``, which opens it, and is computed too.
    """
    table, where = _old_elements(origin_dir, outputs)
    if not len(table):
        return [], where
    wanted = np.asarray(wanted, dtype=np.int64)
    hit, old = table.find(np.atleast_1d(keys).reshape(-1)[wanted])
    return whole_elements(where, wanted[hit], old, damaged), where


def whole_elements(
    where: dict[str, Locations],
    new: np.ndarray,
    old: np.ndarray,
    damaged: list[Path] | None = None,
) -> list[tuple[int, int]]:
    """The ``(new, old)`` pairs whose old element has every output in a whole file (each
    file opened once, see ``files.is_intact``); damaged files met go to ``damaged``.
    Whole arrays at a time: a task file holds many elements, checked once for them all."""
    new, old = np.asarray(new, dtype=np.int64), np.asarray(old, dtype=np.int64)
    ok = np.ones(len(old), dtype=bool)
    bad: list[Path] = []
    for loc in where.values():
        if not loc.size:
            ok[:] = False
            continue
        files = np.where(old < loc.size, loc.file[np.minimum(old, loc.size - 1)], NONE)
        ok &= files != NONE
        for k in np.unique(files[files >= 0]).tolist():
            path = loc.folder / loc.names[k]
            if not is_intact(path):
                ok[files == k] = False
                bad.append(path)
        for j in np.flatnonzero(ok & (files == OWN)).tolist():
            path = element_path(loc.folder, int(old[j]))
            if not is_intact(path):
                ok[j] = False
                bad.append(path)
    if damaged is not None:
        damaged.extend(bad)
    return list(zip(new[ok].tolist(), old[ok].tolist(), strict=True))


def save_keys(step_dir: Path, keys: np.ndarray) -> None:
    """Write a step's element keys (``keys.npy``) whole or not at all."""
    buffer = io.BytesIO()
    np.save(buffer, keys)
    write_bytes(step_dir / KEYS_FILE, buffer.getvalue(), make_folder=False)


def step_keys(step_dir: Path) -> np.ndarray | None:
    """The reuse keys of a step's elements (flat, C order), or None (none were kept)."""
    try:
        return np.atleast_1d(np.load(step_dir / KEYS_FILE)).reshape(-1)
    except (FileNotFoundError, ValueError, OSError, EOFError):
        return None


def _old_elements(origin_dir: Path, outputs: list[str]) -> tuple[KeyTable, dict[str, Locations]]:
    """The earlier run's elements that have every output, by key, and where they are."""
    flat_old = step_keys(origin_dir)
    if flat_old is None:
        return KeyTable(np.empty(0, KEY_DTYPE), np.empty(0, np.int64)), {}
    where, present = complete_elements(origin_dir, outputs, flat_old.size)
    present = present[present < flat_old.size]
    return KeyTable(flat_old[present], present), where


def complete_elements(
    step_dir: Path, outputs: Iterable[str], size: int
) -> tuple[dict[str, Locations], np.ndarray]:
    """Where a step's outputs are, and the elements that have every one of them."""
    where = {out: locate(step_dir / "return_values" / out, size) for out in outputs}
    present: np.ndarray | None = None
    for loc in where.values():
        here = loc.present()
        present = here if present is None else common(present, here)
    return where, (np.empty(0, np.int64) if present is None else present)


def matching_elements(
    origin_dir: Path, outputs: list[str], keys: np.ndarray, wanted: np.ndarray
) -> np.ndarray:
    """The wanted elements an earlier run has under the same key, as far as its index and
    listings say (no file is opened: what a preview counts as reusable)."""
    table, _ = _old_elements(origin_dir, outputs)
    wanted = np.asarray(wanted, dtype=np.int64)
    hit, _ = table.find(np.atleast_1d(keys).reshape(-1)[wanted])
    return wanted[hit]


def link_elements(
    origin_dir: Path,
    step_dir: Path,
    where: dict[str, Locations],
    pairs: list[tuple[int, int]],
    index: StepIndex | None = None,
) -> None:
    """Link the ``(new, old)`` elements into ``step_dir`` (see module); the index, if any,
    records where they are, and is written at once (a reused task file's own ``indices``
    are the earlier run's: only the index may place its elements)."""
    if not pairs:
        return
    new = np.array([n for n, _ in pairs], dtype=np.int64)
    old = np.array([o for _, o in pairs], dtype=np.int64)
    for out, loc in where.items():
        folder = step_dir / "return_values" / out
        files = loc.file[old]
        for j in np.flatnonzero(files == OWN).tolist():
            link_file(element_path(loc.folder, int(old[j])), element_path(folder, int(new[j])))
        if index is not None:
            index.values[out].put_own(new[files == OWN])
        for k in np.unique(files[files >= 0]).tolist():
            name = f"reused-{origin_dir.parent.parent.name}-{loc.names[k]}"
            link_file(loc.folder / loc.names[k], folder / name)
            if index is None:
                raise ValueError("elements in task files are reused into a map only")
            these = files == k
            index.values[out].put(name, new[these], loc.slot[old[these]])
    if index is not None:
        index.reused(origin_dir, new, old)  # with the provenance that run recorded
        index.save()


def has_every_output(step_dir: Path, outputs: Iterable[str], n: int) -> bool:
    """Has element ``n`` a file for every output in the store (one ``open`` each)?

    Opened, not ``stat``-ed: on a shared filesystem a cached ``stat`` can still find a file
    another node removed.  A file another node just wrote may be missed (see
    ``files.file_exists``): the element then reads as not done, never as failed.
    """
    return all(file_exists(element_path(step_dir / "return_values" / o, n)) for o in outputs)


def present_elements(step_dir: Path, outputs: Iterable[str], wanted: np.ndarray) -> np.ndarray:
    """The wanted elements that have every output in the store (one listing per output).

    What a resume starts from, when no Parsl result says what the dead driver's tasks did.
    Each listing is made current first (``files.refresh_folder``); still, on a shared
    filesystem it may miss a file another node wrote moments ago, and then that element is
    computed again (never marked failed), and it may list a file since removed, which the
    caller finds when it opens each file it keeps (``drop_damaged``).
    """
    have = wanted
    for out in outputs:
        have = common(have, present_indices(step_dir / "return_values" / out, fresh=True))
    return have


def take_from_run(
    origin_run: Path,
    step_name: str,
    outputs: list[str],
    step_dir: Path,
    keys: np.ndarray,
    wanted: np.ndarray,
    index: StepIndex | None = None,
    log: Callable[[str], None] | None = None,
) -> int | None:
    """Link the wanted elements whose keys match into ``step_dir``; how many (None: no step).

    ``index``: a map's (``StepIndex``), which says what it has and takes what is linked.
    ``log`` is told of each damaged file of the earlier run, and the elements it held:
    those are computed again."""
    origin = origin_step_dir(origin_run, step_name)
    if origin is None:
        return None
    have = index.present() if index is not None else present_elements(step_dir, outputs, wanted)
    missing = without(wanted, have)
    damaged: list[Path] = []
    pairs, where = reusable_elements(origin, outputs, np.atleast_1d(keys), missing, damaged)
    say_damaged(damaged, where, log)
    link_elements(origin, step_dir, where, pairs, index)
    return len(pairs)


def say_damaged(
    damaged: list[Path], where: dict[str, Locations], log: Callable[[str], None] | None
) -> None:
    """Tell ``log`` of each damaged file of an earlier run met, and the elements it held."""
    for path in damaged:
        loc = where.get(path.parent.name)
        held = loc.held_by(path.name) if loc is not None else np.empty(0, np.int64)
        what = f"elements {compress(held)} of that run" if len(held) else "its element"
        if log is not None:
            log(f"{path} is damaged (truncated or overwritten): {what} are computed again")
