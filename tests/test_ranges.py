"""The "2-17,22-37" compression of element indices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parsl_flows.ranges import common, compress, expand, unique_indices, without


def test_seed_example() -> None:
    indices = [*range(2, 18), *range(22, 38), *range(42, 58), *range(62, 78)]
    assert compress(indices) == "2-17,22-37,42-57,62-77"
    assert expand("2-17,22-37,42-57,62-77") == indices


def test_singletons_and_empty() -> None:
    assert compress([5, 3, 3, 9]) == "3,5,9"
    assert compress([]) == ""
    assert expand("") == []


@given(st.sets(st.integers(min_value=0, max_value=10_000), max_size=300))
def test_round_trip(indices: set[int]) -> None:
    text = compress(indices)
    assert expand(text) == sorted(indices)
    # every run is maximal: no two runs touch
    parts = [p.split("-") for p in text.split(",") if p]
    ends = [int(p[-1]) for p in parts]
    starts = [int(p[0]) for p in parts]
    assert all(s > e + 1 for e, s in zip(ends, starts[1:], strict=False))


@pytest.mark.parametrize("bad", ["1-", "a", "5-3", "1-2-3"])
def test_bad_text(bad: str) -> None:
    with pytest.raises(ValueError, match="bad index range"):
        expand(bad)


def test_negative_index_rejected() -> None:
    with pytest.raises(ValueError, match="never negative"):
        compress([-1, 2])


indices = st.lists(st.integers(0, 50), max_size=40).map(lambda v: np.array(v, dtype=np.int64))


@given(indices, indices)
def test_index_sets_agree_with_numpy(a: np.ndarray, b: np.ndarray) -> None:
    assert unique_indices(a).tolist() == np.unique(a).tolist()
    assert common(a, b).tolist() == np.intersect1d(a, b).tolist()
    assert without(a, b).tolist() == np.setdiff1d(a, b).tolist()
    assert compress(a) == compress(a.tolist())
