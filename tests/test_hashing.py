"""Reuse keys: what changes a key and what does not (the vectorized paths included)."""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.engine.hashing import KeyBook, code_key, element_keys_of_value, value_key
from parsl_flows.engine.worker import Source
from parsl_flows.workflow import build, map_, new_workflow


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


# -- the same code, the same key: from its module, a pickled plan, a fresh process --------
#
# A plan is pickled into the store (cloudpickle) and a restart or resume reads it back.
# Functions of a notebook or script (``__main__``) travel by value: the copy that comes
# back has only the globals its code loads as globals, so a key must not depend on
# others.  Functions of a module travel by name; a fresh process imports them again, so
# a key must not depend on addresses, or on the order of a set of strings.

NOTEBOOK = """
import functools

import numpy
import numpy as np

from parsl_flows import step

SCALE = 3
LABELS = {"alpha", "beta", "gamma", "delta", "epsilon"}
data = np.arange(3.0)


def total(values):
    return sum(values)


@step(returns="y")
def imports_inside(x):
    import numpy as np

    return np.sum(x) * 2


def reads_attributes(x):
    return x.total() + x.data


def reads_a_set(x):
    return x in LABELS


def membership(x):
    return x in {"alpha", "beta", "gamma", "delta", "epsilon"}


def uses_a_module(x):
    return np.sum(x)


def comprehension(xs):
    return [SCALE * x for x in xs]


def nested(x):
    def inner(y):
        return SCALE * y

    return inner(x)


def len(x):  # shadows the builtin
    return 0


def shadowed(x):
    return len(x)


def with_default(x, op=total):
    return op(x)


def add(x, y):
    return x + y


partial_step = functools.partial(add, y=SCALE)


class Model:
    def __init__(self, k):
        self.k = k

    def run(self, x):
        return self.k * x

    def __call__(self, x):
        return self.k * x


bound = Model(2).run
instance = Model(2)
"""

KEYED = [
    "imports_inside",
    "reads_attributes",
    "reads_a_set",
    "membership",
    "uses_a_module",
    "comprehension",
    "nested",
    "shadowed",
    "with_default",
    "partial_step",
    "bound",
    "instance",
]


def notebook(source: str = NOTEBOOK) -> dict[str, Any]:
    """Run ``source`` as a notebook does: in a namespace named ``__main__``, so its
    functions are pickled by value."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "<notebook>", "exec"), namespace)
    return namespace


def keys_of(funcs: dict[str, Any]) -> dict[str, str]:
    return {name: (code_key(f)[0] or b"").hex() for name, f in funcs.items()}


@pytest.mark.parametrize("name", KEYED)
def test_a_notebook_function_keeps_its_key_through_the_stores_pickle(name: str) -> None:
    ns = notebook()
    funcs = {n: ns[n] for n in KEYED}
    key = code_key(funcs[name])[0]
    assert key is not None
    copy = cloudpickle.loads(cloudpickle.dumps(funcs[name]))
    assert code_key(copy)[0] == key
    assert code_key(cloudpickle.loads(cloudpickle.dumps(copy)))[0] == key  # a restart's restart
    # A plan pickles its steps together: the copies share one dict of globals.
    plan = cloudpickle.loads(cloudpickle.dumps(funcs))
    assert code_key(plan[name])[0] == key


def test_a_function_importing_a_module_its_module_also_imports_keeps_its_key() -> None:
    # The reported case: `import numpy as np` in the body reads the name "numpy" (an
    # import, not a global); the notebook's own `import numpy` made it count as one.
    f = notebook()["imports_inside"]
    assert "numpy" in f.callable.__code__.co_names and "numpy" in f.callable.__globals__
    assert code_key(cloudpickle.loads(cloudpickle.dumps(f)))[0] == code_key(f)[0]


FRESH = """
import json, sys
import cloudpickle
from parsl_flows.engine.hashing import code_key
names = sys.argv[3].split(",")
if sys.argv[1] == "import":
    sys.path.insert(0, sys.argv[2])
    import keyed_steps
    funcs = {n: getattr(keyed_steps, n) for n in names}
else:
    with open(sys.argv[2], "rb") as f:
        funcs = cloudpickle.load(f)
print(json.dumps({n: (code_key(funcs[n])[0] or b"").hex() for n in names}))
"""


def keys_in_a_fresh_process(how: str, where: Path, seed: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    out = subprocess.run(
        [sys.executable, "-c", FRESH, how, str(where), ",".join(KEYED)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


def test_a_module_function_has_the_same_key_in_a_fresh_process(tmp_path, monkeypatch) -> None:
    (tmp_path / "keyed_steps.py").write_text(NOTEBOOK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "keyed_steps", raising=False)
    module = importlib.import_module("keyed_steps")
    monkeypatch.delitem(sys.modules, "keyed_steps")
    here = keys_of({n: getattr(module, n) for n in KEYED})
    for seed in (1, 2):  # string hashes, so the order of a set, differ between the two
        assert keys_in_a_fresh_process("import", tmp_path, seed) == here


def test_a_notebook_function_has_the_same_key_in_the_process_that_restarts_it(
    tmp_path,
) -> None:
    ns = notebook()
    funcs = {n: ns[n] for n in KEYED}
    plan = tmp_path / "plan.pickle"
    plan.write_bytes(cloudpickle.dumps(funcs))
    here = keys_of(funcs)
    for seed in (1, 2):
        assert keys_in_a_fresh_process("load", plan, seed) == here


def test_a_restart_of_a_notebook_step_reuses_every_element(thread_env, store) -> None:
    twice = notebook()["imports_inside"]
    flow = new_workflow("nb").then(map_(twice, "x[i] -> y[i]"))
    first = flows.run(build(flow.on(thread_env), x=[1, 2, 3]), store=store)
    assert first.exit_code == 0, first.log()
    again = flows.run(first.get_builder_restart(), store=store)
    record = again.step("imports_inside").record
    assert (record.n_reused, record.n_submitted) == (3, 0)
    assert again.outputs.return_values.y.to_array().tolist() == [2, 4, 6]


# -- what a key follows ------------------------------------------------------------------


def test_code_keys_follow_each_function_made_by_one_factory() -> None:
    # Two helpers wrapped by one decorator share one code object, not one key.
    source = """
import functools

def logged(fn):
    @functools.wraps(fn)
    def wrapper(x):
        return fn(x)
    return wrapper

@logged
def first(x):
    return x + 1

@logged
def second(x):
    return x + {n}

def both(x):
    return first(x) + second(x)
"""
    keys = [code_key(notebook(source.format(n=n))["both"])[0] for n in (2, 3)]
    assert keys[0] != keys[1]


def test_code_keys_follow_what_a_partial_binds_and_calls() -> None:
    ns = notebook()
    partial = ns["partial_step"]
    assert code_key(partial)[0] == code_key(functools.partial(ns["add"], y=3))[0]
    assert code_key(partial)[0] != code_key(functools.partial(ns["add"], y=4))[0]
    changed = notebook(NOTEBOOK.replace("return x + y", "return x - y"))["partial_step"]
    assert code_key(partial)[0] != code_key(changed)[0]


def test_code_keys_follow_the_object_a_method_is_bound_to() -> None:
    model = notebook()["Model"]
    assert code_key(model(2).run)[0] == code_key(model(2).run)[0]
    assert code_key(model(2).run)[0] != code_key(model(3).run)[0]
    assert code_key(model(2))[0] != code_key(model(3))[0]  # a callable object


def test_code_keys_follow_the_code_of_a_default_function_not_where_it_is() -> None:
    key = code_key(notebook()["with_default"])[0]
    changed = notebook(NOTEBOOK.replace("return sum(values)", "return max(values)"))
    assert code_key(changed["with_default"])[0] != key
    moved = notebook(NOTEBOOK.replace("def total", "\n\ndef total"))  # two lines down
    assert code_key(moved["with_default"])[0] == key


# Keys already in stores: a change of how keys are made must leave these alone, or every
# earlier run's results stop being reused.  (Bytecode differs between Python versions.)

PINNED_SCALE = 3


def _pinned_helper(x):
    return PINNED_SCALE * x


@step(returns="y")
def pinned(x, offset=1, *, power=2):
    def inner(v):
        return _pinned_helper(v) ** power

    return [inner(v) + offset for v in np.atleast_1d(x)]


def _make_pinned_closure(k):
    def scaled(x):
        return pinned(x) * k

    return scaled


PINNED = {"pinned": pinned, "closure": _make_pinned_closure(5)}
PINNED_KEYS = {
    "pinned": "cc52748b23c2a56908dba38f75a004be",
    "closure": "39542dde873a67c35049ad2dae11c96d",
}


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="keys pinned on Python 3.11")
@pytest.mark.parametrize("name", sorted(PINNED))
def test_keys_of_stores_already_written_stay_the_same(name: str) -> None:
    assert (code_key(PINNED[name])[0] or b"").hex() == PINNED_KEYS[name]
