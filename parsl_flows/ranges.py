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

__all__ = ["common", "compress", "expand", "unique_indices", "without"]


def compress(indices: Iterable[int]) -> str:
    """Sorted, de-duplicated indices as comma-separated runs (``""`` for none)."""
    if isinstance(indices, np.ndarray):
        arr = unique_indices(indices.astype(np.int64, copy=False).ravel())
    else:
        arr = unique_indices(np.fromiter((int(i) for i in indices), dtype=np.int64))
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


# Sets of element indices as sorted int64 arrays.  numpy's own ``unique``, ``intersect1d``
# and ``setdiff1d`` took about a second each for a million indices here (numpy 2.4), ten
# of them for a map of 1,000,000 elements before its first task; a sort and ``isin``
# (which picks a lookup table for integers) take milliseconds.


def unique_indices(indices: np.ndarray) -> np.ndarray:
    """``indices`` sorted, each once.

    >>> unique_indices(np.array([5, 1, 5, 3])).tolist()
    [1, 3, 5]
    """
    s = np.sort(np.asarray(indices, dtype=np.int64).ravel())
    if s.size < 2:
        return s
    return s[np.concatenate(([True], s[1:] != s[:-1]))]


def common(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The indices in both ``a`` and ``b``, sorted (as ``np.intersect1d``).

    >>> common(np.array([4, 1, 2]), np.array([2, 4, 9])).tolist()
    [2, 4]
    """
    a = unique_indices(a)
    return a[np.isin(a, np.asarray(b, dtype=np.int64))]


def without(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The indices of ``a`` not in ``b``, sorted (as ``np.setdiff1d``).

    >>> without(np.array([4, 1, 2]), np.array([2])).tolist()
    [1, 4]
    """
    a = unique_indices(a)
    return a[~np.isin(a, np.asarray(b, dtype=np.int64))]
