"""Reuse across the whole store (``flows.submit(builder, reuse="store")``): any earlier run's
elements with the same code and inputs are taken, found through the store's reuse index
(``<store>/reuse-index/<run>.npz``), never failed or damaged ones, never a running run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import seed_flows as seed
from helpers import cli, file_of, wait_for

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.engine.reuse_index import INDEX_FOLDER, find_in_store, rebuild_index
from parsl_flows.workflow import map_, new_workflow

pytestmark = pytest.mark.slow


def build(flow, env, **inputs):
    return flows.workflow.build(flow.on(env), **inputs)


def counts(run, name):
    rec = run.step(name).record
    return rec.n_reused, rec.n_submitted


@step(returns="y")
def counted(x, calls):
    """2x, leaving a file in ``calls`` for every call (what ran, across processes)."""
    import uuid

    open(os.path.join(calls, f"{x}-{uuid.uuid4().hex}"), "w").close()
    return 2 * x


@step(returns="total")
def add_up(y):
    return float(np.sum(y.to_array()))


def double_flow():
    return new_workflow("double").then(map_(counted, "x[i] -> y[i]")).then(add_up)


def calls_of(calls: Path) -> list[int]:
    return sorted(int(name.split("-")[0]) for name in os.listdir(calls))


# -- the seed plan -------------------------------------------------------------------------


def test_a_fresh_build_of_the_seed_plan_computes_nothing(local_env, store):
    inputs = seed.seed_inputs(mesh_error=False, failure_probability=0.0, V_limits=[-2, 2])
    first = flows.submit(build(seed.new_flow, local_env, **inputs), store=store).wait(300)
    assert first.exit_code == 0
    again = flows.submit(build(seed.new_flow, local_env, **inputs), store=store, reuse="store")
    again.wait(300)
    assert again.exit_code == 0
    for s in again.called:
        total = s.record.n_reused + s.record.n_submitted
        assert (s.record.n_reused, s.record.n_submitted) == (total, 0), s.name
        assert s.record.reused_from == first.id, s.name
    assert "reused 200 of 200 elements from run " + first.id in flows.report.log(
        again.step("modified_electrostatics")
    )
    assert "reused from " + first.id in flows.report.progress(again)
    old = first.outputs.return_values.avg_electrostatic_charge.fetch_value()
    assert again.outputs.return_values.avg_electrostatic_charge.fetch_value() == old
    # The Dataset says which run computed each element, in memory and in dataset.nc.
    ds = again.dataset()
    assert set(np.unique(ds["modified_get_charge_run"].values)) == {first.id}
    import xarray as xr

    with xr.open_dataset(again.path / "dataset.nc") as on_disk:
        assert set(np.unique(on_disk["modified_electrostatics_run"].values)) == {first.id}
    # Without reuse="store" a fresh build computes everything, as before.
    fresh = flows.submit(build(seed.new_flow, local_env, **inputs), store=store).wait(300)
    assert counts(fresh, "modified_electrostatics") == (0, 200)


def test_failed_elements_are_never_reused_and_runs_add_up(local_env, store):
    """The seed's charge step fails at random: each run recomputes what no earlier run has;
    a third run takes all from the second (which holds the first's too), and its Dataset
    still says which run computed each element."""
    inputs = seed.seed_inputs(mesh_error=False, failure_probability=0.3)
    first = flows.submit(build(seed.new_flow, local_env, **inputs), store=store).wait(300)
    charge = first.step("modified_get_charge").outputs.return_values.charge
    ok_first = ~charge.mask
    wanted = (
        ~first.step("modified_electrostatics").outputs.return_values.electrostatics.mask
    ).sum()
    assert 0 < ok_first.sum() < wanted  # some failed
    second = flows.submit(
        build(seed.new_flow, local_env, **inputs), store=store, reuse="store"
    ).wait(300)
    assert counts(second, "modified_get_charge") == (ok_first.sum(), wanted - ok_first.sum())
    ok_second = ~second.step("modified_get_charge").outputs.return_values.charge.mask
    assert (ok_second >= ok_first).all()
    third = flows.submit(
        build(seed.new_flow, local_env, **inputs), store=store, reuse="store"
    ).wait(300)
    assert counts(third, "modified_get_charge")[0] == ok_second.sum()
    assert third.step("modified_get_charge").record.reused_from == second.id
    made = third.dataset()["modified_get_charge_run"].values
    assert (made == first.id).sum() == ok_first.sum()
    assert (made == second.id).sum() >= (ok_second & ~ok_first).sum()  # failed ones too


def test_elements_come_from_several_runs(thread_env, store, tmp_path):
    """Two runs over different parts of a sweep; a third over both takes from each."""
    calls = tmp_path / "calls"
    calls.mkdir()
    a = flows.run(build(double_flow(), thread_env, x=list(range(0, 20)), calls=str(calls)),
                  store=store)  # fmt: skip
    b = flows.run(build(double_flow(), thread_env, x=list(range(20, 40)), calls=str(calls)),
                  store=store)  # fmt: skip
    both = flows.run(
        build(double_flow(), thread_env, x=list(range(45)), calls=str(calls)),
        store=store,
        reuse="store",
    )
    assert counts(both, "counted") == (40, 5)
    rec = both.step("counted").record
    assert rec.reused_from == f"{b.id}, {a.id}"  # newest first
    log = flows.report.log(both.step("counted"))
    assert f"reused 40 of 45 elements from 2 runs: {b.id} (20), {a.id} (20)" in log
    assert calls_of(calls) == list(range(45))  # nothing ran twice
    made = both.dataset()["counted_run"].values
    assert list(made[:20]) == [a.id] * 20 and list(made[20:40]) == [b.id] * 20
    assert list(made[40:]) == [both.id] * 5
    y = both.step("counted").outputs.return_values.y.to_array()
    np.testing.assert_array_equal(y, 2 * np.arange(45))


# -- the index -----------------------------------------------------------------------------


def test_a_lost_index_is_built_again_from_the_runs(thread_env, store, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    first = flows.run(build(double_flow(), thread_env, x=list(range(30)), calls=str(calls)),
                      store=store)  # fmt: skip
    index_file = store / INDEX_FOLDER / f"{first.id}.npz"
    assert index_file.exists()
    index_file.write_bytes(index_file.read_bytes()[:50])  # damaged: cut short
    more = list(range(20, 40))
    second = flows.run(
        build(double_flow(), thread_env, x=more, calls=str(calls)), store=store, reuse="store"
    )
    assert counts(second, "counted") == (10, 10)
    assert calls_of(calls) == list(range(30)) + list(range(30, 40))
    assert np.load(index_file)["run"] == first.id  # written whole again
    (store / INDEX_FOLDER).rename(tmp_path / "gone")  # lost altogether
    assert sorted(rebuild_index(store)) == sorted([first.id, second.id])
    assert len(list((store / INDEX_FOLDER).iterdir())) == 2


def test_a_damaged_result_file_is_computed_again(thread_env, store, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    x = list(range(40))
    first = flows.run(build(double_flow(), thread_env, x=x, calls=str(calls)), store=store)
    damaged = file_of(first.step("counted").path / "return_values" / "y", 7)
    damaged.write_bytes(damaged.read_bytes()[:-5])  # truncated, as a full disk leaves it
    os.remove(calls / next(n for n in os.listdir(calls) if n.startswith("7-")))
    second = flows.run(
        build(double_flow(), thread_env, x=x, calls=str(calls)), store=store, reuse="store"
    )
    reused, submitted = counts(second, "counted")
    assert submitted >= 1 and reused + submitted == 40
    assert 7 in calls_of(calls)  # element 7 ran again
    assert "is damaged" in flows.report.log(second.step("counted"))
    y = second.step("counted").outputs.return_values.y.to_array()
    np.testing.assert_array_equal(y, 2 * np.arange(40))


def test_a_deleted_run_is_not_used(thread_env, store, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    x = list(range(10))
    first = flows.run(build(double_flow(), thread_env, x=x, calls=str(calls)), store=store)
    import shutil

    shutil.rmtree(first.path)  # its index file stays behind
    second = flows.run(
        build(double_flow(), thread_env, x=x, calls=str(calls)), store=store, reuse="store"
    )
    assert counts(second, "counted") == (0, 10)
    assert second.exit_code == 0


def test_submit_refuses_an_unknown_reuse_before_any_work(thread_env, store):
    with pytest.raises(ValueError, match=r"reuse='everything' is not a choice.*reuse='store'"):
        flows.submit(build(double_flow(), thread_env, x=[1], calls="/tmp"), store=store,
                     reuse="everything")  # fmt: skip
    assert not (store / "runs").exists()


# -- several drivers, a killed one -----------------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    import parsl_flows as flows
    from test_store_reuse import slow_flow

    env = flows.engine.execution_environment(None, "threads")
    flow = slow_flow().on(env)
    run = flows.submit(flows.workflow.build(flow, x=list(range(400)), calls=sys.argv[2]),
                       store=sys.argv[1], reuse=sys.argv[4] if len(sys.argv) > 4 else True)
    print(run.path, flush=True)
    run.wait()
    """
)


@step(returns="y")
def slow_counted(x, calls):
    """``counted``, slowly enough to be caught mid-map."""
    import uuid

    time.sleep(0.02)
    open(os.path.join(calls, f"{x}-{uuid.uuid4().hex}"), "w").close()
    return 2 * x


def slow_flow():
    return new_workflow("slow").then(map_(slow_counted, "x[i] -> y[i]"))


def _driver(store: Path, calls: Path, tmp_path: Path, *reuse: str) -> subprocess.Popen[str]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    here = str(Path(__file__).parent)
    return subprocess.Popen(
        [sys.executable, str(script), str(store), str(calls), here, *reuse],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_killed_drivers_finished_elements_are_reused(thread_env, store, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    proc = _driver(store, calls, tmp_path)
    try:
        killed = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
        wait_for(lambda: len(os.listdir(calls)) >= 100, "100 elements done")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert not (store / INDEX_FOLDER / f"{killed.name}.npz").exists()  # it never ended
    ran_before = len(os.listdir(calls))
    again = flows.run(
        flows.workflow.build(slow_flow().on(thread_env), x=list(range(400)), calls=str(calls)),
        store=store,
        reuse="store",
    )
    reused, submitted = counts(again, "slow_counted")
    assert reused + submitted == 400 and reused >= 50  # what its task files held
    assert again.step("slow_counted").record.reused_from == killed.name
    assert len(os.listdir(calls)) - ran_before == submitted
    assert (store / INDEX_FOLDER / f"{killed.name}.npz").exists()  # built by the lookup
    y = again.step("slow_counted").outputs.return_values.y.to_array()
    np.testing.assert_array_equal(y, 2 * np.arange(400))


def test_a_run_still_running_is_not_used_until_it_ends(thread_env, store, tmp_path):
    """Two drivers on one store: the second does not take the first's elements while the
    first runs (they are not final: a running run has no index file), and a third, after
    the first ended, takes them all."""
    calls = tmp_path / "calls"
    calls.mkdir()
    proc = _driver(store, calls, tmp_path, "store")
    try:
        running = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
        wait_for(lambda: len(os.listdir(calls)) >= 50, "50 elements done")
        found = find_in_store(store, None, "map", ("y",), np.zeros(1, dtype="S16"), np.array([0]))
        assert found == []  # nothing indexed, and the running run is not read
        beside = flows.run(
            flows.workflow.build(slow_flow().on(thread_env), x=[0, 1, 2], calls=str(calls)),
            store=store,
            reuse="store",
        )
        assert counts(beside, "slow_counted") == (0, 3)
        assert proc.poll() is None, "the first driver ended too soon for this test"
        assert proc.wait(300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    third = flows.run(
        flows.workflow.build(slow_flow().on(thread_env), x=list(range(400)), calls=str(calls)),
        store=store,
        reuse="store",
    )
    assert counts(third, "slow_counted") == (400, 0)
    # 0-2 from the run beside it (newer), the rest from the one it ran beside.
    assert third.step("slow_counted").record.reused_from == f"{beside.id}, {running.name}"


# -- the command line ----------------------------------------------------------------------


def test_run_reuse_store_from_the_command_line(store, tmp_path):
    example = Path(__file__).parents[1] / "examples"
    target = f"{example / 'electrostatics.py'}:flow"
    inputs = str(example / "electrostatics.json")
    args = ["--store", str(store), "run", target, "--inputs", inputs, "--env", "threads"]
    cli(*args, cwd=tmp_path, check=0)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    dry = cli(*args, "--reuse", "store", "--dry-run", cwd=tmp_path, check=0)
    assert "0 elements to compute, 404 to reuse" in dry.stdout
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before  # wrote nothing
    again = cli(*args, "--reuse", "store", cwd=tmp_path, check=0)
    assert "200/200 done, 200 reused from" in again.stdout
    bad = cli(*args, "--reuse", "all", cwd=tmp_path, check=2)
    assert "invalid choice: 'all'" in bad.stderr
    reindex = cli("--store", str(store), "reindex", cwd=tmp_path, check=0)
    assert "indexed 2 ended run(s)" in reindex.stdout
