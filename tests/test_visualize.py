"""Plan pictures: the DOT graph of a workflow and its PNG rendering (needs graphviz's ``dot``)."""

from __future__ import annotations

import html
import re
import shutil
import sys

import graphviz
import pytest
import seed_flows as sf

from parsl_flows import step
from parsl_flows.visualize import PNG, StepLook, plan_graph
from parsl_flows.workflow import first, map_

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot")

STEPS = [
    "make_geometry",
    "make_mesh",
    "make_materials",
    "run_electrostatics",
    "get_charge",
    "average_charge",
]
INPUTS = ["x", "y", "mesh_size", "coarse_mesh_size", "V_left", "V_right"]
OUTPUTS = ["geo", "mesh", "coarse_mesh", "materials", "electrostatics", "charge", "average_charge"]


def statement(dot: graphviz.Digraph, node_id: str) -> str:
    """The DOT statement that declares node ``node_id`` (labels may span lines)."""
    found = [s for s in dot.body if s.lstrip().startswith(f"{node_id} [")]
    assert len(found) == 1, f"{node_id} declared {len(found)} times in\n{dot.source}"
    return found[0]


def edges(dot: graphviz.Digraph) -> set[tuple[str, str]]:
    return set(re.findall(r"^\t(\S+) -> (\S+)", dot.source, flags=re.MULTILINE))


def png_bytes(picture) -> bytes:
    data = getattr(picture, "data", picture)
    assert isinstance(data, bytes)
    return data


@pytest.fixture(scope="module")
def total_graph() -> graphviz.Digraph:
    return sf.total_flow.visualize()


def test_visualize_is_a_digraph(total_graph):
    assert isinstance(total_graph, graphviz.Digraph)
    assert "total_electrostatics" in total_graph.source


@pytest.mark.parametrize("name", STEPS)
def test_steps_are_boxes(total_graph, name):
    assert "shape=box" in statement(total_graph, f"step__{name}")


@pytest.mark.parametrize("name", INPUTS + OUTPUTS)
def test_data_are_ovals(total_graph, name):
    declaration = statement(total_graph, f"data__{name}")
    assert "shape=ellipse" in declaration
    assert "shape=box" not in declaration


@pytest.mark.parametrize("name", INPUTS)
def test_inputs_are_grey(total_graph, name):
    assert "fillcolor=lightgrey" in statement(total_graph, f"data__{name}")


@pytest.mark.parametrize("name", OUTPUTS)
def test_outputs_are_not_grey(total_graph, name):
    assert "lightgrey" not in statement(total_graph, f"data__{name}")


@pytest.mark.parametrize(
    "node_id",
    [
        "step__run_electrostatics",
        "step__get_charge",
        "data__electrostatics",
        "data__charge",
        "data__V_left",
        "data__V_right",
    ],
)
def test_mapped_steps_and_data_are_red(total_graph, node_id):
    assert "color=red" in statement(total_graph, node_id)


@pytest.mark.parametrize(
    "node_id",
    [
        "step__make_geometry",
        "step__make_mesh",
        "step__average_charge",
        "data__geo",
        "data__x",
        "data__average_charge",
    ],
)
def test_plain_steps_and_data_are_not_red(total_graph, node_id):
    assert "red" not in statement(total_graph, node_id)


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("run_electrostatics", "V_left[a], V_right[b] -> electrostatics[a, b]"),
        ("get_charge", "electrostatics[i, j] -> charge[i, j]"),
    ],
)
def test_map_labels_show_the_mapspec(total_graph, name, spec):
    declaration = statement(total_graph, f"step__{name}")
    assert name in declaration
    assert spec in declaration


def test_plain_step_label_has_no_mapspec(total_graph):
    assert "->" not in statement(total_graph, "step__make_geometry")


def test_edges_follow_the_data(total_graph):
    found = edges(total_graph)
    expected = {
        ("data__x", "step__make_geometry"),
        ("data__y", "step__make_geometry"),
        ("step__make_geometry", "data__geo"),
        ("data__geo", "step__make_mesh"),
        ("data__mesh_size", "step__make_mesh"),
        ("data__coarse_mesh_size", "step__make_mesh"),
        ("data__geo", "step__make_materials"),
        ("step__make_materials", "data__materials"),
        ("step__make_mesh", "data__mesh"),
        ("step__make_mesh", "data__coarse_mesh"),
        ("data__mesh", "step__run_electrostatics"),
        ("data__materials", "step__run_electrostatics"),
        ("data__V_left", "step__run_electrostatics"),
        ("data__V_right", "step__run_electrostatics"),
        ("step__run_electrostatics", "data__electrostatics"),
        ("data__electrostatics", "step__get_charge"),
        ("step__get_charge", "data__charge"),
        ("data__charge", "step__average_charge"),
        ("step__average_charge", "data__average_charge"),
    }
    assert found == expected


def test_mapped_edges_are_red(total_graph):
    assert re.search(r"data__V_left -> step__run_electrostatics \[color=red\]", total_graph.source)
    assert re.search(r"data__mesh -> step__run_electrostatics\n", total_graph.source)


def test_returned_outputs_are_marked(total_graph):
    assert "peripheries=2" in statement(total_graph, "data__electrostatics")
    assert "peripheries=2" in statement(total_graph, "data__average_charge")
    assert "peripheries" not in statement(total_graph, "data__charge")


def test_restarts_show_in_the_label():
    dot = sf.total_flow_with_restarts.visualize()
    assert "max_restarts=5" in statement(dot, "step__modified_get_charge")
    assert "max_restarts" not in statement(dot, "step__modified_electrostatics")


def test_new_parameters_of_replaced_steps_are_grey_inputs():
    dot = sf.new_flow.visualize()
    for name in ("V_limits", "failure_probability", "mesh_error"):
        assert "fillcolor=lightgrey" in statement(dot, f"data__{name}")


def test_rendered_map_box_puts_the_mapspec_on_its_own_line(total_graph):
    svg = total_graph.pipe(format="svg").decode()
    lines = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    assert "run_electrostatics" in lines
    assert "V_left[a], V_right[b] -> electrostatics[a, b]" in lines


def test_looks_colour_run_steps():
    dot = plan_graph(sf.total_flow, {"get_charge": StepLook("orange", "3 failed", dashed=True)})
    declaration = statement(dot, "step__get_charge")
    assert "fillcolor=orange" in declaration
    assert "3 failed" in declaration
    assert "dashed" in declaration
    assert "orange" not in statement(dot, "step__make_mesh")


# -- pictures -------------------------------------------------------------------------------


def test_as_png_returns_png_bytes():
    picture = sf.total_flow.visualize(as_png=True)
    assert png_bytes(picture).startswith(PNG_SIGNATURE)


def test_as_png_without_ipython_returns_png_bytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython.display", None)
    picture = sf.total_flow.visualize(as_png=True)
    assert isinstance(picture, PNG)
    assert bytes(picture).startswith(PNG_SIGNATURE)
    assert picture._repr_png_().startswith(PNG_SIGNATURE)


def test_filename_writes_a_png(tmp_path):
    target = tmp_path / "plan.png"
    result = sf.total_flow.visualize(filename=target)
    assert isinstance(result, graphviz.Digraph)
    assert target.read_bytes().startswith(PNG_SIGNATURE)


def test_filename_as_string_in_a_new_directory(tmp_path):
    target = tmp_path / "pictures" / "plan.png"
    sf.total_flow.visualize(filename=str(target))
    assert target.read_bytes().startswith(PNG_SIGNATURE)


def test_filename_suffix_chooses_the_format(tmp_path):
    target = tmp_path / "plan.svg"
    sf.total_flow.visualize(filename=target)
    text = target.read_text()
    assert "<svg" in text
    assert "run_electrostatics" in text


def test_filename_and_as_png_together(tmp_path):
    target = tmp_path / "plan.png"
    picture = sf.total_flow.visualize(as_png=True, filename=target)
    assert png_bytes(picture).startswith(PNG_SIGNATURE)
    assert target.read_bytes().startswith(PNG_SIGNATURE)


def test_missing_dot_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RuntimeError, match="graphviz"):
        sf.total_flow.visualize(as_png=True)


@pytest.mark.parametrize("name", ["graph", "my flow: v2", 'say "hi"', "a-b"])
def test_awkward_names_still_render(name):
    @step(returns="edge")
    def node(subgraph):
        return subgraph

    flow = first(map_(node, "subgraph[i] -> edge[i]")).rename(name)
    assert png_bytes(flow.visualize(as_png=True)).startswith(PNG_SIGNATURE)
