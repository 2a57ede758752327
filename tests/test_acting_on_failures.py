"""Failures you can act on: reproduce an element here, recompute a selection, preview.

One seed run (real local HTEX, ``V_limits=[-0.4, 0.4]``: 136 of 200 electrostatics
elements fail) is shared by the module; restarts of it run for real.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import numpy as np
import pytest
import seed_flows as seed
import xarray as xr
from helpers import assert_usage_error, cli

import parsl_flows as flows
from parsl_flows.reproduce import ElementInputMissing
from parsl_flows.selection import parse_selection, select_elements

pytestmark = pytest.mark.slow

V_LEFT = np.linspace(0, 1, 10)
V_RIGHT = np.linspace(-0.5, 0.5, 20)


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory: pytest.TempPathFactory, local_env) -> flows.Run:
    store = tmp_path_factory.mktemp("acting") / "store"
    inputs = seed.seed_inputs(mesh_error=False, failure_probability=0.0)
    builder = flows.workflow.build(seed.new_flow.on(local_env), **inputs)
    run = flows.submit(builder, store=store).wait(300)
    assert run.step("modified_electrostatics").record.n_failed == 136
    return run


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- reproduce -------------------------------------------------------------------------------


def test_a_failed_element_raises_its_exception_here_with_a_traceback(seed_run):
    st = seed_run.step("modified_electrostatics")
    with pytest.raises(ValueError, match=r"Voltages \(1.0, 0.5\) out of acceptable range") as e:
        st.reproduce(V_left=1.0, V_right=0.5)
    frames = [f.name for f in traceback.extract_tb(e.value.__traceback__)]
    assert frames[-1] == "modified_electrostatics"  # the user's own frame: pdb lands there
    stored = st.outputs.exception[9, 19]
    assert str(stored) == str(e.value)


def test_an_element_is_named_by_values_labels_or_flat_index(seed_run):
    st = seed_run.step("modified_electrostatics")
    by_values = st.reproduce(V_left=V_LEFT[1], V_right=0.0263)  # nearest, close enough
    by_labels = st.reproduce(a=1, b=10)
    by_flat = st.reproduce(n=30)
    stored = st.outputs.return_values.electrostatics[1, 10]
    assert by_values == by_labels == by_flat == stored
    assert st.reproduce(V_left=np.float64(V_LEFT[1]), b=10) == stored  # mixed


def test_bad_names_of_an_element_say_what_names_it(seed_run):
    st = seed_run.step("modified_electrostatics")
    with pytest.raises(KeyError, match="index labels a, b; swept values V_left, V_right"):
        st.reproduce(q=1)
    with pytest.raises(
        KeyError, match=r"no element with V_left=1\.5 \(the nearest has V_left=1\.0\)"
    ):
        st.reproduce(V_left=1.5, b=1)
    assert st.reproduce(V_left=0.3, V_right=-0.1) == st.reproduce(a=3, b=8)  # the nearest
    with pytest.raises(ValueError, match="names 20 elements; also give b"):
        st.reproduce(a=1)
    with pytest.raises(IndexError, match="elements 0 to 199"):
        st.reproduce(n=200)


def test_an_element_whose_input_is_masked_says_so(seed_run):
    with pytest.raises(ElementInputMissing, match="no value of its input 'electrostatics'"):
        seed_run.step("modified_get_charge").reproduce(a=9, b=19)


def test_plain_steps_reproduce_too(seed_run):
    geo = seed_run.step("make_geometry").reproduce()
    assert geo == seed.Geometry(x=0.15, y=0.25)
    assert seed_run.step("average_charge").reproduce() == pytest.approx(
        seed_run.outputs.return_values.avg_electrostatic_charge.fetch_value()
    )


def test_reproduce_on_the_command_line(seed_run):
    store, cwd = seed_run.path.parents[1], seed_run.path.parent
    before = _tree(store)
    failed = cli("--store", str(store), "reproduce", seed_run.id, "modified_electrostatics",
                 "V_left=1.0", "V_right=0.5", cwd=cwd, check=1)  # fmt: skip
    assert "Traceback (most recent call last)" in failed.stderr
    assert "ValueError: Voltages (1.0, 0.5) out of acceptable range" in failed.stderr
    ok = cli("--store", str(store), "reproduce", seed_run.id, "modified_electrostatics",
             "a=1", "b=10", cwd=cwd, check=0)  # fmt: skip
    assert ok.stdout.startswith("Electrostatics(")
    bad = cli("--store", str(store), "reproduce", seed_run.id, "modified_electrostatics", "q=1",
              cwd=cwd)  # fmt: skip
    assert_usage_error(bad, "no 'q' to name an element by")
    assert _tree(store) == before  # nothing written


# -- selections ------------------------------------------------------------------------------


def test_selections_pick_the_elements_they_name(seed_run):
    path = seed_run.step("modified_electrostatics").path
    failed = select_elements(path, "failed")
    assert len(failed) == 136
    assert np.array_equal(select_elements(path, ValueError), failed)
    assert np.array_equal(select_elements(path, "ValueError"), failed)
    assert len(select_elements(path, KeyError)) == 0
    high = select_elements(path, {"V_left": slice(0.3, 0.5)})
    assert np.array_equal(high, np.arange(60, 100))  # V_left 1/3 and 4/9: rows 3 and 4
    assert np.array_equal(select_elements(path, "V_left>0.5"), np.arange(100, 200))
    assert np.array_equal(select_elements(path, "b<2"), np.sort(np.r_[0:200:20, 1:200:20]))
    mask = xr.DataArray(V_RIGHT > 0, dims=["b"])  # broadcast over a
    assert len(select_elements(path, mask)) == 100
    with pytest.raises(TypeError, match=r"boolean array of shape \(10, 20\)"):
        select_elements(path, np.ones((3, 3), bool))
    assert parse_selection("s:V_left>0.3") == ("s", "V_left>0.3")


def test_recompute_a_selection_and_what_reads_it(seed_run):
    chosen = {"modified_electrostatics": {"V_left": slice(0.3, 0.5)}}  # 40, 16 of them ok
    builder = seed_run.get_builder_restart(recompute=chosen)
    preview = flows.preview(builder)
    run = flows.submit(builder, store=seed_run.path.parents[1]).wait(300)
    es, charge = run.step("modified_electrostatics").record, run.step("modified_get_charge").record
    assert (es.n_reused, es.n_submitted, es.n_done) == (48, 136 + 16, 64)
    assert (charge.n_reused, charge.n_submitted) == (48, 16)  # only those that read them
    assert run.step("average_charge").record.n_reused == 0  # it reads every charge
    assert run.step("make_geometry").record.n_reused == 1
    rows = {s.name: s for s in preview.steps}
    assert (rows["modified_electrostatics"].reuse, rows["modified_electrostatics"].compute) == (
        48,
        152,
    )
    assert (rows["modified_get_charge"].reuse, rows["modified_get_charge"].compute) == (48, 152)
    assert "computing 40 elements again as asked" in run.step("modified_electrostatics").log()


def test_a_restart_without_recompute_previews_what_it_runs(seed_run):
    builder = seed_run.get_builder_restart()
    builder.kwargs.V_limits = [-0.5, 0.5]  # more elements pass: they are computed
    store = seed_run.path.parents[1]
    before = _tree(store)
    preview = flows.preview(builder)
    assert _tree(store) == before  # nothing written, no Parsl run folder
    rows = {s.name: s for s in preview.steps}
    assert rows["modified_electrostatics"].reuse == 0  # V_limits is an input of every element
    assert rows["make_geometry"].reuse == 1 and rows["make_geometry"].compute == 0
    assert "2 steps" not in str(preview) and "modified_get_charge" in str(preview)


def test_recompute_is_checked_before_anything_runs(seed_run, local_env):
    store = seed_run.path.parents[1]
    before = len(os.listdir(store / "runs"))
    builder = seed_run.get_builder_restart(recompute={"modified_get_charge": "failed"})
    builder.kwargs.V_left = np.linspace(0, 1, 5)  # the chosen elements were of a 10 x 20 map
    with pytest.raises(ValueError, match=r"chosen over its shape \(10, 20\)"):
        flows.submit(builder, store=store)
    with pytest.raises(KeyError, match="no step 'nope'"):
        seed_run.get_builder_restart(recompute={"nope": "failed"})
    plain = flows.workflow.build(seed.new_flow.on(local_env), **seed.seed_inputs())
    plain.recompute = {"modified_get_charge": np.array([1])}
    with pytest.raises(ValueError, match="this builder is not a restart"):
        flows.submit(plain, store=store)
    assert len(os.listdir(store / "runs")) == before


def test_restart_recompute_and_dry_run_on_the_command_line(seed_run):
    store, cwd = seed_run.path.parents[1], seed_run.path.parent
    before = _tree(store)
    dry = cli("--store", str(store), "restart", seed_run.id, "--recompute",
              "modified_electrostatics:V_left>0.8", "--dry-run", cwd=cwd, check=0)  # fmt: skip
    assert "preview of the restart of run" in dry.stdout
    line = next(x for x in dry.stdout.splitlines() if x.startswith("modified_electrostatics"))
    assert line.split()[1:4] == ["200", "64", "136"]  # V_left > 0.8 all failed: no change
    assert _tree(store) == before
    bad = cli("--store", str(store), "restart", seed_run.id, "--recompute", "nope:failed",
              "--dry-run", cwd=cwd)  # fmt: skip
    assert_usage_error(bad, "no step 'nope'")
    resume = cli("--store", str(store), "resume", seed_run.id, "--dry-run", cwd=cwd, check=0)
    assert "0 elements to compute" in resume.stdout


def test_recomputing_a_plain_step_recomputes_all_that_reads_it(seed_run):
    builder = seed_run.get_builder_restart(recompute={"modified_make_mesh": "all"})
    rows = {s.name: s for s in flows.preview(builder).steps}
    assert (rows["make_geometry"].reuse, rows["make_materials"].reuse) == (1, 1)  # upstream
    assert rows["modified_make_mesh"].compute == 1
    assert rows["modified_electrostatics"].compute == 200  # every element reads the mesh
    assert rows["modified_electrostatics"].reuse == 0
    with pytest.raises(TypeError, match="plain call: select it with True, 'all', 'failed'"):
        seed_run.get_builder_restart(recompute={"make_geometry": {"a": 1}})
