"""Fuzzing: junk and near misses never crash the parser, build() or the command line's readers.

Each test hands one entry point random input (random text, grammar-shaped token soup,
valid input with a few characters changed, odd Python values) and checks that it either
works or fails with the error the user is promised, carrying a message that names the
culprit: :class:`MapSpecError` (a ``ValueError``) quoting the spec, ``ValueError`` or
``TypeError`` naming the workflow or step from ``build()``, and :class:`UsageError`
naming the file, the input or the ``--set`` from the command line's input readers.

The crashes these tests found are kept as ``@example`` cases and plain tests, so they
run every time whatever hypothesis draws.
"""

from __future__ import annotations

import json
import operator
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.cli.inputs import UsageError, expand, load_inputs, parse_set
from parsl_flows.mapspec import ArraySpec, MapSpec, MapSpecError
from parsl_flows.workflow import as_mapped_array, build, first, map_, mapped_shape

# PARSL_FLOWS_FUZZ_SCALE=50 makes a long fuzzing session of the same tests.
SCALE = float(os.environ.get("PARSL_FLOWS_FUZZ_SCALE", "1"))


def examples(n: int) -> settings:
    """``n`` examples (times the scale), no deadline: this must not flake on a busy machine.

    The folder fixture is module-scoped, so it is safe to share between examples.
    """
    return settings(
        max_examples=max(1, round(n * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- mapspecs -----------------------------------------------------------------------------------

# Whitespace the grammar allows between tokens, including what str.isspace calls space.
SPACES = ["", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x85", "\xa0", "\u2028", "\u3000"]
NAMES = ["x", "y", "z", "i", "j", "k", "_", "a1", "V_left", "__x9"]
TOKENS = [
    *NAMES,
    *SPACES,
    *["[", "]", ",", ":", "->", "-", ">", "<-", "=>", "\u2192", "[]", "::", "...", "'", '"'],
    *["1x", "x-y", "\u00e9", "\u00df", "\u0131", "x\u0301", "\x00", "\ud800", "\U0001f600", "\\"],
]
TOKEN_SOUP = st.lists(st.sampled_from(TOKENS), max_size=25).map("".join)
IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,4}", fullmatch=True)
SPACE = st.sampled_from(SPACES)


@st.composite
def valid_specs(draw: st.DrawFn) -> MapSpec:
    """Specs the grammar accepts: each index in some input, the outputs carry all of them."""
    indices = draw(st.lists(IDENT, min_size=1, max_size=3, unique=True))
    n_in, n_out = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    names = draw(st.lists(IDENT, min_size=n_in + n_out, max_size=n_in + n_out, unique=True))
    axes: list[list[str | None]] = [[] for _ in range(n_in)]
    for index in indices:
        for k in draw(st.sets(st.integers(0, n_in - 1), min_size=1)):
            axes[k].append(index)
    for own in axes:
        own[:] = draw(st.permutations(own))
        for _ in range(draw(st.integers(0 if own else 1, 2))):
            own.insert(draw(st.integers(0, len(own))), None)
    out_axes = tuple(draw(st.permutations(indices)))
    return MapSpec(
        tuple(ArraySpec(n, tuple(a)) for n, a in zip(names, axes, strict=False)),
        tuple(ArraySpec(n, out_axes) for n in names[n_in:]),
    )


@st.composite
def spec_texts(draw: st.DrawFn) -> tuple[MapSpec, str]:
    """A valid spec, written with random (also non-ASCII) whitespace between its tokens."""
    spec = draw(valid_specs())

    def arrays(arrs: tuple[ArraySpec, ...]) -> str:
        written = []
        for a in arrs:
            axes = ",".join(draw(SPACE) + (":" if x is None else x) + draw(SPACE) for x in a.axes)
            written.append(draw(SPACE) + f"{a.name}[{axes}]" + draw(SPACE))
        return ",".join(written)

    return spec, draw(SPACE) + arrays(spec.inputs) + "->" + arrays(spec.outputs) + draw(SPACE)


@st.composite
def near_misses(draw: st.DrawFn) -> str:
    """A valid spec with one to three characters deleted, inserted, replaced or doubled."""
    _, text = draw(spec_texts())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "replace", "double"]))
        token = draw(st.sampled_from(TOKENS) | st.characters())
        if edit == "delete":
            text = text[:at] + text[at + 1 :]
        elif edit == "insert":
            text = text[:at] + token + text[at:]
        elif edit == "replace":
            text = text[:at] + token + text[at + 1 :]
        else:
            text = text[:at] + text[at:] * 2
    return text


def assert_quotes_spec(error: MapSpecError, text: str) -> None:
    message = str(error)
    assert isinstance(error, ValueError)
    assert message.strip(), f"empty message for {text!r}"
    assert text in message or repr(text) in message, f"{message!r} does not quote {text!r}"


@examples(100)
@given(st.one_of(TOKEN_SOUP, st.text(max_size=40), near_misses()))
@example("x[i] -> y[i]")
@example("x[i]] -> y[i]")
@example("x[\u0131] -> y[\u0131]")  # dotless i: isidentifier() yes, an ASCII name no
@example("\x85x[i]->y[i]\u3000")
@example("x[i] -> y[i], ")
@example("")
def test_parser_parses_or_quotes_the_spec(text: str) -> None:
    try:
        spec = MapSpec.from_string(text)
    except MapSpecError as e:
        assert_quotes_spec(e, text)
        return
    assert MapSpec.from_string(str(spec)) == spec
    assert str(MapSpec.from_string(str(spec))) == str(spec)


@examples(40)
@given(spec_texts())
def test_whitespace_written_specs_round_trip(spec_and_text: tuple[MapSpec, str]) -> None:
    spec, text = spec_and_text
    assert MapSpec.from_string(text) == spec
    assert MapSpec.from_string(str(spec)) == spec


@examples(30)
@given(st.one_of(st.none(), st.integers(), st.binary(max_size=10), st.lists(st.text(max_size=3))))
def test_parser_refuses_what_is_not_text(value: Any) -> None:
    with pytest.raises(MapSpecError, match="a mapspec is a string"):
        MapSpec.from_string(value)


SIZE = st.one_of(
    st.integers(-2, 4),
    st.integers(0, 4).map(np.int64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.text(max_size=2),
)


@st.composite
def shapes_for(draw: st.DrawFn, spec: MapSpec) -> dict[str, tuple[Any, ...]]:
    """Input shapes for ``spec``: consistent ones, then a few entries spoiled at random."""
    sizes = {i: draw(st.integers(0, 4)) for i in spec.output_indices}
    shapes: dict[str, tuple[Any, ...]] = {}
    for arr in spec.inputs:
        shape: list[Any] = [draw(st.integers(0, 3)) if a is None else sizes[a] for a in arr.axes]
        shape += draw(st.lists(st.integers(0, 3), max_size=1))  # element sub-arrays
        if draw(st.integers(0, 3)) == 0:
            shape = draw(st.lists(SIZE, max_size=arr.rank + 1))
        elif draw(st.integers(0, 3)) == 0 and shape:
            shape[draw(st.integers(0, len(shape) - 1))] = draw(SIZE)
        if draw(st.integers(0, 9)):  # now and then an input has no shape at all
            shapes[arr.name] = tuple(shape)
    return shapes


@examples(80)
@given(valid_specs(), st.data())
@example(MapSpec.from_string("x[i] -> y[i]"), {"x": (-1,)})
@example(MapSpec.from_string("x[i] -> y[i]"), {"x": (2.5,)})
@example(MapSpec.from_string("x[i] -> y[i]"), {"x": ("a",)})
@example(MapSpec.from_string("x[i] -> y[i]"), {"x": (None,)})
@example(MapSpec.from_string("x[i, :] -> y[i]"), {"x": (2, -3)})
def test_index_sizes_are_lengths_or_explained(spec: MapSpec, data: Any) -> None:
    shapes = data if isinstance(data, dict) else data.draw(shapes_for(spec), label="shapes")
    try:
        sizes = spec.index_sizes(shapes)
    except MapSpecError as e:
        assert f"mapspec '{spec}'" in str(e)
        return
    assert set(sizes) == set(spec.output_indices)
    assert all(type(n) is int and n >= 0 for n in sizes.values()), sizes
    for arr in spec.inputs:
        for axis, n in zip(arr.axes, shapes[arr.name], strict=False):
            if axis is not None:
                assert sizes[axis] == operator.index(n)
    assert spec.shape(shapes) == tuple(sizes[i] for i in spec.output_indices)


# -- build ----------------------------------------------------------------------------------------

THREADS = flows.engine.execution_environment(None, "threads")


@step(returns="z")
def pair(x, y):
    return x, y


@step(returns="w")
def row_sum(z):
    return sum(z)


@step(returns="z")
def double(x):
    return 2 * x


@step(returns="z")
def outer(x, y):
    return x, y


FLOWS = {
    "chained": first(map_(pair, "x[i, j], y[j] -> z[i, j]")).then(map_(row_sum, "z[i, :] -> w[i]")),
    "one": first(map_(double, "x[i] -> z[i]")),
    "reduced": first(map_(outer, "x[i, :], y[j] -> z[i, j]")),
}
RANKS = {"chained": {"x": 2, "y": 1}, "one": {"x": 1}, "reduced": {"x": 2, "y": 1}}

DTYPES = st.sampled_from([np.float64, np.int64, np.bool_, np.complex128, np.dtype("U2")])
ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3))


@st.composite
def masked_arrays(draw: st.DrawFn) -> np.ma.MaskedArray:
    data = draw(ARRAYS)
    mask = draw(
        st.one_of(
            hnp.arrays(np.bool_, data.shape),
            st.sampled_from([np.ma.nomask, True, False]),
        )
    )
    return np.ma.masked_array(data, mask=mask)


class Shaped:
    """An array-like that only has a ``shape`` (whatever it is): duck typing gone wrong."""

    def __init__(self, shape: Any) -> None:
        self.shape = shape

    def __repr__(self) -> str:
        return f"Shaped({self.shape!r})"


LEAVES = st.one_of(
    st.floats(allow_nan=True),
    st.integers(),
    st.none(),
    st.text(max_size=2),
    st.booleans(),
    ARRAYS,
)
RAGGED = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple),
    max_leaves=12,
)
REAL_VALUES = st.one_of(
    ARRAYS,
    masked_arrays(),
    ARRAYS.map(lambda a: a.tolist()),  # regular nested lists (a scalar for 0-d)
    RAGGED,
    ARRAYS.map(xr.DataArray),
    st.integers(0, 2**70).map(range),
    st.integers(0, 2**70).map(lambda n: [range(n)]),
)
ODD_VALUES = st.one_of(
    st.sampled_from([None, float("nan"), "abc", b"ab", {"a": 1}, {1, 2}, np.float64(1.5)]),
    st.one_of(
        st.integers(-2, 3),
        st.none(),
        st.text(max_size=2),
        st.lists(st.one_of(st.integers(-2, 4), st.floats(), st.text(max_size=1)), max_size=3).map(
            tuple
        ),
    ).map(Shaped),
)


def _huge(value: Any) -> bool:
    return isinstance(value, range) and value.stop - value.start > 10**6


def assert_names_the_plan(error: Exception, flow_name: str) -> None:
    message = str(error)
    assert isinstance(error, ValueError | TypeError)
    flow = FLOWS[flow_name]
    names = [flow.name, *(n.name for n in flow.nodes)]
    assert any(repr(n) in message for n in names), f"{message!r} names none of {names}"


@examples(150)
@given(st.sampled_from(sorted(FLOWS)), st.data())
@example("one", {"x": range(2**64)})  # len() overflowed: OverflowError
@example("one", {"x": range(2**40)})  # was materialized to check its length: hung
@example("chained", {"x": [range(2**64)], "y": [0]})
@example("chained", {"x": range(2**40), "y": [0]})  # listed to find ints in it: out of memory
@example("one", {"x": Shaped(5)})  # tuple(5): TypeError without a name
@example("one", {"x": Shaped(("a",))})  # int('a'): ValueError without a name
@example("one", {"x": Shaped((-1,))})  # accepted, a map of -1 elements
@example("one", {"x": Shaped((2.5,))})  # accepted, 2.5 elements
@example("one", {"x": xr.DataArray(np.arange(3.0))})  # built, then refused by the engine
@example("one", {"x": np.array(1.0)})
@example("chained", {"x": np.zeros((0, 3)), "y": [np.nan] * 3})
@example("chained", {"x": [[1, 2], [3]], "y": [0, 0]})
@example("chained", {"x": [np.zeros(2), np.zeros(2)], "y": [0, 0]})
def test_build_accepts_or_names_the_problem(name: str, data: Any) -> None:
    flow = FLOWS[name]
    if isinstance(data, dict):
        inputs = data
    else:
        values = st.one_of(REAL_VALUES, ODD_VALUES) | st.sampled_from([[], [[]], [0], [[0]]])
        inputs = {p: data.draw(values, label=p) for p in sorted(RANKS[name])}
    try:
        builder = build(flow.on(THREADS), **inputs)
    except (ValueError, TypeError) as e:
        assert_names_the_plan(e, name)
        return
    shapes = builder.validate()
    for out, shape in shapes.items():
        assert all(type(n) is int and n >= 0 for n in shape), (out, shape)
    for p, rank in RANKS[name].items():
        value = inputs[p]
        if (
            isinstance(value, Shaped)
            or _huge(value)
            or (isinstance(value, list) and bool(value) and _huge(value[0]))
        ):
            continue  # nothing to convert, or too much to convert here
        # what build() accepts, the workers can iterate over, with the same shape
        arr = as_mapped_array(value, rank)
        assert arr.shape[:rank] == mapped_shape(value, rank)[:rank]


@examples(50)
@given(
    st.one_of(st.text(max_size=6), st.integers(), st.none(), st.tuples(st.integers())),
    st.one_of(REAL_VALUES, ODD_VALUES),
)
@example(1, [0])  # ', '.join() of a non-string key: TypeError naming nothing
def test_edited_builder_inputs_are_named(key: Any, value: Any) -> None:
    builder = build(FLOWS["one"].on(THREADS), x=[1, 2])
    builder.kwargs[key] = value
    try:
        builder.validate()
    except (ValueError, TypeError) as e:
        assert_names_the_plan(e, "one")
    else:
        assert key == "x"


# -- the command line's inputs --------------------------------------------------------------------

FORMS = ["linspace", "logspace", "geomspace", "arange", "array"]
# Arguments for the array forms, small enough that no form can ask for a huge array.
FORM_ATOMS = st.one_of(
    st.integers(-50, 50),
    st.sampled_from([0.0, 0.5, -0.25, 1e-300, 1e300, float("nan"), float("inf"), -float("inf")]),
    st.sampled_from([None, True, False, "", "int", "float32", "U3", "foo", [1, 2], {"a": 1}]),
)
FORM_KWARGS = ["start", "stop", "num", "step", "endpoint", "retstep", "dtype", "axis", "base"]
FORM_ARGS = st.one_of(
    FORM_ATOMS,
    st.lists(FORM_ATOMS, max_size=7),
    st.dictionaries(st.sampled_from([*FORM_KWARGS, "like", "nope"]), FORM_ATOMS, max_size=4),
)
ARRAY_FORMS = st.builds(lambda form, args: {form: args}, st.sampled_from(FORMS), FORM_ARGS)
JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4), ARRAY_FORMS
)
KEYS = st.text(max_size=5).filter(lambda k: k not in FORMS)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=10,
)
YAML_TOKENS = [
    *["a", "b", "V_left", ": ", "- ", "\n", "  ", "[", "]", "{", "}", ", ", "'", '"', "#", "? "],
    *["&a ", "*a", "&b ", "*b", "!!int ", "!!float ", "!!binary ", "!!timestamp ", "!!set "],
    *["!!python/object:os.system ", "!!str ", "!!bool ", "!!null ", "%YAML 1.1\n", "---\n"],
    *["...\n", "\t", "\x00", "abc", "<<: "],
    *["2020-02-30", "2020-01-01", " 0 ", " -1 ", " 0.5 ", ".nan", ".inf", " 0x1F ", " 1_000 "],
    *["1" * 4400, "\ufeff", "\u2028", "linspace", "arange", "array", "[0, 1, 3]", "[0, 1, 0]"],
    *["[1, 1000, 4]", "[-3, 0, 4]", "x.npy", "x.nc:v", "~nosuchuser_pf/x.npy", "null", "true"],
]
YAML_SOUP = st.lists(st.sampled_from(YAML_TOKENS), max_size=25).map("".join)
JSON_TOKENS = [
    *["{", "}", "[", "]", ",", ":", '"a"', '"b"', '"linspace"', '"arange"', '"array"', " 0 "],
    *[" -1 ", " 0.5 ", " 1e400 ", "NaN", "Infinity", "null", "true", " ", "\n", "\ufeff"],
    *["1" * 4400, "[" * 1200, "]" * 1200, '"x.npy"', '"\\u0000.npy"', '"\\ud800"', "\\"],
]
JSON_SOUP = st.lists(st.sampled_from(JSON_TOKENS), max_size=25).map("".join)


def _dump(value: Any, how: str) -> str:
    if how == "json":
        return json.dumps(value)
    try:
        return yaml.safe_dump(value)
    except yaml.YAMLError:
        return json.dumps(value)


INPUT_TEXTS = st.one_of(
    st.builds(
        _dump, st.dictionaries(KEYS, JSON_VALUES, max_size=4), st.sampled_from(["json", "yaml"])
    ),
    st.builds(_dump, JSON_VALUES, st.sampled_from(["json", "yaml"])),
    JSON_SOUP,
    YAML_SOUP,
    st.text(max_size=60),
    st.binary(max_size=40),
)
SUFFIXES = st.sampled_from([".json", ".yaml", ".yml", ".JSON", ".txt", ""])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with array files good and bad, for inputs that name files."""
    folder = tmp_path_factory.mktemp("fuzz_inputs")
    np.save(folder / "good.npy", np.arange(3.0))
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (folder / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    (folder / "bad.nc").write_bytes(b"CDF\x01 garbage")
    (folder / "folder.npy").mkdir()
    xr.Dataset({"v": ("i", np.arange(3.0)), "w": ("i", np.ones(3))}).to_netcdf(folder / "two.nc")
    return folder


def assert_usage_error(error: UsageError, *names: str) -> None:
    message = str(error)
    assert message.strip()
    assert "\n" not in message.strip(), f"not one line: {message!r}"
    assert any(n in message for n in names), f"{message!r} names none of {names}"


@examples(100)
@given(INPUT_TEXTS, SUFFIXES)
@example(b"\xff\xfe{", ".json")  # UnicodeDecodeError
@example(b"a: \xff\n", ".yaml")  # UnicodeDecodeError
@example('\ufeff{"a": 1}', ".json")  # a byte order mark: was refused as not JSON
@example('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", ".json")  # RecursionError
@example('{"a": ' + "[" * 600 + "]" * 600 + "}", ".json")  # RecursionError in expand
@example("a: " + "[" * 1000 + "]" * 1000, ".yaml")  # RecursionError in PyYAML
@example('{"a": ' + "1" * 5000 + "}", ".json")  # ValueError: int digits limit
@example("a: " + "1" * 5000, ".yaml")  # ValueError: int digits limit
@example("a: 2020-02-30", ".yaml")  # ValueError: day is out of range for month
@example("!!int ", ".yaml")  # IndexError in PyYAML
@example("a: !!timestamp abc", ".yaml")  # AttributeError in PyYAML
@example("a: !!bool abc", ".yaml")  # KeyError in PyYAML
@example("a: &x [*x]", ".yaml")  # RecursionError: a list that holds itself
@example("a: &x {b: *x}", ".yaml")  # RecursionError: a dict that holds itself
@example('{"a": {"arange": [0, 1, 0]}}', ".json")  # ZeroDivisionError
@example('{"a": {"arange": [1e15]}}', ".json")  # MemoryError
@example('{"a": {"linspace": [0, 1, 1000000000000000]}}', ".json")  # MemoryError
@example("a: {linspace: [2020-01-01, 1, 3]}", ".yaml")  # TypeError while explaining one
@example('{"a": {"linspace": {"start": 0, "stop": 1, "retstep": true}}}', ".json")
@example('{"a": "~nosuchuser_pf/x.npy"}', ".json")  # RuntimeError: no such user
@example('{"a": "' + "n" * 300 + '.npy"}', ".json")  # OSError: file name too long
@example('{"a": "\\u0000.npy"}', ".json")  # ValueError: embedded null byte
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow in logspace
def test_inputs_file_loads_or_names_the_problem(
    folder: Path, text: str | bytes, suffix: str
) -> None:
    file = folder / f"inputs{suffix}"
    if isinstance(text, bytes):
        file.write_bytes(text)
    else:
        file.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        inputs = load_inputs(file)
    except UsageError as e:
        assert_usage_error(e, str(file), "input ")
        return
    assert isinstance(inputs, dict)
    assert all(isinstance(k, str) for k in inputs)
    for value in _leaves(inputs):
        assert not isinstance(value, tuple)  # an array form gives an array, not (array, step)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


NAME = st.one_of(
    st.sampled_from(["V", "mesh_size", "_x", "\u00e9", "a b", "", " V "]), st.text(max_size=4)
)
PATHS = st.builds(
    lambda head, body, tail: head + body + tail,
    st.sampled_from(["", "~/", "~", "~nosuchuser_pf/", "/", "../", "n" * 300, "\x00", "sub/"]),
    st.sampled_from(["good", "bad", "objects", "folder", "two", "missing"]) | st.text(max_size=6),
    st.sampled_from([".npy", ".nc", ".nc:v", ".nc:", ".nc:nope", ".NPY"]),
)
SET_ITEMS = st.one_of(
    st.text(max_size=40),
    st.builds(lambda n, v: f"{n}={v}", NAME, JSON_SOUP),
    st.builds(lambda n, v: f"{n}={json.dumps(v)}", NAME, JSON_VALUES),
    st.builds(lambda n, v: f"{n}={v}", NAME, PATHS),
)


@examples(150)
@given(SET_ITEMS)
@example("x=" + "1" * 5000)  # ValueError: int digits limit
@example("x=" + "[" * 100_000)  # RecursionError
@example("x=" + "[" * 100_000 + "]" * 100_000)  # RecursionError
@example('x={"arange": [0, 1, 0]}')  # ZeroDivisionError
@example("x=~nosuchuser_pf/x.npy")  # RuntimeError
@example("x=" + "n" * 300 + ".npy")  # OSError: file name too long
@example("x=bad.npy")
@example("x=objects.npy")
@example("x=two.nc")
@example("V_limits=[-0.4, 0.4]")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_set_option_reads_or_names_the_problem(folder: Path, item: str) -> None:
    try:
        name, value = parse_set(item)
        value = expand(value, folder, name)  # as the command line does with each --set
    except UsageError as e:
        assert_usage_error(e, "--set", "input ")
        return
    assert name.isidentifier()
    assert item.partition("=")[0].strip() == name


@examples(60)
@given(PATHS, st.sampled_from(["V", "V.a", "V[0]"]))
@example("good.npy", "V")
@example("two.nc:v", "V")
@example("\n.npy", "V")  # a message of two lines: the path is quoted now
def test_array_files_load_or_name_the_input(folder: Path, text: str, name: str) -> None:
    try:
        value = expand(text, folder, name)
    except UsageError as e:
        assert_usage_error(e, repr(name))
        return
    if text.endswith((".npy", ".nc")) or ".nc:" in text:
        assert isinstance(value, np.ndarray)
    else:  # "data.NPY": not an array file's name, so a string like any other
        assert value == text


# -- the crashes, one by one (the @example cases above, with the expected messages) --------------


def test_garbage_bytes_are_not_utf8(tmp_path: Path) -> None:
    file = tmp_path / "in.json"
    file.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(UsageError, match=r"in\.json.*not UTF-8"):
        load_inputs(file)


def test_byte_order_mark_is_fine(tmp_path: Path) -> None:
    file = tmp_path / "in.json"
    file.write_text('\ufeff{"a": 1}', encoding="utf-8")
    assert load_inputs(file) == {"a": 1}


@pytest.mark.parametrize(
    ("suffix", "text", "match"),
    [
        (".json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (".json", '{"a": ' + "[" * 600 + "]" * 600 + "}", "in.json: .*nested too deeply"),
        (".yaml", "a: " + "[" * 1000 + "]" * 1000, "nested too deeply"),
        (".json", '{"a": ' + "1" * 5000 + "}", "5000 digits"),
        (".yaml", "a: " + "1" * 5000, "5000 digits"),
        (".yaml", "a: 2020-02-30", "day is out of range"),
        (".yaml", "a: !!float ", r"IndexError: .*explicit tags such as !!int"),
        (".yaml", "a: !!timestamp abc", "AttributeError: .*explicit tags"),
        (".yaml", "a: !!bool abc", "KeyError: .*explicit tags"),
        (".yaml", "a: &x [*x]", r"input 'a\[0\]' contains itself"),
        (".json", '{"a": {"arange": [0, 1, 0]}}', r"arange.*\[0, 1, 0\].*division by zero"),
        (".json", '{"a": {"arange": [1e15]}}', "Unable to allocate"),
        (".yaml", "a: {linspace: [2020-01-01, 1, 3]}", "not a valid linspace"),
        (".json", '{"a": {"linspace": [0, 1, 3, true, true]}}', "gives a tuple, not an array"),
        (".json", '{"a": "~nosuchuser_pf/x.npy"}', "input 'a'.*not a usable file name"),
        (".json", '{"a": "' + "n" * 300 + '.npy"}', "input 'a'.*not a usable file name"),
        (".json", '{"a": "\\u0000.npy"}', "input 'a'.*not a usable file name"),
    ],
    ids=[
        *["json-deep", "json-deep-for-expand", "yaml-deep", "json-bigint", "yaml-bigint"],
        *["yaml-bad-date", "yaml-empty-float", "yaml-bad-timestamp", "yaml-bad-bool"],
        *["yaml-self-alias", "arange-step-0", "arange-huge", "linspace-dates"],
        *["linspace-retstep", "path-unknown-user", "path-too-long", "path-nul"],
    ],
)
def test_inputs_file_crashes_are_usage_errors(tmp_path: Path, suffix: str, text: str, match: str):
    file = tmp_path / f"in{suffix}"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=match):
        load_inputs(file)


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("x=" + "1" * 5000, "--set x: .*5000 digits"),
        ("x=" + "[" * 100_000, "--set x: .*nested too deeply"),
        ("x=" + "[" * 2_000 + "]" * 2_000, "--set x: .*nested too deeply"),
    ],
    ids=["bigint", "deep-open", "deep"],
)
def test_set_crashes_are_usage_errors(item: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        parse_set(item)


def test_nesting_that_json_reads_but_expand_did_not() -> None:
    value = json.loads("[" * 600 + "]" * 600)
    with pytest.raises(UsageError, match=r"input 'V'.* nested too deeply"):
        expand(value, Path.cwd(), "V")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (range(2**64), r"input 'x' of map 'double': range\(0, 18446744073709551616\) is too long"),
        (Shaped(5), r"input 'x' of map 'double': .*shape 5.* lengths"),
        (Shaped(("a",)), r"input 'x' of map 'double': .*shape \('a',\).* lengths"),
        (Shaped((-1,)), r"input 'x' of map 'double': .*shape \(-1,\).* lengths"),
        (Shaped((2.5,)), r"input 'x' of map 'double': .*shape \(2.5,\).* lengths"),
    ],
    ids=["huge-range", "int-shape", "str-shape", "negative-shape", "float-shape"],
)
def test_build_crashes_are_value_errors(value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(FLOWS["one"].on(THREADS), x=value)


def test_a_long_range_is_measured_not_listed() -> None:
    assert build(FLOWS["one"].on(THREADS), x=range(sys.maxsize)).validate() == {"z": (sys.maxsize,)}
    with pytest.raises(ValueError, match=r"input 'x' of map 'pair': .* found int at depth 1"):
        build(FLOWS["chained"].on(THREADS), x=range(sys.maxsize), y=[0])


def test_array_likes_build_and_convert_alike() -> None:
    value = xr.DataArray(np.arange(6.0).reshape(2, 3))
    assert build(FLOWS["one"].on(THREADS), x=value).validate() == {"z": (2,)}
    np.testing.assert_array_equal(as_mapped_array(value, 1), value.values)


def test_a_non_string_input_name_is_named() -> None:
    builder = build(FLOWS["one"].on(THREADS), x=[1, 2])
    builder.kwargs[1] = 2  # type: ignore[index]
    with pytest.raises(TypeError, match=r"workflow 'double': input names are strings, not 1"):
        builder.validate()


@pytest.mark.parametrize("size", [-1, 2.5, "a", None])
def test_index_sizes_must_be_lengths(size: Any) -> None:
    with pytest.raises(MapSpecError, match=r"mapspec 'x\[i\] -> y\[i\]': the shape .* of 'x'"):
        MapSpec.from_string("x[i] -> y[i]").shape({"x": (size,)})
