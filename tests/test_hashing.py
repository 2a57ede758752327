"""Reuse keys: what changes a key and what does not (the vectorized paths included)."""

from __future__ import annotations

import numpy as np

from parsl_flows import step
from parsl_flows.engine.hashing import KeyBook, code_key, element_keys_of_value, value_key
from parsl_flows.engine.worker import Source
from parsl_flows.workflow import map_


def test_numeric_element_keys_are_distinct_and_know_their_dtype():
    floats = element_keys_of_value(np.array([0.0, 1.0, -0.0, 2.5]), 1)
    assert len(set(floats.tolist())) == 4
    ints = element_keys_of_value(np.array([0, 1]), 1)
    assert floats[0] != ints[0]  # 0.0 and 0 have the same bits
    rows = element_keys_of_value(np.array([[1, 2], [1, 3]], dtype=np.int32), 1)
    assert rows[0] != rows[1]  # an element that is a small row
    objects = element_keys_of_value(np.array([(1, 2), "a"], dtype=object), 1)
    assert objects[0] != objects[1]


@step(returns="z")
def pair(x, y):
    return 0


def _keys(spec: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    node = map_(pair, spec)
    book = KeyBook()
    values = {"x": x, "y": y}
    for name, v in values.items():
        book.value[name], _ = value_key(v)
    shape = node.mapspec.shape({"x": x.shape, "y": y.shape})
    params = {n: Source("value", n) for n in values}
    keys, why = book.node_keys(node, params, shape, lambda s: values[s.path])
    assert why == ""
    return keys


def test_element_keys_follow_only_the_values_each_element_reads():
    x, y = np.arange(12.0).reshape(4, 3), np.array([5, 6])
    keys = _keys("x[i, :], y[j] -> z[i, j]", x, y)
    assert keys.shape == (4, 2) and len(set(keys.ravel().tolist())) == 8
    x2 = x.copy()
    x2[2, 1] = 99.0
    changed = keys != _keys("x[i, :], y[j] -> z[i, j]", x2, y)
    assert changed.tolist() == [[False, False], [False, False], [True, True], [False, False]]
    y2 = np.array([5, 7])
    changed = keys != _keys("x[i, :], y[j] -> z[i, j]", x, y2)
    assert changed[:, 0].tolist() == [False] * 4 and changed[:, 1].all()


def test_code_keys_follow_the_code_and_what_it_calls():
    def a(x):
        return x + 1

    def b(x):
        return x + 2

    assert code_key(a)[0] == code_key(a)[0]
    assert code_key(a)[0] != code_key(b)[0]
