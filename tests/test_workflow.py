"""The workflow algebra and build(): the seed notebook's flows and every error the plan makes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import seed_flows as sf

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.mapspec import MapSpec
from parsl_flows.workflow import (
    Builder,
    Call,
    Map,
    Workflow,
    build,
    concurrently,
    first,
    map_,
    new_workflow,
)

SEED_FLOWS = [
    "model_flow",
    "electrostatics_flow",
    "total_flow",
    "new_flow",
    "electrostatics_flow_with_restarts",
    "total_flow_with_restarts",
]
TOTAL_PARAMETERS = {"x", "y", "mesh_size", "coarse_mesh_size", "V_left", "V_right"}


def inputs_for(flow: Workflow, **changes):
    """The seed inputs that ``flow`` takes (plus objects for intermediate values)."""
    extra = {"mesh": sf.Mesh(sf.Geometry(0.1, 0.2), 0.01), "materials": "m"}
    everything = {**sf.seed_inputs(), **extra, **changes}
    return {k: v for k, v in everything.items() if k in flow.parameters}


# small steps for the algebra tests


@step(returns="b")
def a_to_b(a):
    return a


@step(returns="c")
def b_to_c(b):
    return b


@step(returns="d")
def a_to_d(a):
    return a


@step(returns="z")
def add(x, y):
    return x + y


@step(returns="w")
def scale(z, factor):
    return z * factor


# -- seed acceptance ------------------------------------------------------------------------


def test_total_flow_parameters():
    assert sf.total_flow.parameters == TOTAL_PARAMETERS


def test_new_flow_adds_exactly_the_new_parameters():
    assert sf.new_flow.parameters - sf.total_flow.parameters == {
        "V_limits",
        "failure_probability",
        "mesh_error",
    }
    assert sf.total_flow.parameters <= sf.new_flow.parameters


def test_total_flow_returns():
    assert sf.total_flow.returns == ("electrostatics", "avg_electrostatic_charge")
    assert sf.total_flow.returned_outputs == (
        ("electrostatics", "electrostatics"),
        ("avg_electrostatic_charge", "average_charge"),
    )


def test_total_flow_outputs_and_steps():
    assert sf.total_flow.all_outputs == {
        "geo",
        "mesh",
        "coarse_mesh",
        "materials",
        "electrostatics",
        "charge",
        "average_charge",
    }
    assert sf.total_flow.step_names == (
        "make_geometry",
        "make_mesh",
        "make_materials",
        "run_electrostatics",
        "get_charge",
        "average_charge",
    )
    assert [len(stage) for stage in sf.total_flow.stages] == [1, 2, 1, 1, 1]
    assert sf.total_flow.name == "total_electrostatics"


def test_seed_maps():
    node = sf.total_flow.node("run_electrostatics")
    assert isinstance(node, Map)
    assert str(node.mapspec) == "V_left[a], V_right[b] -> electrostatics[a, b]"
    assert node.mapped_parameters == ("V_left", "V_right")
    assert not isinstance(sf.total_flow.node("make_geometry"), Map)
    assert sf.total_flow.mapped_parameters == {"V_left", "V_right"}


def test_model_flow_and_electrostatics_flow_parameters():
    assert sf.model_flow.parameters == {"x", "y", "mesh_size", "coarse_mesh_size"}
    assert sf.electrostatics_flow.parameters == {"mesh", "materials", "V_left", "V_right"}
    assert sf.electrostatics_flow.returns == ("electrostatics", "charge", "average_charge")


def test_replace_steps_in_the_seed():
    assert sf.new_flow.name == "total_flow_with_failures"
    assert sf.new_flow.step_names == (
        "make_geometry",
        "modified_make_mesh",
        "make_materials",
        "modified_electrostatics",
        "modified_get_charge",
        "average_charge",
    )
    assert sf.new_flow.node("modified_make_mesh").step is sf.modified_make_mesh
    # the map keeps its mapspec with the new step
    node = sf.new_flow.node(sf.modified_electrostatics)
    assert isinstance(node, Map)
    assert str(node.mapspec) == "V_left[a], V_right[b] -> electrostatics[a, b]"
    assert sf.new_flow.returns == sf.total_flow.returns


def test_with_restarts_sets_max_restarts():
    flow = sf.total_flow_with_restarts
    assert flow.name == "flow_with_restarts"
    assert flow.node("modified_get_charge").max_restarts == 5
    assert flow.node(sf.modified_get_charge).max_restarts == 5
    assert isinstance(flow.node("modified_get_charge"), Map)
    assert flow.node("modified_electrostatics").max_restarts == 1
    assert sf.new_flow.node("modified_get_charge").max_restarts == 1


def test_map_max_restarts_in_the_seed():
    flow = sf.electrostatics_flow_with_restarts
    assert flow.node("get_charge").max_restarts == 5
    assert flow.node("run_electrostatics").max_restarts == 1
    assert flow.name == "run_electrostatics"


@pytest.mark.parametrize("name", SEED_FLOWS)
def test_every_seed_flow_builds(name):
    flow = getattr(sf, name)
    builder = flows.workflow.build(flow.on("test-env"), **inputs_for(flow))
    assert isinstance(builder, Builder)
    assert builder.workflow.environment == "test-env"
    assert set(builder.kwargs) == flow.parameters
    shapes = builder.validate()
    expected = {"electrostatics": (10, 20), "charge": (10, 20)}
    assert shapes == ({} if name == "model_flow" else expected)


def test_build_gives_map_shapes():
    shapes = build(sf.total_flow.on(object()), **inputs_for(sf.total_flow)).validate()
    assert shapes == {"electrostatics": (10, 20), "charge": (10, 20)}


def test_package_level_build_is_the_same():
    assert flows.build is flows.workflow.build


# -- composition ----------------------------------------------------------------------------


def test_then_accepts_steps_maps_concurrently_and_workflows():
    flow = (
        new_workflow("w")
        .then(a_to_b)
        .then(concurrently(b_to_c, a_to_d))
        .then(first(map_(add, "x[i], y[i] -> z[i]")))
    )
    assert [[n.name for n in s] for s in flow.stages] == [
        ["a_to_b"],
        ["b_to_c", "a_to_d"],
        ["add"],
    ]
    assert flow.parameters == {"a", "x", "y"}
    assert flow.all_outputs == {"b", "c", "d", "z"}
    assert flow.returns == ("b", "c", "d", "z")
    assert list(flow) == list(flow.nodes)
    assert all(isinstance(n, Call) for n in flow)


def test_first_names_the_plan():
    assert first(a_to_b).name == "a_to_b"
    assert first(map_(add, "x[i], y[i] -> z[i]")).name == "add"
    assert first(concurrently(a_to_b, a_to_d)).name == "a_to_b_a_to_d"
    flow = first(a_to_b)
    assert first(flow) is flow


def test_join_appends_the_other_plan():
    joined = first(a_to_b).join(first(b_to_c))
    assert joined.step_names == ("a_to_b", "b_to_c")
    assert joined.name == "a_to_b"
    assert joined.parameters == {"a"}


def test_join_needs_a_workflow():
    with pytest.raises(TypeError, match="then"):
        first(a_to_b).join(b_to_c)


def test_then_rejects_non_steps():
    with pytest.raises(TypeError, match="@step"):
        new_workflow("w").then(lambda a: a)


def test_rename_keeps_the_plan():
    renamed = sf.total_flow.rename("other")
    assert renamed.name == "other"
    assert renamed.stages == sf.total_flow.stages
    assert sf.total_flow.rename(name="kw").name == "kw"


@pytest.mark.parametrize("name", ["", None, 3])
def test_workflow_names_must_be_non_empty_strings(name):
    with pytest.raises(ValueError):
        new_workflow(name)
    with pytest.raises(ValueError):
        sf.total_flow.rename(name)


def test_parameters_are_step_parameters_minus_outputs():
    flow = first(add).then(scale)
    assert flow.parameters == {"x", "y", "factor"}
    assert flow.parameter_order == ("x", "y", "factor")
    assert flow.all_outputs == {"z", "w"}


def test_required_parameters_skip_defaults():
    @step(returns="r")
    def with_default(a, tolerance=1e-3):
        return a

    flow = first(with_default)
    assert flow.parameters == {"a", "tolerance"}
    assert flow.required_parameters == {"a"}
    built = build(flow.on("env"), a=1)
    assert dict(built.kwargs) == {"a": 1}
    assert build(flow.on("env"), a=1, tolerance=0.1).kwargs.tolerance == 0.1


# -- immutability ---------------------------------------------------------------------------


def test_plans_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        sf.total_flow.name = "changed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sf.total_flow.node("get_charge").max_restarts = 3  # type: ignore[misc]


def test_methods_return_new_plans_and_leave_the_old_unchanged():
    base = first(a_to_b)
    stages = base.stages
    longer = base.then(b_to_c)
    assert longer is not base
    assert base.stages == stages
    assert base.step_names == ("a_to_b",)

    joined = base.join(first(a_to_d))
    assert base.step_names == ("a_to_b",)
    assert joined.step_names == ("a_to_b", "a_to_d")

    renamed = base.rename("other")
    assert base.name == "a_to_b"
    assert renamed.name == "other"

    returning = longer.returning("c")
    assert longer.returns == ("b", "c")
    assert returning.returns == ("c",)

    placed = base.on("env")
    assert base.environment is None
    assert placed.environment == "env"


def test_replace_and_restarts_leave_the_old_plan_unchanged():
    replaced = sf.total_flow.replace_steps({sf.make_mesh: sf.modified_make_mesh})
    assert "make_mesh" in sf.total_flow.step_names
    assert "modified_make_mesh" in replaced.step_names
    assert "make_mesh" not in replaced.step_names
    assert "mesh_error" not in sf.total_flow.parameters
    assert "mesh_error" in replaced.parameters

    restarted = sf.total_flow.with_restarts({sf.get_charge: 3})
    assert restarted.node("get_charge").max_restarts == 3
    assert sf.total_flow.node("get_charge").max_restarts == 1


# -- concurrently ---------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [(), (a_to_b,)])
def test_concurrently_needs_two_steps(steps):
    with pytest.raises(ValueError, match="at least two"):
        concurrently(*steps)


def test_concurrently_rejects_overlapping_outputs():
    with pytest.raises(ValueError) as info:
        concurrently(sf.make_mesh, sf.modified_make_mesh)
    message = str(info.value)
    assert "'mesh'" in message
    assert "make_mesh" in message
    assert "modified_make_mesh" in message


@pytest.mark.parametrize(
    "order", [(sf.make_geometry, sf.make_mesh), (sf.make_mesh, sf.make_geometry)]
)
def test_concurrently_rejects_internal_dependencies(order):
    with pytest.raises(ValueError) as info:
        concurrently(*order)
    message = str(info.value)
    assert "'geo'" in message
    assert "make_mesh" in message
    assert "make_geometry" in message


def test_concurrently_accepts_maps():
    both = concurrently(map_(a_to_b, "a[i] -> b[i]"), a_to_d)
    flow = first(both)
    assert isinstance(flow.node("a_to_b"), Map)
    assert flow.parameters == {"a"}


def test_concurrently_rejects_non_steps():
    with pytest.raises(TypeError):
        concurrently(a_to_b, "a_to_d")


# -- dataflow order and names ---------------------------------------------------------------


def test_consuming_an_output_produced_only_later_is_an_error():
    with pytest.raises(ValueError) as info:
        first(b_to_c).then(a_to_b)
    message = str(info.value)
    assert "'b'" in message
    assert "b_to_c" in message
    assert "a_to_b" in message


def test_consuming_a_later_output_via_join_is_an_error():
    with pytest.raises(ValueError, match="later"):
        first(b_to_c).join(first(a_to_b))


def test_consuming_a_later_map_output_is_an_error():
    with pytest.raises(ValueError, match="later"):
        first(b_to_c).then(map_(a_to_b, "a[i] -> b[i]"))


def test_duplicate_output_names_are_errors():
    @step(returns="geo")
    def other_geometry(x):
        return x

    with pytest.raises(ValueError) as info:
        sf.model_flow.then(other_geometry)
    assert "'geo'" in str(info.value)
    assert "make_geometry" in str(info.value)


def test_duplicate_outputs_across_joined_flows_are_errors():
    @step(returns="b")
    def also_b(q):
        return q

    with pytest.raises(ValueError, match="'b'"):
        first(a_to_b).join(first(also_b))


def test_the_same_step_twice_is_an_error():
    with pytest.raises(ValueError, match="a_to_b"):
        first(a_to_b).then(map_(a_to_b, "a[i] -> b[i]"))


def test_step_reading_its_own_output_is_an_error():
    @step(returns="x")
    def update(x):
        return x + 1

    with pytest.raises(ValueError):
        new_workflow("w").then(update)


# -- map_ -----------------------------------------------------------------------------------


def test_map_parses_the_spec_and_keeps_options():
    node = map_(sf.get_charge, "electrostatics[i, j] -> charge[i, j]", max_restarts=5)
    assert isinstance(node, Map)
    assert isinstance(node.mapspec, MapSpec)
    assert node.max_restarts == 5
    assert node.is_map
    assert node.outputs == ("charge",)
    assert node.mapped_parameters == ("electrostatics",)


def test_map_accepts_a_parsed_spec():
    spec = MapSpec.from_string("a[i] -> b[i]")
    assert map_(a_to_b, spec).mapspec is spec


def test_map_with_several_outputs():
    node = map_(sf.make_mesh, "geo[i] -> mesh[i], coarse_mesh[i]")
    assert node.outputs == ("mesh", "coarse_mesh")


def test_map_spec_input_must_be_a_parameter():
    with pytest.raises(ValueError) as info:
        map_(sf.get_charge, "e[i] -> charge[i]")
    message = str(info.value)
    assert "'e'" in message
    assert "get_charge" in message
    assert "electrostatics" in message


def test_map_spec_outputs_must_be_the_returns():
    with pytest.raises(ValueError) as info:
        map_(sf.get_charge, "electrostatics[i] -> q[i]")
    assert "charge" in str(info.value)
    assert "q" in str(info.value)


def test_map_spec_must_name_every_return():
    with pytest.raises(ValueError, match="coarse_mesh"):
        map_(sf.make_mesh, "geo[i] -> mesh[i]")


def test_map_invalid_spec_text_is_an_error():
    with pytest.raises(ValueError, match="position"):
        map_(sf.get_charge, "electrostatics[i] charge[i]")


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_map_max_restarts_must_be_a_positive_int(n):
    with pytest.raises(ValueError, match="max_restarts"):
        map_(sf.get_charge, "electrostatics[i] -> charge[i]", max_restarts=n)


def test_map_needs_a_step():
    with pytest.raises(TypeError, match="@step"):
        map_(sf.get_charge.callable, "electrostatics[i] -> charge[i]")


# -- replace_steps --------------------------------------------------------------------------


def test_replace_steps_by_name():
    replaced = sf.total_flow.replace_steps({"make_mesh": sf.modified_make_mesh})
    assert replaced.node("modified_make_mesh").step is sf.modified_make_mesh


def test_replace_steps_extra_parameters_become_workflow_parameters():
    replaced = sf.total_flow.replace_steps({sf.get_charge: sf.modified_get_charge})
    assert replaced.parameters == TOTAL_PARAMETERS | {"failure_probability"}


def test_replacement_missing_a_parameter_is_an_error():
    @step(returns=("mesh", "coarse_mesh"))
    def coarse_less(geo, mesh_size):
        return geo, geo

    with pytest.raises(ValueError) as info:
        sf.total_flow.replace_steps({sf.make_mesh: coarse_less})
    message = str(info.value)
    assert "coarse_less" in message
    assert "'coarse_mesh_size'" in message


def test_replacement_missing_a_mapped_parameter_is_an_error():
    @step(returns="electrostatics")
    def no_left(mesh, materials, V_right):
        return V_right

    with pytest.raises(ValueError, match="'V_left'"):
        sf.total_flow.replace_steps({sf.run_electrostatics: no_left})


@pytest.mark.parametrize("returns", [("mesh",), ("mesh", "coarse_mesh", "extra"), ("a", "b")])
def test_replacement_returning_other_names_is_an_error(returns):
    replacement = step(lambda geo, mesh_size, coarse_mesh_size: None, returns=returns)
    with pytest.raises(ValueError, match="same names"):
        sf.total_flow.replace_steps({sf.make_mesh: replacement})


def test_replacing_an_unknown_step_is_an_error():
    with pytest.raises(ValueError) as info:
        sf.total_flow.replace_steps({sf.modified_make_mesh: sf.make_mesh})
    message = str(info.value)
    assert "modified_make_mesh" in message
    assert "make_geometry" in message  # lists the steps there are


def test_replacing_an_unknown_step_name_is_an_error():
    with pytest.raises(ValueError, match="'nope'"):
        sf.total_flow.replace_steps({"nope": sf.make_mesh})


def test_replacement_must_be_a_step():
    with pytest.raises(TypeError):
        sf.total_flow.replace_steps({sf.make_mesh: sf.modified_make_mesh.callable})


def test_replacement_reading_a_later_output_is_an_error():
    @step(returns="geo")
    def geometry_from_charge(x, y, charge):
        return x

    with pytest.raises(ValueError, match="later"):
        sf.total_flow.replace_steps({sf.make_geometry: geometry_from_charge})


def test_replacement_may_not_depend_on_a_concurrent_sibling():
    @step(returns="materials")
    def materials_from_mesh(geo, mesh):
        return mesh

    with pytest.raises(ValueError):
        sf.model_flow.replace_steps({sf.make_materials: materials_from_mesh})


# -- with_restarts --------------------------------------------------------------------------


def test_with_restarts_by_name_and_on_plain_steps():
    flow = sf.total_flow.with_restarts({"make_mesh": 2, sf.get_charge: 4})
    assert flow.node("make_mesh").max_restarts == 2
    assert flow.node("get_charge").max_restarts == 4
    assert isinstance(flow.node("get_charge"), Map)


def test_with_restarts_unknown_step_is_an_error():
    with pytest.raises(ValueError, match="modified_get_charge"):
        sf.total_flow.with_restarts({sf.modified_get_charge: 5})


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_with_restarts_invalid_count(n):
    with pytest.raises(ValueError, match="max_restarts"):
        sf.total_flow.with_restarts({sf.get_charge: n})


# -- returning ------------------------------------------------------------------------------


def test_returning_names_and_renames():
    flow = first(a_to_b).then(b_to_c).returning("b", c="final")
    assert flow.returns == ("b", "final")
    assert flow.returned_outputs == (("b", "b"), ("final", "c"))


def test_returning_an_unknown_name_is_an_error():
    with pytest.raises(ValueError) as info:
        sf.total_flow.returning("nope")
    message = str(info.value)
    assert "'nope'" in message
    assert "average_charge" in message  # lists what can be returned


def test_returning_an_unknown_name_to_rename_is_an_error():
    with pytest.raises(ValueError, match="'nope'"):
        sf.total_flow.returning(nope="x")


def test_returning_a_parameter_is_an_error():
    with pytest.raises(ValueError, match="'x'"):
        sf.total_flow.returning("x")


def test_returning_the_same_name_twice_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        sf.total_flow.returning("charge", average_charge="charge")


# -- build ----------------------------------------------------------------------------------


def test_build_without_environment_is_an_error():
    with pytest.raises(ValueError) as info:
        build(sf.total_flow, **inputs_for(sf.total_flow))
    message = str(info.value)
    assert "total_electrostatics" in message
    assert ".on(" in message


def test_on_none_is_an_error():
    with pytest.raises(ValueError):
        sf.total_flow.on(None)


def test_build_lists_missing_and_surplus_inputs():
    inputs = inputs_for(sf.total_flow)
    del inputs["x"]
    del inputs["mesh_size"]
    inputs["bogus"] = 1
    inputs["also_bogus"] = 2
    with pytest.raises(ValueError) as info:
        build(sf.total_flow.on("env"), **inputs)
    message = str(info.value)
    for name in ("x", "mesh_size", "bogus", "also_bogus"):
        assert name in message
    assert "missing" in message
    assert "unknown" in message


def test_build_missing_only():
    inputs = inputs_for(sf.total_flow)
    del inputs["V_right"]
    with pytest.raises(ValueError, match=r"missing input.*V_right"):
        build(sf.total_flow.on("env"), **inputs)


def test_build_rejects_an_output_given_as_input():
    with pytest.raises(ValueError, match="geo"):
        build(sf.total_flow.on("env"), **inputs_for(sf.total_flow), geo=sf.Geometry(1, 2))


def test_build_needs_a_workflow():
    with pytest.raises(TypeError):
        build("total_flow")


@pytest.mark.parametrize(
    "value", [3.0, 7, "abc", np.float64(2.0), np.array(2.0), {1, 2}, None, {"a": 1}]
)
def test_mapped_input_must_be_a_sequence_or_array(value):
    with pytest.raises(ValueError) as info:
        build(sf.total_flow.on("env"), **inputs_for(sf.total_flow, V_left=value))
    message = str(info.value)
    assert "V_left" in message
    assert "run_electrostatics" in message


@pytest.mark.parametrize(
    "value", [[1.0, 2.0, 3.0], (1.0, 2.0, 3.0), range(3), np.arange(3.0), [object()] * 3]
)
def test_mapped_input_sequences_and_arrays(value):
    built = build(sf.total_flow.on("env"), **inputs_for(sf.total_flow, V_left=value))
    assert built.validate()["electrostatics"] == (3, 20)


def test_mapped_input_tuples_are_elements_in_a_list():
    flow = first(map_(a_to_b, "a[i] -> b[i]")).on("env")
    assert build(flow, a=[(1, 2), (3, 4), (5, 6)]).validate() == {"b": (3,)}


def test_zipped_lengths_must_agree():
    flow = first(map_(add, "x[i], y[i] -> z[i]")).on("env")
    with pytest.raises(ValueError) as info:
        build(flow, x=[1, 2, 3], y=[1, 2, 3, 4])
    message = str(info.value)
    assert "'i'" in message
    assert "3" in message
    assert "4" in message
    assert "add" in message


def test_zipped_lengths_agree():
    flow = first(map_(add, "x[i], y[i] -> z[i]")).on("env")
    assert build(flow, x=[1, 2, 3], y=np.arange(3)).validate() == {"z": (3,)}


def test_shapes_flow_through_maps_of_maps():
    flow = (
        first(map_(add, "x[i], y[j] -> z[i, j]"))
        .then(map_(scale, "z[i, j], factor[i] -> w[i, j]"))
        .on("env")
    )
    assert build(flow, x=[1, 2], y=[1, 2, 3], factor=[1, 1]).validate() == {
        "z": (2, 3),
        "w": (2, 3),
    }
    with pytest.raises(ValueError, match="'i'"):
        build(flow, x=[1, 2], y=[1, 2, 3], factor=[1, 1, 1])


def test_nested_lists_for_two_dimensional_maps():
    flow = first(map_(add, "x[i, j], y[j] -> z[i, j]")).on("env")
    assert build(flow, x=[[1, 2], [3, 4], [5, 6]], y=[0, 0]).validate() == {"z": (3, 2)}
    with pytest.raises(ValueError, match="ragged"):
        build(flow, x=[[1, 2], [3]], y=[0, 0])
    with pytest.raises(ValueError, match="rank 2"):
        build(flow, x=np.arange(3), y=[0, 0])
    with pytest.raises(ValueError):
        build(flow, x=[1, 2], y=[0, 0])


def test_mapped_parameter_with_default_is_still_required():
    @step(returns="r")
    def sweep(z, k=3):
        return z * k

    flow = first(map_(sweep, "z[i], k[j] -> r[i, j]")).on("env")
    with pytest.raises(ValueError, match="k"):
        build(flow, z=[1, 2])


def test_builder_kwargs_are_editable_by_attribute():
    builder = build(sf.new_flow.on("env"), **inputs_for(sf.new_flow))
    assert builder.kwargs.mesh_error is True
    builder.kwargs.mesh_error = False
    assert builder.kwargs["mesh_error"] is False
    assert builder.kwargs.mesh_error is False
    builder.validate()
    builder.kwargs.bogus = 1
    with pytest.raises(ValueError, match="bogus"):
        builder.validate()
    del builder.kwargs.bogus
    builder.validate()


def test_builder_kwargs_edits_are_revalidated():
    builder = build(sf.total_flow.on("env"), **inputs_for(sf.total_flow))
    builder.kwargs.V_left = 5.0
    with pytest.raises(ValueError, match="V_left"):
        builder.validate()
    builder.kwargs.V_left = [0.1, 0.2]
    assert builder.validate()["charge"] == (2, 20)


def test_builder_kwargs_unknown_attribute():
    builder = build(sf.total_flow.on("env"), **inputs_for(sf.total_flow))
    with pytest.raises(AttributeError, match="nope"):
        builder.kwargs.nope


def test_an_input_set_on_the_builder_itself_is_refused_with_the_right_spelling():
    builder = build(sf.total_flow.on("env"), **inputs_for(sf.total_flow))
    with pytest.raises(AttributeError, match=r"an input of that name\): set inputs as builder"):
        builder.V_left = [0.1]  # would be kept and ignored by the run
    with pytest.raises(AttributeError, match=r"no input of that name"):
        builder.nope = 1
    assert "V_left" not in vars(builder) and "nope" not in vars(builder)
    builder.restarted_from = "run-1"  # the builder's own fields stay settable


def test_build_does_not_run_anything():
    calls = []

    @step(returns="r")
    def spy(a):
        calls.append(a)
        return a

    build(first(spy).on("env"), a=1)
    build(first(map_(spy, "a[i] -> r[i]")).on("env"), a=[1, 2])
    assert calls == []
