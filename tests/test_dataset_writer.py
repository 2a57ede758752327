"""The helper process that writes dataset.nc files (engine/datasets.py), for real.

The driver never loads xarray during a run; the helper writes each map's file and the
run's; a helper that dies mid-request is reported and replaced; a helper outlives
neither a clean exit nor a SIGKILLed driver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr
from helpers import command_line, file_of, wait_for

from parsl_flows.engine.datasets import DatasetWriter
from parsl_flows.processes import wait_ended

pytestmark = pytest.mark.slow

SCRIPT = """\
import sys, time
import numpy as np
import parsl_flows as flows
from parsl_flows.workflow import build, map_, new_workflow

@flows.step(returns="y")
def double(x):
    return 2 * x

@flows.step(returns="z")
def slow(y):
    time.sleep({delay})
    return y + 1

flow = new_workflow("helper").then(map_(double, "x[i] -> y[i]")).then(map_(slow, "y[i] -> z[i]"))

if __name__ == "__main__":
    env = flows.engine.execution_environment(None, {where!r})
    run = flows.run(build(flow.on(env), x=np.arange({n})), store={store!r})
    print("ENDED", run.status, run.exit_code, "xarray" in sys.modules, flush=True)
"""


def script(tmp_path: Path, n: int, delay: float, where: str = "localhost") -> Path:
    path = tmp_path / "driver.py"
    path.write_text(SCRIPT.format(n=n, delay=delay, where=where, store=str(tmp_path / "store")))
    return path


def helpers_of(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if "parsl_flows.write_datasets" in command_line(p)]


def test_the_driver_never_loads_xarray_and_every_dataset_nc_is_written(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(script(tmp_path, 12, 0.0, where="threads"))],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.stdout.strip().splitlines()[-1] == "ENDED finished 0 False", out.stderr
    (run_dir,) = (tmp_path / "store" / "runs").iterdir()
    with xr.open_dataset(run_dir / "dataset.nc") as ds:
        assert ds.z.values.tolist() == [2 * x + 1 for x in range(12)]
        # Written before run.json records the end, yet it says how the run ended.
        assert (ds.attrs["status"], ds.attrs["exit_code"]) == ("finished", 0)
    for step in ("00-double", "01-slow"):
        assert (run_dir / "steps" / step / "dataset.nc").exists()


def test_a_helper_that_dies_mid_request_is_reported_and_replaced(shapes_step: Path) -> None:
    writer = DatasetWriter()
    try:
        assert writer.write("step", shapes_step) is None  # starts the helper
        first = writer._proc
        assert first is not None
        # A status.json that is a FIFO: the helper blocks reading it, and is killed there.
        stuck = shapes_step.parent / "stuck"
        stuck.mkdir()
        os.mkfifo(stuck / "status.json")
        killer = threading.Timer(1.0, os.kill, (first.pid, signal.SIGKILL))
        killer.start()
        error = writer.write("step", stuck)
        killer.join()
        assert error == "the process writing dataset.nc files ended (signal 9)"
        (shapes_step / "dataset.nc").unlink()
        assert writer.write("step", shapes_step) is None  # a new helper
        assert writer._proc is not None and writer._proc.pid != first.pid
        assert (shapes_step / "dataset.nc").exists()
        assert writer.peak_rss_mb > 0
    finally:
        writer.close()
    assert writer._proc is None


def test_starting_the_helper_does_not_wait_for_a_file_being_written(tmp_path: Path) -> None:
    """A map's first result starts the helper: it must not wait while the helper writes
    the previous map's dataset.nc (the next map's tasks wait on that caller)."""
    writer = DatasetWriter()
    try:
        stuck = tmp_path / "stuck"
        stuck.mkdir()
        os.mkfifo(stuck / "status.json")  # the helper blocks reading it: a write in progress
        answers: list[str | None] = []
        writing = threading.Thread(
            target=lambda: answers.append(writer.write("step", stuck)), daemon=True
        )
        writing.start()
        wait_for(lambda: writer._proc is not None, "the helper to start")
        starting = threading.Thread(target=writer.start, daemon=True)
        starting.start()
        starting.join(timeout=30)
        assert not starting.is_alive(), "start() waited for the file being written"
        assert writing.is_alive() and not answers
        with open(stuck / "status.json", "w") as fifo:  # let the helper read, and fail
            fifo.write("{not json")
        writing.join(timeout=60)
        assert answers and answers[0] is not None and "JSONDecodeError" in answers[0]
    finally:
        if writing.is_alive() and writer._proc is not None:  # still stuck: end the helper
            writer._proc.kill()
            writing.join(timeout=60)
        writer.close()


def test_a_failure_is_an_answer_and_the_helper_goes_on(shapes_step: Path, tmp_path: Path) -> None:
    writer = DatasetWriter()
    try:
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "status.json").write_text("{not json")
        error = writer.write("step", broken)
        assert error is not None and "JSONDecodeError" in error
        assert writer.write("step", shapes_step) is None
    finally:
        writer.close()


@pytest.fixture
def shapes_step(tmp_path: Path, thread_env) -> Path:
    """A finished map's step directory."""
    import parsl_flows as flows
    from parsl_flows.workflow import build, map_, new_workflow

    @flows.step(returns="y")
    def inc(x: int) -> int:
        return x + 1

    flow = new_workflow("one").then(map_(inc, "x[i] -> y[i]"))
    run = flows.run(build(flow.on(thread_env), x=list(range(5))), store=tmp_path / "store")
    assert run.exit_code == 0
    return run.step("inc").path


def test_the_helper_ends_with_a_sigkilled_driver(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(script(tmp_path, 400, 0.05))],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: bool(helpers_of(proc.pid)), "the first map's dataset.nc helper")
        (helper,) = helpers_of(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not wait_ended([helper], 30), "the helper outlived its driver"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(
            [sys.executable, "-m", "parsl_flows", "cleanup", "--store", str(tmp_path / "store")],
            capture_output=True,
            timeout=120,
        )


def test_the_helper_ignores_ctrl_c(tmp_path: Path) -> None:
    writer = DatasetWriter()
    try:
        not_a_step = tmp_path / "x"
        not_a_step.mkdir()
        (not_a_step / "status.json").write_text("{}")
        assert writer.write("step", not_a_step) is not None
        assert writer._proc is not None
        pid = writer._proc.pid
        os.kill(pid, signal.SIGINT)
        error = writer.write("step", not_a_step)  # answered, by the same helper
        assert error is not None and not error.startswith("the process writing"), error
        assert writer._proc is not None and writer._proc.pid == pid
    finally:
        writer.close()


def test_numbers_sent_back_are_written_without_reading_the_files(shapes_step: Path) -> None:
    # Element 2's file is really truncated: reading it fails.  Numbers known for every
    # element (what the workers sent back) are written as they are, without a read;
    # numbers known for some elements only (others came from an earlier run) are not
    # enough, and the files are read.
    y = shapes_step / "return_values" / "y"
    damaged = file_of(y, 2)
    damaged.write_bytes(damaged.read_bytes()[:3])
    (shapes_step / "dataset.nc").unlink()
    every = (np.arange(5), np.arange(1, 6))
    some = (np.arange(4), np.arange(1, 5))
    writer = DatasetWriter()
    try:
        error = writer.write("step", shapes_step)
        assert error is not None and "DamagedFileError" in error and damaged.name in error
        error = writer.write("step", shapes_step, known={"y": some})
        assert error is not None and "DamagedFileError" in error
        assert writer.write("step", shapes_step, known={"y": every}) is None
    finally:
        writer.close()
    with xr.open_dataset(shapes_step / "dataset.nc") as ds:
        assert ds.y.dtype == np.int64
        assert ds.y.values.tolist() == [1, 2, 3, 4, 5]
        assert not ds.y_mask.values.any()
