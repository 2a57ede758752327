"""The mapspec grammar: parsing, validation, printing, shapes and index arithmetic."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parsl_flows.mapspec import ArraySpec, MapSpec, MapSpecError

SEED_SPEC = "x[i, j], y[j, :, k] -> z[i, j, k]"


# -- the example --------------------------------------------------------------------


def test_parse_example_structure():
    spec = MapSpec.from_string(SEED_SPEC)
    assert spec.inputs == (ArraySpec("x", ("i", "j")), ArraySpec("y", ("j", None, "k")))
    assert spec.outputs == (ArraySpec("z", ("i", "j", "k")),)
    assert spec.input_names == ("x", "y")
    assert spec.output_names == ("z",)
    assert spec.output_indices == ("i", "j", "k")
    assert spec.input("y").indices == ("j", "k")
    assert spec.input("y").rank == 3


def test_example_output_shape():
    spec = MapSpec.from_string(SEED_SPEC)
    assert spec.shape({"x": (5, 2), "y": (2, 4, 3)}) == (5, 2, 3)
    assert spec.index_sizes({"x": (5, 2), "y": (2, 4, 3)}) == {"i": 5, "j": 2, "k": 3}


def test_example_output_key():
    assert MapSpec.output_key(23, (5, 2, 3)) == (3, 1, 2)
    assert MapSpec.linear_index((3, 1, 2), (5, 2, 3)) == 23
    spec = MapSpec.from_string(SEED_SPEC)
    assert spec.output_key(0, (5, 2, 3)) == (0, 0, 0)
    assert spec.output_key(29, (5, 2, 3)) == (4, 1, 2)


def test_example_input_keys_use_slice_for_colon():
    spec = MapSpec.from_string(SEED_SPEC)
    keys = spec.input_keys((3, 1, 2))
    assert keys == {"x": (3, 1), "y": (1, slice(None), 2)}
    assert keys["y"][1] == slice(None, None, None)


def test_input_keys_select_the_right_elements_everywhere():
    spec = MapSpec.from_string(SEED_SPEC)
    x = np.arange(10).reshape(5, 2)
    y = np.arange(24).reshape(2, 4, 3) * 100
    shape = spec.shape({"x": x.shape, "y": y.shape})
    for n in range(math.prod(shape)):
        i, j, k = spec.output_key(n, shape)
        keys = spec.input_keys((i, j, k))
        assert x[keys["x"]] == x[i, j]
        np.testing.assert_array_equal(y[keys["y"]], y[j, :, k])


def test_input_keys_wrong_length_is_an_error():
    spec = MapSpec.from_string(SEED_SPEC)
    with pytest.raises(ValueError):
        spec.input_keys((1, 2))


def test_output_index_order_differs_from_input_order():
    spec = MapSpec.from_string("x[i], y[j] -> z[j, i]")
    assert spec.shape({"x": (3,), "y": (4,)}) == (4, 3)
    assert spec.input_keys((2, 1)) == {"x": (1,), "y": (2,)}


def test_outer_product_and_zip():
    outer = MapSpec.from_string("a[i], b[j] -> c[i, j]")
    assert outer.shape({"a": (3,), "b": (7,)}) == (3, 7)
    zipped = MapSpec.from_string("a[i], b[i] -> c[i]")
    assert zipped.shape({"a": (3,), "b": (3,)}) == (3,)
    assert zipped.input_keys((2,)) == {"a": (2,), "b": (2,)}


def test_several_outputs_share_the_indices():
    spec = MapSpec.from_string("x[i], y[j] -> a[i, j], b[i, j]")
    assert spec.output_names == ("a", "b")
    assert spec.output_indices == ("i", "j")
    assert spec.shape({"x": (2,), "y": (5,)}) == (2, 5)
    assert str(spec) == "x[i], y[j] -> a[i, j], b[i, j]"


def test_whitespace_is_free_between_tokens():
    compact = MapSpec.from_string("x[i,j],y[j,:,k]->z[i,j,k]")
    airy = MapSpec.from_string("  x[ i ,  j ] ,\n y[j,\t:, k ]   ->   z[i, j, k]  ")
    assert compact == airy == MapSpec.from_string(SEED_SPEC)
    assert str(airy) == SEED_SPEC


def test_array_may_have_more_dimensions_than_named():
    spec = MapSpec.from_string("x[i] -> y[i]")
    assert spec.shape({"x": (5, 7)}) == (5,)


def test_rename():
    spec = MapSpec.from_string(SEED_SPEC).rename({"x": "a", "z": "out"})
    assert str(spec) == "a[i, j], y[j, :, k] -> out[i, j, k]"


def test_mapspec_error_is_a_value_error():
    assert issubclass(MapSpecError, ValueError)


def test_non_string_is_an_error():
    with pytest.raises(ValueError, match="string"):
        MapSpec.from_string(5)  # type: ignore[arg-type]


# -- invalid text ---------------------------------------------------------------------------

# (spec, position the parser must point at, or None for errors found after parsing)
INVALID = [
    ("x[i], 5 -> y[i]", 6),  # a number where an array should be
    ("x [i] -> y[i]", 1),  # space between name and '['
    ("x[i] -> y [i]", 9),  # the same in the outputs
    ("x[i] y[i]", 5),  # missing arrow
    ("x[i]", 4),  # no arrow, no outputs
    ("x[i] -> y[i] z", 13),  # trailing garbage
    ("x[i] -> y[i] # comment", 13),  # trailing comment
    ("x[i] -> y[i],", 13),  # trailing comma
    ("x[] -> y[]", 2),  # empty brackets
    ("x[i -> y[i]", 4),  # unclosed bracket in the inputs
    ("x[i] -> y[i", 11),  # unclosed bracket at the end
    ("x[i]] -> y[i]", 4),  # extra closing bracket
    ("x[[i]] -> y[i]", 2),  # nested brackets
    ("x[i][j] -> y[i, j]", 4),  # two bracket groups
    ("1x[i] -> y[i]", 0),  # digits starting a name
    ("x[1] -> y[1]", 2),  # digits as an index
    ("x[-1] -> y[i]", 2),  # negative index
    ("x[i] -> y[i] -> z[i]", 13),  # '->' twice
    ("", 0),  # empty
    ("   ", 3),  # only whitespace
    ("->", 0),  # only the arrow
    ("x[i] ->", 7),  # no outputs
    ("-> y[i]", 0),  # no inputs
    ("x[i],, y[i] -> z[i]", 5),  # double comma
    ("x[i,] -> y[i]", 4),  # trailing comma in the indices
    ("x[i j] -> y[i, j]", 4),  # missing comma between indices
    ("x[i]; y[j] -> z[i, j]", 4),  # wrong separator
    ("x(i) -> y(i)", 1),  # parentheses
    ("x[i] => y[i]", 5),  # wrong arrow
    ("x[i] - > y[i]", 5),  # broken arrow
    ("é[i] -> y[i]", 0),  # names are ASCII identifiers
    ("x[i] -> y[:]", None),  # ':' in the output
    ("x[i, :] -> y[i, :]", None),  # ':' in the output, next to a named index
    ("x[i] -> y[i, j]", None),  # output index in no input
    ("x[i, j] -> y[i]", None),  # input index missing from the output
    ("x[i], y[j] -> z[i]", None),  # input index of a second array missing
    ("x[i, i] -> y[i]", None),  # index repeated in one array
    ("x[i] -> y[i, i]", None),  # index repeated in the output
    ("x[i], x[i] -> y[i]", None),  # the same input twice
    ("x[i] -> x[i]", None),  # input and output share a name
    ("x[i] -> y[i], y[i]", None),  # the same output twice
    ("x[i], y[j] -> a[i, j], b[j, i]", None),  # outputs with different index order
    ("x[i], y[j] -> a[i, j], b[i]", None),  # outputs with different indices
]


@pytest.mark.parametrize(("text", "position"), INVALID, ids=[repr(t) for t, _ in INVALID])
def test_invalid_spec_is_a_value_error_showing_the_spec(text, position):
    with pytest.raises(ValueError) as info:
        MapSpec.from_string(text)
    assert isinstance(info.value, MapSpecError)
    assert text in str(info.value)


PARSER_ERRORS = [(t, p) for t, p in INVALID if p is not None]


@pytest.mark.parametrize(
    ("text", "position"), PARSER_ERRORS, ids=[repr(t) for t, _ in PARSER_ERRORS]
)
def test_parser_error_points_at_the_position(text, position):
    with pytest.raises(MapSpecError) as info:
        MapSpec.from_string(text)
    message = str(info.value)
    assert f"position {position}" in message
    # the last two lines show the spec and a caret under the offending character
    *_, shown, caret = message.split("\n")
    assert shown.strip() == text.strip()
    indent = len(shown) - len(text)
    assert caret == " " * (indent + position) + "^"


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("x[i] -> y[:]", ["y[:]", "':'"]),
        ("x[i] -> y[i, j]", ["j", "union"]),
        ("x[i, j] -> y[i]", ["j", "union"]),
        ("x[i, i] -> y[i]", ["x[i, i]", "repeated"]),
        ("x[i], x[i] -> y[i]", ["x", "more than once"]),
        ("x[i], y[j] -> a[i, j], b[j, i]", ["a[i, j]", "b[j, i]"]),
    ],
)
def test_validation_errors_say_what_is_wrong(text, mentions):
    with pytest.raises(MapSpecError) as info:
        MapSpec.from_string(text)
    for fragment in mentions:
        assert fragment in str(info.value)


def test_repeated_index_points_at_the_offending_array():
    text = "x[i], y[j, j] -> z[i, j]"
    with pytest.raises(MapSpecError) as info:
        MapSpec.from_string(text)
    found = re.search(r"position (\d+)", str(info.value))
    assert found is not None
    # the start of 'y[j, j]' (6) or the repeated 'j' (11), not the space after ']' (13)
    assert int(found.group(1)) in {6, 11}


@pytest.mark.parametrize("text", ["x[i],\n    y[i, j] -> z[i]", "x[i,\ti] -> y[i]"])
def test_multiline_spec_is_shown_verbatim(text):
    with pytest.raises(MapSpecError) as info:
        MapSpec.from_string(text)
    assert text in str(info.value)


# -- direct construction --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "axes"),
    [("1x", ("i",)), ("x-y", ("i",)), ("", ("i",)), ("x", ()), ("x", ("i", "i")), ("x", ("2",))],
)
def test_invalid_array_spec(name, axes):
    with pytest.raises(MapSpecError):
        ArraySpec(name, axes)


def test_mapspec_needs_inputs_and_outputs():
    with pytest.raises(MapSpecError):
        MapSpec((), (ArraySpec("y", ("i",)),))
    with pytest.raises(MapSpecError):
        MapSpec((ArraySpec("x", ("i",)),), ())


def test_constructed_spec_validates_like_a_parsed_one():
    with pytest.raises(MapSpecError, match="union"):
        MapSpec((ArraySpec("x", ("i",)),), (ArraySpec("y", ("j",)),))


# -- shape errors ---------------------------------------------------------------------------


def test_rank_mismatch_names_the_array_and_indices():
    spec = MapSpec.from_string(SEED_SPEC)
    with pytest.raises(MapSpecError) as info:
        spec.shape({"x": (5,), "y": (2, 4, 3)})
    message = str(info.value)
    assert "x[i, j]" in message
    assert "rank 2" in message
    assert "(5,)" in message


def test_rank_mismatch_with_colon_axis():
    spec = MapSpec.from_string(SEED_SPEC)
    with pytest.raises(MapSpecError, match=re.escape("y[j, :, k]")):
        spec.shape({"x": (5, 2), "y": (2, 4)})


def test_dimension_mismatch_names_both_arrays_and_the_index():
    spec = MapSpec.from_string(SEED_SPEC)
    with pytest.raises(MapSpecError) as info:
        spec.shape({"x": (5, 2), "y": (3, 4, 3)})
    message = str(info.value)
    assert "'j'" in message
    assert "'x'" in message
    assert "'y'" in message
    assert "2" in message
    assert "3" in message


def test_colon_axis_size_is_free():
    spec = MapSpec.from_string(SEED_SPEC)
    assert spec.shape({"x": (5, 2), "y": (2, 99, 3)}) == (5, 2, 3)


def test_missing_input_shape_names_the_array():
    spec = MapSpec.from_string(SEED_SPEC)
    with pytest.raises(MapSpecError, match="'y'"):
        spec.shape({"x": (5, 2)})


def test_out_of_range_index_arithmetic_is_an_error():
    with pytest.raises(ValueError):
        MapSpec.output_key(30, (5, 2, 3))
    with pytest.raises(ValueError):
        MapSpec.linear_index((5, 0, 0), (5, 2, 3))


# -- property tests -------------------------------------------------------------------------

IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True)
SPACE = st.sampled_from(["", " ", "  ", "\t", "\n", " \n  "])


@st.composite
def mapspecs(draw):
    """Valid specs: every index appears in some input, outputs carry exactly those indices."""
    indices = draw(st.lists(IDENT, min_size=1, max_size=4, unique=True))
    n_in = draw(st.integers(1, 3))
    n_out = draw(st.integers(1, 2))
    names = draw(st.lists(IDENT, min_size=n_in + n_out, max_size=n_in + n_out, unique=True))
    members: list[list[str]] = [[] for _ in range(n_in)]
    for index in indices:
        for k in sorted(draw(st.sets(st.integers(0, n_in - 1), min_size=1))):
            members[k].append(index)
    inputs = []
    for name, mine in zip(names[:n_in], members, strict=True):
        axes: list[str | None] = list(draw(st.permutations(mine)))
        for _ in range(draw(st.integers(0 if axes else 1, 2))):
            axes.insert(draw(st.integers(0, len(axes))), None)
        inputs.append(ArraySpec(name, tuple(axes)))
    out_axes = tuple(draw(st.permutations(indices)))
    outputs = tuple(ArraySpec(name, out_axes) for name in names[n_in:])
    return MapSpec(tuple(inputs), outputs)


@st.composite
def spec_texts(draw):
    """A valid spec and a way of writing it with arbitrary whitespace between tokens."""
    spec = draw(mapspecs())

    def array(a: ArraySpec) -> str:
        axes = ",".join(draw(SPACE) + (":" if x is None else x) + draw(SPACE) for x in a.axes)
        return f"{a.name}[{axes}]"

    def arrays(arrs) -> str:
        return ",".join(draw(SPACE) + array(a) + draw(SPACE) for a in arrs)

    text = draw(SPACE) + arrays(spec.inputs) + "->" + arrays(spec.outputs) + draw(SPACE)
    return spec, text


@given(mapspecs())
def test_str_round_trips(spec):
    assert MapSpec.from_string(str(spec)) == spec
    assert str(MapSpec.from_string(str(spec))) == str(spec)


@given(spec_texts())
def test_parse_ignores_whitespace_and_prints_canonically(spec_and_text):
    spec, text = spec_and_text
    parsed = MapSpec.from_string(text)
    assert parsed == spec
    assert str(parsed) == str(spec)
    assert MapSpec.from_string(str(parsed)) == parsed


@given(mapspecs(), st.data())
def test_shape_and_input_keys_follow_the_indices(spec, data):
    sizes = {i: data.draw(st.integers(1, 4), label=i) for i in spec.output_indices}
    shapes = {
        a.name: tuple(data.draw(st.integers(1, 3)) if x is None else sizes[x] for x in a.axes)
        for a in spec.inputs
    }
    shape = spec.shape(shapes)
    assert shape == tuple(sizes[i] for i in spec.output_indices)
    n = data.draw(st.integers(0, math.prod(shape) - 1), label="linear index")
    key = spec.output_key(n, shape)
    by_index = dict(zip(spec.output_indices, key, strict=True))
    for a in spec.inputs:
        expected = tuple(slice(None) if x is None else by_index[x] for x in a.axes)
        assert spec.input_keys(key)[a.name] == expected


SHAPES = st.lists(st.integers(1, 7), min_size=1, max_size=5).map(tuple)


@given(SHAPES, st.data())
def test_linear_index_and_key_round_trip_in_c_order(shape, data):
    n = data.draw(st.integers(0, math.prod(shape) - 1), label="linear index")
    key = MapSpec.output_key(n, shape)
    assert key == tuple(int(k) for k in np.unravel_index(n, shape))
    assert all(type(k) is int for k in key)
    assert MapSpec.linear_index(key, shape) == n
    # C order: the last axis varies fastest
    strides = [math.prod(shape[d + 1 :]) for d in range(len(shape))]
    assert n == sum(k * s for k, s in zip(key, strides, strict=True))


@given(SHAPES, st.data())
def test_key_to_linear_index_round_trip(shape, data):
    key = tuple(data.draw(st.integers(0, s - 1)) for s in shape)
    n = MapSpec.linear_index(key, shape)
    assert type(n) is int
    assert n == int(np.ravel_multi_index(key, shape))
    assert MapSpec.output_key(n, shape) == key


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple))
def test_enumeration_is_c_order(shape):
    keys = [MapSpec.output_key(n, shape) for n in range(math.prod(shape))]
    assert keys == list(np.ndindex(shape))


@pytest.mark.parametrize(
    "text",
    ["x[i], y[j] -> z[i, j]", "x[j], y[i] -> z[i, j]", "x[i, j], y[j, k] -> z[i, j, k]",
     "x[k, i] -> z[i, k]"],
)  # fmt: skip
def test_on_output_grid_agrees_with_input_keys(text: str) -> None:
    spec = MapSpec.from_string(text)
    sizes = {"i": 2, "j": 3, "k": 4}
    shape = tuple(sizes[i] for i in spec.output_indices)
    for arr in spec.inputs:
        values = np.arange(np.prod([sizes[i] for i in arr.indices])).reshape(
            [sizes[i] for i in arr.indices]
        )
        laid = spec.on_output_grid(arr.name, values, shape)
        for key in np.ndindex(*shape):
            assert laid[key] == values[spec.input_keys(key)[arr.name]]
