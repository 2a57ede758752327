"""Steps: decorators, introspection, resources, signature rules and output splitting."""

from __future__ import annotations

import pytest

import parsl_flows as flows
from parsl_flows import Step, step
from parsl_flows.step import MissingOutputError, Resources, format_walltime

# -- the three ways to make a step ----------------------------------------------------------


def test_bare_decorator():
    @step
    def add(a, b):
        return a + b

    assert isinstance(add, Step)
    assert add.name == "add"
    assert add.parameters == ("a", "b")
    assert add.returns == ("_return_value",)
    assert add(2, 3) == 5


def test_decorator_with_one_return_name():
    @step(returns="geo")
    def make_geometry(x: float, y: float):
        return (x, y)

    assert isinstance(make_geometry, Step)
    assert make_geometry.returns == ("geo",)
    assert make_geometry.parameters == ("x", "y")
    assert make_geometry(1.0, 2.0) == (1.0, 2.0)


def test_decorator_with_a_tuple_of_return_names():
    @step(returns=("mesh", "coarse_mesh"), resources={"cores": 2, "memory": "4GB"})
    def make_mesh(geo, mesh_size, coarse_mesh_size):
        return geo * mesh_size, geo * coarse_mesh_size

    assert make_mesh.returns == ("mesh", "coarse_mesh")
    assert make_mesh.parameters == ("geo", "mesh_size", "coarse_mesh_size")
    assert make_mesh.resources.cores == 2
    assert make_mesh.resources.memory_mb == 4096
    assert make_mesh(10, 2, 3) == (20, 30)


def test_function_call_form():
    def f(a, b):
        return a - b

    s = step(f, returns=("d",))
    assert isinstance(s, Step)
    assert s.returns == ("d",)
    assert s.callable is f
    assert s(b=1, a=5) == 4


def test_list_of_returns_becomes_a_tuple():
    s = step(lambda a: (a, a), returns=["p", "q"])
    assert s.returns == ("p", "q")


def test_package_level_step_is_the_same():
    assert flows.step is step

    @flows.step(returns="out")
    def g(x):
        return x

    assert isinstance(g, Step)
    assert g.returns == ("out",)


def test_callable_is_the_raw_function():
    def raw(x):
        return x * 3

    s = step(raw, returns="y")
    assert s.callable is raw
    assert not isinstance(s.callable, Step)
    assert s.callable(2) == 6


def test_calling_the_step_calls_the_function_with_args_and_kwargs():
    calls = []

    @step(returns="r")
    def record(a, b=10, *, c=100):
        calls.append((a, b, c))
        return a + b + c

    assert record(1) == 111
    assert record(1, 2, c=3) == 6
    assert record(a=4, b=5) == 109
    assert calls == [(1, 10, 100), (1, 2, 3), (4, 5, 100)]


def test_calling_propagates_exceptions():
    @step
    def boom():
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        boom()


def test_wrapping_a_step_again_unwraps_it():
    @step(returns="a")
    def f(x):
        return x

    g = step(f, returns="b")
    assert g.callable is f.callable
    assert g.returns == ("b",)
    assert f.returns == ("a",)


def test_defaults_and_keyword_only_parameters():
    @step(returns="r")
    def f(a, b=1, *, c, d=2):
        return a

    assert f.parameters == ("a", "b", "c", "d")
    assert f.defaults == frozenset({"b", "d"})


def test_step_keeps_the_function_metadata():
    @step(returns="r")
    def documented(a):
        """Some docs."""
        return a

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Some docs."


def test_repr_names_the_step_parameters_and_returns():
    @step(returns=("p", "q"), resources={"cores": 3})
    def f(a, b):
        return a, b

    text = repr(f)
    assert "f(a, b)" in text
    assert "p, q" in text
    assert "'cores': 3" in text


# -- resources ------------------------------------------------------------------------------


def test_no_resources_by_default():
    @step
    def f(a):
        return a

    assert f.resources == Resources()
    assert not f.resources
    assert f.resources.as_dict() == {}


@pytest.mark.parametrize(
    ("memory", "mb"),
    [
        ("500MB", 500),
        ("4GB", 4096),
        ("4G", 4096),
        ("4GiB", 4096),
        ("4 GB", 4096),
        ("1.5GB", 1536),
        ("2048KB", 2),
        ("1TB", 1024 * 1024),
        ("500mb", 500),
        (500, 500),
    ],
)
def test_memory_parsing(memory, mb):
    s = step(lambda a: a, resources={"memory": memory})
    assert s.resources.memory_mb == mb
    assert s.resources


@pytest.mark.parametrize(
    ("walltime", "seconds"),
    [
        ("01:00:00", 3600),
        ("1:00:00", 3600),
        ("00:30:15", 1815),
        ("1-00:00:00", 86400),
        ("2-01:00:01", 2 * 86400 + 3601),
        ("100:00:00", 360000),
    ],
)
def test_walltime_parsing(walltime, seconds):
    s = step(lambda a: a, resources={"walltime": walltime})
    assert s.resources.walltime_s == seconds


@pytest.mark.parametrize("cores", [1, 2, 64])
def test_cores(cores):
    assert step(lambda a: a, resources={"cores": cores}).resources.cores == cores


def test_all_resources_together_and_as_dict():
    s = step(lambda a: a, resources={"cores": 4, "memory": "500MB", "walltime": "01:30:00"})
    assert s.resources == Resources(cores=4, memory_mb=500, walltime_s=5400)
    assert s.resources.as_dict() == {"cores": 4, "memory": "500MB", "walltime": "01:30:00"}
    # as_dict gives resources that parse back to the same thing
    assert step(lambda a: a, resources=s.resources.as_dict()).resources == s.resources


def test_format_walltime():
    assert format_walltime(3600) == "01:00:00"
    assert format_walltime(5415) == "01:30:15"
    assert format_walltime(90000) == "25:00:00"


@pytest.mark.parametrize(
    ("resources", "mentions"),
    [
        ({"gpus": 1}, ["gpus", "cores", "memory", "walltime"]),
        ({"cores": 2, "mem": "4GB"}, ["mem"]),
        ({"cores": 0}, ["cores", "0"]),
        ({"cores": -2}, ["cores", "-2"]),
        ({"cores": 1.5}, ["cores", "1.5"]),
        ({"cores": "2"}, ["cores", "'2'"]),
        ({"cores": True}, ["cores", "True"]),
        ({"memory": "lots"}, ["memory", "lots"]),
        ({"memory": "-1GB"}, ["memory", "-1GB"]),
        ({"memory": "0MB"}, ["memory", "0MB"]),
        ({"memory": "4 gigabytes"}, ["memory", "4 gigabytes"]),
        ({"memory": 0}, ["memory"]),
        ({"walltime": "1h"}, ["walltime", "1h"]),
        ({"walltime": "3600"}, ["walltime", "3600"]),
        ({"walltime": 3600}, ["walltime", "3600"]),
        ({"walltime": "00:60:00"}, ["walltime", "00:60:00"]),
        ({"walltime": "00:30"}, ["walltime", "00:30"]),
        ({"walltime": "00:00:00"}, ["walltime", "positive"]),
    ],
)
def test_invalid_resources_are_clear_errors(resources, mentions):
    def heavy(a):
        return a

    with pytest.raises(ValueError) as info:
        step(heavy, resources=resources)
    message = str(info.value)
    assert "heavy" in message
    for fragment in mentions:
        assert fragment in message


def test_resources_must_be_a_mapping():
    with pytest.raises(TypeError, match="dict"):
        step(lambda a: a, resources=["cores", 2])


def test_memory_bare_number_string_is_megabytes():
    assert step(lambda a: a, resources={"memory": "500"}).resources.memory_mb == 500


def test_small_float_memory_is_not_zero():
    try:
        mb = step(lambda a: a, resources={"memory": 0.5}).resources.memory_mb
    except ValueError:
        return
    assert mb >= 1


# -- signatures and returns -----------------------------------------------------------------


def test_var_positional_is_rejected_with_a_reason():
    def f(a, *args):
        return a

    with pytest.raises(TypeError) as info:
        step(f)
    message = str(info.value)
    assert "'f'" in message
    assert "*args" in message
    assert "by name" in message


def test_var_keyword_is_rejected_with_a_reason():
    def f(a, **options):
        return a

    with pytest.raises(TypeError) as info:
        step(f, returns="x")
    message = str(info.value)
    assert "**options" in message
    assert "by name" in message


def test_positional_only_is_rejected_with_a_reason():
    def f(a, /, b):
        return a

    with pytest.raises(TypeError) as info:
        step(f)
    message = str(info.value)
    assert "'a'" in message
    assert "positional-only" in message
    assert "by name" in message


def test_rejection_happens_in_decorator_form_too():
    with pytest.raises(TypeError, match="positional-only"):

        @step(returns="r")
        def f(a, /):
            return a


def test_not_callable_is_rejected():
    with pytest.raises(TypeError):
        step(42)


@pytest.mark.parametrize(
    ("returns", "error"),
    [
        ("", ValueError),
        ("a b", ValueError),
        ("1a", ValueError),
        (("a", "a"), ValueError),
        (("a", 1), ValueError),
        ((), TypeError),
        (5, TypeError),
        (None, TypeError),
    ],
)
def test_invalid_returns(returns, error):
    with pytest.raises(error):
        step(lambda a: a, returns=returns)


# -- output_values --------------------------------------------------------------------------


def test_output_values_single_return_keeps_the_whole_result():
    s = step(lambda a: a, returns="pair")
    assert s.output_values((1, 2)) == {"pair": (1, 2)}
    assert s.output_values(None) == {"pair": None}


def test_output_values_splits_a_tuple():
    s = step(lambda a: a, returns=("mesh", "coarse_mesh"))
    assert s.output_values(("fine", "coarse")) == {"mesh": "fine", "coarse_mesh": "coarse"}


@pytest.mark.parametrize(
    ("result", "got"),
    [(("only",), "a tuple of 1"), ((1, 2, 3), "a tuple of 3"), ([1, 2], "list"), (7, "int")],
)
def test_output_values_wrong_shape_is_a_missing_output_error(result, got):
    def pair(a):
        return a

    s = step(pair, returns=("a", "b"))
    with pytest.raises(MissingOutputError) as info:
        s.output_values(result)
    message = str(info.value)
    assert "pair" in message
    assert "2" in message
    assert got in message
