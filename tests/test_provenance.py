"""Provenance per element (issue 20 part 4): seconds, host, batch job, attempt and worker
peak memory of each element of a map, in ``step_run.dataset()``, ``run.dataset()``, the
step's and the run's ``dataset.nc``, and ``provenance.npz``; kept through a restart's
reuse and through a resume after a driver killed for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time as clock  # not `time`: see napping
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.dataset.netcdf import _write_netcdf
from parsl_flows.dataset.reading import _provenance
from parsl_flows.provenance import PROVENANCE_FILE, Provenance
from parsl_flows.workflow import map_, new_workflow

NAMES = ("seconds", "host", "job", "attempt", "peak_rss")

# -- the record on its own (no Parsl) -------------------------------------------------------


def test_tasks_recorded_saved_read_back_and_laid_out_per_element(tmp_path: Path) -> None:
    p = Provenance(tmp_path, 6)
    p.current_attempt = 1
    p.record(np.array([0, 1, 2]), np.array([0.5, 0.25, 2.0], np.float32), "n1", "77", 1 << 30)
    p.current_attempt = 2
    p.record(np.array([4, 9]), None, "n2", "", 0)  # a lost task's; 9 is out of range
    p.save()
    assert not p._changed
    back = Provenance.read(tmp_path)
    assert back is not None and back.size == 6
    got = back.columns()
    np.testing.assert_array_equal(got["seconds"], [0.5, 0.25, 2.0, np.nan, np.nan, np.nan])
    assert got["host"].tolist() == ["n1", "n1", "n1", "", "n2", ""]
    assert got["job"].tolist() == ["77", "77", "77", "", "", ""]
    assert got["attempt"].tolist() == [1, 1, 1, 0, 2, 0]
    np.testing.assert_array_equal(got["peak_rss"], [2.0**30] * 3 + [np.nan] * 3)
    # A resume goes on from the file: a new task of element 3, and 0 run again.
    back.current_attempt = 1
    back.record(np.array([3, 0]), np.array([1.0, 3.0], np.float32), "n2", "", 5)
    again = back.columns()
    assert again["host"].tolist() == ["n2", "n1", "n1", "n2", "n2", ""]
    assert again["seconds"][[0, 3]].tolist() == [3.0, 1.0]


def test_reused_elements_take_their_tasks_with_them(tmp_path: Path) -> None:
    old = Provenance(tmp_path / "old", 4)
    old.current_attempt = 3
    old.record(np.array([0, 1]), np.array([1.0, 2.0], np.float32), "a", "j1", 10)
    old.record(np.array([2]), np.array([4.0], np.float32), "b", "", 20)
    new = Provenance(tmp_path / "new", 3)
    new.current_attempt = 1
    new.record(np.array([0]), np.array([9.0], np.float32), "b", "", 30)
    new.take(old, np.array([1, 2]), np.array([2, 3]))  # old 3 was never recorded
    got = new.columns()
    assert got["host"].tolist() == ["b", "b", ""]
    assert got["attempt"].tolist() == [1, 3, 0]
    np.testing.assert_array_equal(got["seconds"], [9.0, 4.0, np.nan])
    np.testing.assert_array_equal(got["peak_rss"], [30.0, 20.0, np.nan])


def test_a_damaged_file_is_not_used(tmp_path: Path, caplog) -> None:
    (tmp_path / PROVENANCE_FILE).write_bytes(b"PK\x03\x04 truncated")
    assert Provenance.read(tmp_path) is None
    assert Provenance.of_step(tmp_path, 3).columns()["host"].tolist() == ["", "", ""]
    assert "not using" in caplog.text


def test_hosts_of_any_text_go_to_netcdf_and_back(tmp_path: Path) -> None:
    p = Provenance(tmp_path, 4)
    p.record(np.array([0, 1]), np.ones(2, np.float32), "nœud-1", "", 1)
    p.record(np.array([2]), np.ones(1, np.float32), "node-2.cluster", "123", 1)
    p.save()
    variables = _provenance(tmp_path, "s", ("a", "b"), (2, 2), {"step": "s"})
    ds = xr.Dataset(variables)
    _write_netcdf(ds, tmp_path / "p.nc", {})
    with xr.open_dataset(tmp_path / "p.nc") as nc:
        for name in ds.data_vars:
            np.testing.assert_array_equal(nc[name].values, ds[name].values)
            assert nc[name].attrs["long_name"] == ds[name].attrs["long_name"]
    assert nc.s_host.values.tolist() == [["nœud-1", "nœud-1"], ["node-2.cluster", ""]]


SLEEP = 0.3  # element 1's nap: its seconds are more than that, whatever else it took


@step(returns="y")
def napping(x: int, marks: str) -> float:
    """Element 1 sleeps; element 3 fails on its first try only (a mark file says).

    It imports nothing this module has as a global: the reuse key of a step's code counts
    the globals its names meet, and the copy a restart unpickles has no global ``time``
    where this module has one (so nothing would be reused)."""
    import time

    if x == 1:
        time.sleep(SLEEP)
    if x == 3:
        try:
            open(f"{marks}/3", "x").close()
        except FileExistsError:
            pass
        else:
            raise ConnectionError("first try of 3")
    if x == 4:
        raise ValueError("4 always fails")
    return 2.0 * x


def build(env: flows.engine.ExecutionEnvironment, marks: Path) -> flows.workflow.Builder:
    flow = new_workflow("prov").then(map_(napping, "x[i] -> y[i]", max_restarts=2, chunksize=1))
    return flows.workflow.build(flow.on(env), x=list(range(6)), marks=str(marks))


@pytest.fixture(scope="module")
def first(local_env, tmp_path_factory) -> flows.Run:
    store = tmp_path_factory.mktemp("prov")
    marks = store / "marks"
    marks.mkdir()
    run = flows.submit(build(local_env, marks), store=store).wait(300)
    assert run.step("napping").record.shape == [6], flows.report.log(run)
    return run


@pytest.mark.slow
def test_a_map_records_where_how_long_and_in_which_attempt(first) -> None:
    ds = first.step("napping").dataset()
    for name in NAMES:
        assert f"napping_{name}" in ds.data_vars, name
    seconds = ds.napping_seconds.values
    assert seconds.dtype == np.float32
    assert (seconds > 0).all() and np.isfinite(seconds).all()  # failed ones ran too
    assert seconds[1] > SLEEP
    assert (ds.napping_host.values == os.uname().nodename).all()
    assert (ds.napping_job.values == "").all()  # no batch job here
    assert (ds.napping_peak_rss.values > 0).all()
    assert ds.napping_peak_rss.attrs["units"] == "bytes"
    assert "peak so far, per task" in ds.napping_peak_rss.attrs["description"]
    # 3 failed on its first try and succeeded on the second; 4 failed both times.
    assert ds.napping_attempt.values.tolist() == [1, 1, 1, 2, 2, 1]
    assert ds.napping_attempts.values.tolist() == [1, 1, 1, 2, 2, 1]
    assert ds.y_mask.values.tolist() == [False] * 4 + [True, False]


@pytest.mark.slow
def test_dataset_nc_and_the_run_dataset_carry_it(first) -> None:
    ds = first.step("napping").dataset()
    whole = first.dataset()
    for name in NAMES:
        xr.testing.assert_identical(whole[f"napping_{name}"], ds[f"napping_{name}"])
    for path in (first.step("napping").path / "dataset.nc", first.path / "dataset.nc"):
        with xr.open_dataset(path) as nc:
            for name in ("seconds", "attempt", "peak_rss"):
                np.testing.assert_array_equal(
                    nc[f"napping_{name}"].values, ds[f"napping_{name}"].values
                )
            assert nc.napping_host.values.tolist() == ds.napping_host.values.tolist()
            assert nc.napping_job.values.tolist() == [""] * 6
            assert nc.napping_seconds.attrs["units"] == "s"


@pytest.mark.slow
def test_provenance_npz_reads_with_numpy_alone(first) -> None:
    code = textwrap.dedent(
        """
        import sys, numpy
        sys.modules["parsl_flows"] = None  # the file must not need it
        p = numpy.load(sys.argv[1])
        t = p["task"]  # each element's task
        hosts = sorted({str(h) for h in p["hosts"][p["task_host"][t]]})
        print(int(p["size"]), p["seconds"].dtype, hosts,
              p["task_job"][t].tolist(), p["task_attempt"][t].tolist(),
              bool((p["task_peak_rss"][t] > 0).all()))
        """
    )
    path = first.step("napping").path / "provenance.npz"
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    expected = f"6 float32 {[os.uname().nodename]} {[-1] * 6} [1, 1, 1, 2, 2, 1] True"
    assert out.stdout.strip() == expected


@pytest.mark.slow
def test_reused_elements_keep_the_provenance_of_their_run(first) -> None:
    again = flows.submit(first.get_builder_restart(), store=first.path.parents[1]).wait(300)
    record = again.step("napping").record
    assert record.n_reused == 5 and record.n_submitted == 1  # 4 failed: computed again
    old, new = first.step("napping").dataset(), again.step("napping").dataset()
    reused = [0, 1, 2, 3, 5]
    for name in NAMES:
        values = new[f"napping_{name}"].values
        np.testing.assert_array_equal(values[reused], old[f"napping_{name}"].values[reused])
    assert new.napping_attempt.values[4] == 2  # both attempts of the restart failed
    assert np.isfinite(new.napping_seconds.values[4])


# -- a resume after a driver killed for real ---------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import sys
    import parsl_flows as flows
    from parsl_flows import step
    from parsl_flows.workflow import map_, new_workflow

    @step(returns="y")
    def slow_double(x):
        import time
        time.sleep(0.004)
        return 2 * x

    env = flows.engine.execution_environment(None, "localhost")
    flow = new_workflow("killprov").then(map_(slow_double, "x[i] -> y[i]", chunksize=10))
    run = flows.submit(flows.workflow.build(flow.on(env), x=list(range(N))), store=sys.argv[1])
    print(run.path, flush=True)
    run.wait()
    """
)
N = 2000


@pytest.mark.slow
def test_a_resume_after_sigkill_keeps_the_provenance_of_finished_elements(
    local_env, store, tmp_path
) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.replace("range(N)", f"range({N})"))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        run_path = Path(proc.stdout.readline().strip())
        saved = run_path / "steps" / "00-slow_double" / "provenance.npz"
        deadline = clock.monotonic() + 120
        while not saved.exists():  # written a second after the first tasks came back
            assert proc.poll() is None, "the driver ended before it could be killed"
            assert clock.monotonic() < deadline, "no provenance.npz while the map runs"
            clock.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with np.load(saved) as before:  # what the killed driver left
        seconds_before = before["seconds"]
        hosts_before = [str(h) for h in before["hosts"]]
        attempt_before = before["task_attempt"][before["task"]]
    kept = np.flatnonzero(np.isfinite(seconds_before))
    assert 0 < len(kept) < N, len(kept)

    resumed = flows.load_run(run_path).resume().wait(300)
    assert resumed.exit_code == 0, flows.report.log(resumed)
    assert "already in the store (resumed)" in flows.report.log(resumed.called[0])
    ds = resumed.step("slow_double").dataset()
    seconds = ds.slow_double_seconds.values
    # Elements the killed driver recorded keep exactly what it recorded (not run again).
    np.testing.assert_array_equal(seconds[kept], seconds_before[kept])
    assert hosts_before == [os.uname().nodename]
    assert (ds.slow_double_host.values[kept] == os.uname().nodename).all()
    assert (ds.slow_double_attempt.values[kept] == 1).all() and (attempt_before[kept] == 1).all()
    # What the resume computed is recorded; elements that finished between the last write
    # and the kill are the only ones without provenance (NaN, "").
    unknown = np.isnan(seconds)
    assert unknown.sum() < N - len(kept)
    assert (ds.slow_double_host.values[unknown] == "").all()
    assert (ds.slow_double_host.values[~unknown] == os.uname().nodename).all()
    assert (seconds[~unknown] > 0.004).all()
