"""End-to-end runs on a real local Parsl HighThroughputExecutor (no mocks)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import seed_flows as seed

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.errors import InfrastructureError
from parsl_flows.workflow import concurrently, map_, new_workflow

pytestmark = pytest.mark.slow


def run(flow, env, store, **inputs):
    return flows.submit(flows.workflow.build(flow.on(env), **inputs), store=store).wait(300)


# -- the seed notebook's story -------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh_error_run(local_env, tmp_path_factory):
    store = tmp_path_factory.mktemp("seed")
    return run(seed.new_flow, local_env, store, **seed.seed_inputs(mesh_error=True))


@pytest.fixture(scope="module")
def no_mesh_error_run(mesh_error_run):
    builder = mesh_error_run.get_builder_restart()
    builder.kwargs.mesh_error = False
    return flows.submit(builder, store=mesh_error_run.path.parents[1]).wait(300)


def test_mesh_error_fails_the_mesh_step_and_skips_what_needs_it(mesh_error_run):
    r = mesh_error_run
    assert r.exit_code == 450
    assert r.status == "failed"
    assert [s.name for s in r.called] == ["make_geometry", "modified_make_mesh", "make_materials"]
    assert [s.exit_code for s in r.called] == [0, 401, 0]
    exc = r.called[1].outputs.exception.fetch_value()
    assert isinstance(exc, ValueError) and str(exc) == "Meshing step failed"
    assert "User code raised an Exception" in flows.report.log(r.called[1])
    for name, missing in [
        ("modified_electrostatics", "mesh"),
        ("modified_get_charge", "electrostatics"),
        ("average_charge", "charge"),
    ]:
        s = r.step(name)
        assert s.status == "skipped"
        assert missing in s.record.missing_inputs
        assert f"step {name} skipped because of missing input(s) {missing}" in flows.report.log(r)
    assert "mesh" not in r.called[1].outputs.return_values
    progress = flows.report.progress(r)
    assert "modified_make_mesh" in progress and "skipped" in progress


def test_restart_without_mesh_error_masks_exactly_the_out_of_range_elements(no_mesh_error_run):
    r = no_mesh_error_run
    assert r.exit_code == 450
    electrostatics_step = r.called[3]
    assert electrostatics_step.name == "modified_electrostatics"
    assert electrostatics_step.exit_code == 401
    inputs = seed.seed_inputs()
    vl, vr = np.meshgrid(inputs["V_left"], inputs["V_right"], indexing="ij")
    bad = ~((vl > -0.4) & (vl < 0.4) & (vr > -0.4) & (vr < 0.4))
    electrostatics = electrostatics_step.outputs.return_values.electrostatics
    assert electrostatics.shape == (10, 20)
    np.testing.assert_array_equal(electrostatics.mask, bad)
    exceptions = electrostatics_step.outputs.exception.fetch_value()
    np.testing.assert_array_equal(np.ma.getmaskarray(exceptions), ~bad)
    assert all("out of acceptable range" in str(e) for e in exceptions.compressed())
    value = electrostatics[3, 5]
    assert isinstance(value, seed.Electrostatics)  # the class round-trips to the same class
    assert value.voltages == [inputs["V_left"][3], inputs["V_right"][5]]


def test_downstream_map_submits_only_unmasked_coordinates(no_mesh_error_run):
    r = no_mesh_error_run
    get_charge_step = r.called[4]
    assert get_charge_step.attributes["submitted_elements"] == "2-17,22-37,42-57,62-77"
    assert get_charge_step.record.n_submitted == 64
    charge = get_charge_step.outputs.return_values.charge
    electrostatics = r.called[3].outputs.return_values.electrostatics
    assert np.all(charge.mask[electrostatics.mask])  # never computed where inputs are masked
    avg = r.outputs.return_values.avg_electrostatic_charge.fetch_value()
    assert avg == pytest.approx(np.mean(charge.to_array()))
    assert r.step("average_charge").exit_code == 0


def test_load_run_reads_the_same_from_the_store(no_mesh_error_run):
    again = flows.load_run(no_mesh_error_run.path)
    assert again.exit_code == 450
    assert [s.name for s in again.called] == [s.name for s in no_mesh_error_run.called]
    assert again.called[4].attributes["submitted_elements"] == "2-17,22-37,42-57,62-77"
    by_prefix = flows.load_run(again.id[:-2], store=again.path.parents[1])
    assert by_prefix.path == again.path


def test_run_graph_colours_steps_by_outcome(no_mesh_error_run):
    dot = flows.report.graph(no_mesh_error_run)
    src = dot.source
    assert "fillcolor=orange" in src  # the partial electrostatics map
    assert "fillcolor=palegreen" in src
    assert "64/200 done, 136 failed" in src
    png = flows.report.graph(no_mesh_error_run, as_png=True)
    data = getattr(png, "data", png)
    assert bytes(data[:8]) == b"\x89PNG\r\n\x1a\n"


# -- engine behaviours ---------------------------------------------------------------------


@step(returns="blob")
def make_blob(i: int, size: int) -> bytes:
    return bytes([i % 256]) * size


@step(returns="total")
def blob_total(blob) -> int:
    return int(sum(len(b) for b in blob.to_array().compressed()))


def test_large_map_results_stay_in_the_store(local_env, store):
    n, size = 1000, 100_000  # 100 MB of results in all
    flow = new_workflow("blobs").then(map_(make_blob, "i[k] -> blob[k]"))
    tracemalloc.start()
    try:
        r = run(flow, local_env, store, i=list(range(n)), size=size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.exit_code == 0
    assert peak < 40e6, f"the driver held {peak / 1e6:.0f} MB; results should stay on disk"
    blobs = r.called[0].outputs.return_values.blob
    assert blobs.shape == (n,) and not blobs.mask.any()
    assert blobs[999] == bytes([999 % 256]) * size
    names = os.listdir(r.called[0].path / "return_values" / "blob")
    tasks = [name for name in names if name.startswith("task-")]
    assert sorted(set(names) - set(tasks)) == ["index.npz"]  # a file per task, not per element
    assert 1 <= len(tasks) < n // 5


@step(returns="y")
def dies_at_three(x: int) -> int:
    if x == 3:
        os._exit(1)  # the worker process dies, as in a segfault or an OOM kill
    return x * 10


def test_a_lost_worker_is_an_infrastructure_failure_of_its_element_only(local_env, store):
    flow = new_workflow("lost").then(map_(dies_at_three, "x[i] -> y[i]"))
    r = run(flow, local_env, store, x=list(range(8)))
    s = r.called[0]
    assert s.exit_code == 402
    y = s.outputs.return_values.y
    assert y.mask.tolist() == [i == 3 for i in range(8)]
    assert y.to_array().compressed().tolist() == [0, 10, 20, 40, 50, 60, 70]
    exc = s.outputs.exception[3]
    assert isinstance(exc, InfrastructureError) and exc.cause == "worker lost"
    assert s.record.n_infra == 1 and s.record.n_failed == 0
    assert s.record.element_codes == {"402": "3"}
    assert "worker lost" in flows.report.log(s)


@step(returns="a_out")
def wait_for_b(marker_dir: str) -> str:
    Path(marker_dir, "a").touch()
    deadline = time.monotonic() + 60
    while not Path(marker_dir, "b").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("b never started while a was running")
        time.sleep(0.05)
    return "a"


@step(returns="b_out")
def wait_for_a(marker_dir: str) -> str:
    Path(marker_dir, "b").touch()
    deadline = time.monotonic() + 60
    while not Path(marker_dir, "a").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("a never started while b was running")
        time.sleep(0.05)
    return "b"


def test_concurrently_really_runs_both_at_once(local_env, store, tmp_path):
    # Each step waits for the other to have started: they finish only if run side by side.
    flow = new_workflow("pair").then(concurrently(wait_for_b, wait_for_a))
    r = run(flow, local_env, store, marker_dir=str(tmp_path))
    assert r.exit_code == 0, flows.report.log(r)
    assert r.outputs.return_values.a_out.fetch_value() == "a"


@step(returns="where")
def module_is_importable_here() -> bool:
    return importlib.util.find_spec("test_engine") is not None


def test_steps_from_a_test_module_travel_by_value(local_env, store):
    r = run(new_workflow("byvalue").then(module_is_importable_here), local_env, store)
    assert r.exit_code == 0, flows.report.log(r)
    # The worker could not import this module, yet ran the step defined in it.
    assert r.outputs.return_values.where.fetch_value() is False


def test_submit_returns_at_once_and_progress_follows(local_env, store, tmp_path):
    gate = tmp_path / "gate"

    @step(returns="opened")
    def wait_for_gate(path: str) -> bool:
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError("gate never opened")
            time.sleep(0.05)
        return True

    r = flows.submit(
        flows.workflow.build(
            new_workflow("gated").then(wait_for_gate).on(local_env), path=str(gate)
        ),
        store=store,
    )
    assert r.status == "running"
    assert r.exit_code is None
    assert "gated" in flows.report.progress(r)
    gate.touch()
    r.wait(120)
    assert r.status == "finished" and r.exit_code == 0


@step(returns=("lo", "hi"))
def returns_one_value(x: int):
    return x


def test_missing_outputs_exit_403(local_env, store):
    r = run(new_workflow("short").then(returns_one_value), local_env, store, x=1)
    assert r.called[0].exit_code == 403
    assert "must return a tuple of 2" in str(r.called[0].outputs.exception.fetch_value())


@step(returns="row_sum")
def row_sum(grid) -> float:
    return float(np.sum(grid))


@step(returns="grid")
def make_grid(n: int) -> np.ndarray:
    return np.arange(n * 3.0).reshape(n, 3)


def test_reduction_over_a_plain_step_output(local_env, store):
    flow = new_workflow("rows").then(make_grid).then(map_(row_sum, "grid[i, :] -> row_sum[i]"))
    r = run(flow, local_env, store, n=4)
    assert r.exit_code == 0, flows.report.log(r)
    sums = r.called[1].outputs.return_values.row_sum.to_array()
    assert sums.dtype.kind == "f"
    assert sums.tolist() == [3.0, 12.0, 21.0, 30.0]


@step(returns="kind")
def kind_of(x: object, y: object) -> str:
    return f"{type(x).__name__} {type(y).__name__}"


def test_elements_get_the_items_of_a_list_as_made_and_numpy_scalars_of_an_array(local_env, store):
    # A list's items keep their types on the workers (a float is not made a numpy.float64,
    # which computes several times slower in Python); an array gives numpy's own scalars.
    flow = new_workflow("kinds").then(map_(kind_of, "x[i], y[i] -> kind[i]"))
    r = run(flow, local_env, store, x=[0.5, 2, 3.5], y=np.array([1.0, 2.0, 3.0]))
    assert r.exit_code == 0, flows.report.log(r)
    kinds = r.called[0].outputs.return_values.kind.to_array().tolist()
    assert kinds == ["float float64", "int float64", "float float64"]
    grid = new_workflow("nested").then(map_(kind_of, "x[i, j], y[j] -> kind[i, j]"))
    r = run(grid, local_env, store, x=[[1.5, (1, 2)], [True, None]], y=[1, 2])
    assert r.exit_code == 0, flows.report.log(r)
    kinds = r.called[0].outputs.return_values.kind.to_array().tolist()
    assert kinds == [["float int", "tuple int"], ["bool int", "NoneType int"]]


def test_thread_environment_runs_beside_the_local_one(thread_env, local_env, store):
    r1 = run(new_workflow("t").then(make_grid), thread_env, store, n=2)
    r2 = run(new_workflow("h").then(make_grid), local_env, store, n=2)
    assert r1.exit_code == r2.exit_code == 0
    assert r1.called[0].record.executor != r2.called[0].record.executor


def test_runs_with_an_unactivated_interpreter(tmp_path):
    # HTEX starts interchange.py and process_worker_pool.py from PATH; a venv's python run
    # without activation (cron, IDEs) must still work, so PATH here lacks its directory.
    script = tmp_path / "job.py"
    script.write_text(
        "import parsl_flows as flows\n"
        "from parsl_flows.workflow import new_workflow\n"
        "@flows.step(returns='y')\n"
        "def double(x):\n"
        "    return 2 * x\n"
        "env = flows.engine.execution_environment(None, 'localhost')\n"
        "r = flows.run(flows.workflow.build(new_workflow('p').then(double).on(env), x=21))\n"
        "print(r.outputs.return_values.y.fetch_value())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PATH", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"
    env["PARSL_FLOWS_STORE"] = str(tmp_path / "store")
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "42"


def test_load_run_of_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no run\.json there"):
        flows.load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run 'nope'"):
        flows.load_run("nope", store=tmp_path)


def test_an_executor_whose_parsl_folder_was_deleted_is_replaced(tmp_path):
    # A store deleted while the process lives on (a notebook, a test's temporary folder)
    # takes the certificates the executor's new blocks need: they died at start, unseen,
    # and a run waited for ever (found by test_slurm.py's memory tests in a row).
    from types import SimpleNamespace

    from parsl_flows.engine.runner import _lost_its_folder

    (tmp_path / "label" / "certificates").mkdir(parents=True)
    live = SimpleNamespace(
        logdir=str(tmp_path / "label"), cert_dir=str(tmp_path / "label" / "certificates")
    )
    assert not _lost_its_folder(live)
    (tmp_path / "label" / "certificates").rmdir()
    assert _lost_its_folder(live)
    assert not _lost_its_folder(SimpleNamespace())  # a thread pool keeps no folder
    assert not _lost_its_folder(None)
