"""Compress sets of element indices to ``"2-17,22-37"`` text and back.

This is how a step records which elements it submitted (the seed notebook reads Slurm's
``--array`` option; we keep the same compact form).

>>> compress([2, 3, 4, 7, 9, 10])
'2-4,7,9-10'
>>> expand('2-4,7,9-10')
[2, 3, 4, 7, 9, 10]
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["compress", "expand"]


def compress(indices: Iterable[int]) -> str:
    """Sorted, de-duplicated indices as comma-separated runs (``""`` for none)."""
    arr = np.unique(np.fromiter((int(i) for i in indices), dtype=np.int64))
    if arr.size == 0:
        return ""
    if arr[0] < 0:
        raise ValueError(f"element indices are never negative, got {int(arr[0])}")
    breaks = np.flatnonzero(np.diff(arr) != 1)
    starts = np.concatenate(([arr[0]], arr[breaks + 1]))
    ends = np.concatenate((arr[breaks], [arr[-1]]))
    return ",".join(str(s) if s == e else f"{s}-{e}" for s, e in zip(starts, ends, strict=True))


def expand(text: str) -> list[int]:
    """The indices that ``compress`` wrote as ``text``."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            start, end = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(
                f"bad index range {part!r} in {text!r}; expected 'N' or 'N-M'"
            ) from None
        if end < start:
            raise ValueError(f"bad index range {part!r} in {text!r}: end before start")
        out.extend(range(start, end + 1))
    return out
