"""Take finished results from an earlier run instead of computing them again.

A restart (``run.get_builder_restart()``) remembers the run it came from.  For each step,
elements whose key (code + inputs, see ``hashing``) matches an element that exists in
that run are hard-linked into the new run's directory, so the new run is complete on its
own and the old one can be deleted.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..ranges import common, without
from ..status import RunRecord
from ..store import element_path, file_exists, is_intact, present_indices

__all__ = [
    "link_file",
    "origin_step_dir",
    "present_elements",
    "reusable_elements",
    "take_from_run",
]

KEYS_FILE = "keys.npy"


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


def reusable_elements(
    origin_dir: Path, outputs: list[str], keys: np.ndarray, wanted: np.ndarray
) -> list[tuple[int, int]]:
    """``(new index, old index)`` pairs for wanted elements whose key exists in ``origin_dir``.

    Only old elements that have every output, each file whole, are used: a damaged file
    is computed again rather than copied.  The earlier run's folders are listed as this
    client sees them, not refreshed (that would write into another run): an element a
    stale listing misses is computed instead of reused, and one it lists that is gone
    fails ``is_intact``, which opens it, and is computed too.
    """
    try:
        old_keys = np.load(origin_dir / KEYS_FILE)
    except (FileNotFoundError, ValueError, OSError):
        return []
    present: set[int] | None = None
    for out in outputs:
        here = set(present_indices(origin_dir / "return_values" / out).tolist())
        present = here if present is None else present & here
    if not present:
        return []
    flat_old = old_keys.reshape(-1)
    by_key = {bytes(flat_old[i]): i for i in present if i < flat_old.size}
    flat_new = keys.reshape(-1)
    pairs = []
    for n in wanted.tolist():
        old = by_key.get(bytes(flat_new[n]))
        if old is not None and all(
            is_intact(element_path(origin_dir / "return_values" / out, old)) for out in outputs
        ):
            pairs.append((n, old))
    return pairs


def link_elements(
    origin_dir: Path, step_dir: Path, outputs: list[str], pairs: list[tuple[int, int]]
) -> None:
    for new, old in pairs:
        for out in outputs:
            link_file(
                element_path(origin_dir / "return_values" / out, old),
                element_path(step_dir / "return_values" / out, new),
            )


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
) -> int | None:
    """Link the wanted elements whose keys match into ``step_dir``; how many (None: no step)."""
    origin = origin_step_dir(origin_run, step_name)
    if origin is None:
        return None
    missing = without(wanted, present_elements(step_dir, outputs, wanted))
    pairs = reusable_elements(origin, outputs, np.atleast_1d(keys), missing)
    link_elements(origin, step_dir, outputs, pairs)
    return len(pairs)
