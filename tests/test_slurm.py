"""The cluster path against a real Slurm (slurmctld + slurmd + munge).

Start one with ``bash tools/local-slurm.sh start``.  Without a reachable Slurm these tests
skip, except in CI (``CI=true``), where a missing Slurm is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import seed_flows as seed

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.engine.runner import runner
from parsl_flows.workflow import map_, new_workflow


def _slurm_reachable() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


if not _slurm_reachable():
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI needs a running Slurm: .ci/run starts it with tools/local-slurm.sh")
    pytest.skip(
        "no Slurm reachable (start one: bash tools/local-slurm.sh start)", allow_module_level=True
    )

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster_env():
    return flows.engine.execution_environment(None, "localcluster", queue=("debug", 2))


def run(flow, env, store, **inputs):
    return flows.submit(flows.workflow.build(flow.on(env), **inputs), store=store).wait(600)


def test_seed_workflow_on_slurm_matches_the_local_run(
    cluster_env, local_env, tmp_path, cluster_dir
):
    inputs = seed.seed_inputs(mesh_error=False, failure_probability=0.0)
    on_slurm = run(seed.new_flow, cluster_env, cluster_dir / "slurm", **inputs)
    local = run(seed.new_flow, local_env, tmp_path / "local", **inputs)
    assert on_slurm.exit_code == local.exit_code == 450
    for name in ("modified_electrostatics", "modified_get_charge"):
        a = on_slurm.step(name).outputs.return_values
        b = local.step(name).outputs.return_values
        out = a[next(iter(a))]
        np.testing.assert_array_equal(out.mask, b[next(iter(b))].mask)
    assert on_slurm.called[4].attributes["submitted_elements"] == "2-17,22-37,42-57,62-77"
    avg = on_slurm.outputs.return_values.avg_electrostatic_charge.fetch_value()
    assert avg == pytest.approx(local.outputs.return_values.avg_electrostatic_charge.fetch_value())
    for s in on_slurm.called:
        jobs = s.record.batch_jobs
        assert jobs and all(j.isdigit() for j in jobs), (s.name, jobs)
    assert all(not s.record.batch_jobs for s in local.called)


@step(returns="pid", resources={"memory": "1GB", "cores": 1})
def sized_step(x: int) -> str:
    return os.environ.get("SLURM_JOB_ID", "")


def test_a_resource_class_gets_its_own_block_of_that_size(cluster_env, cluster_dir):
    r = run(new_workflow("sized").then(sized_step), cluster_env, cluster_dir, x=1)
    assert r.exit_code == 0, flows.report.log(r)
    rec = r.called[0].record
    assert rec.executor.endswith("-1c-1024mb")
    job = r.outputs.return_values.pid.fetch_value()
    assert rec.batch_jobs == [job]
    scripts = Path(runner.dfk.run_dir) / "submit_scripts"
    texts = [
        p.read_text() for p in scripts.iterdir() if not p.name.endswith((".stdout", ".stderr"))
    ]
    sized = [t for t in texts if "--mem=1274M" in t]  # 1024 MB + the worker pool's own
    assert sized, "no batch script asked for the step's memory"
    assert "#SBATCH --cpus-per-task=1" in sized[0]


@step(returns="big", resources={"cores": 64})
def too_big(x: int) -> int:
    return x


def test_a_step_bigger_than_a_node_is_rejected_before_submission(cluster_env, tmp_path):
    builder = flows.workflow.build(new_workflow("huge").then(too_big).on(cluster_env), x=1)
    with pytest.raises(ValueError, match="asks for 64 cores, but the nodes of partition 'debug'"):
        flows.submit(builder, store=tmp_path)
    assert not (tmp_path / "runs").exists()


def test_unknown_partition_is_rejected_before_submission(tmp_path):
    env = flows.engine.execution_environment(None, "localcluster", queue=("nosuchq", 2))
    builder = flows.workflow.build(new_workflow("g").then(seed.make_geometry).on(env), x=1, y=2)
    with pytest.raises(ValueError, match=r"no partition 'nosuchq'.*debug"):
        flows.submit(builder, store=tmp_path)


def test_a_block_that_cannot_start_is_reported_and_does_not_hang(
    tmp_path, monkeypatch, cluster_env, cluster_dir
):
    computers = tmp_path / "computers.toml"
    computers.write_text(
        "[badcluster]\n"
        'partition = "debug"\n'
        "cores_per_node = 1\n"
        "poll_seconds = 2\n"
        "worker_init = \"echo 'cannot load the environment' >&2; exit 3\"\n"
    )
    monkeypatch.setenv("PARSL_FLOWS_COMPUTERS", str(computers))
    env = flows.engine.execution_environment(None, "badcluster")
    r = run(new_workflow("bad").then(seed.make_geometry), env, cluster_dir / "store", x=1.0, y=2.0)
    assert r.exit_code == 450
    s = r.called[0]
    assert s.exit_code == 402
    exc = s.outputs.exception.fetch_value()
    assert exc.cause.startswith("block failed (scheduler job(s) ")
    assert "cannot load the environment" in str(exc)
    assert "block failed" in flows.report.log(s)
    assert "block failed" in flows.report.progress(r)
    # The broken computer must not stop the driver's other executors from getting blocks
    # (Parsl re-ran its error handler on every poll and aborted polling for all of them).
    time.sleep(3)  # let Parsl poll the bad executor again, as it does every second
    after = run(new_workflow("after").then(seed.make_geometry), cluster_env, cluster_dir / "ok",
                x=1.0, y=2.0)  # fmt: skip
    assert after.exit_code == 0, flows.report.log(after)
    # The user fixes the computer and submits again from the same process (a notebook
    # without a kernel restart): Parsl never uses the broken executor again, so a new one
    # takes its place.
    computers.write_text(computers.read_text().replace("exit 3", "true"))
    fixed_env = flows.engine.execution_environment(None, "badcluster")
    assert fixed_env.name == env.name
    fixed = run(new_workflow("fixed").then(seed.make_geometry), fixed_env, cluster_dir / "fixed",
                x=1.0, y=2.0)  # fmt: skip
    assert fixed.exit_code == 0, flows.report.log(fixed)
    assert fixed.called[0].record.executor != s.record.executor


@step(returns="y")
def slow_once(x: int, marks: str) -> int:
    mark = Path(marks, str(x))
    if x == 0 and not mark.exists():  # the first call of element 0 hangs in its block
        mark.write_text(os.environ.get("SLURM_JOB_ID", ""))
        time.sleep(300)
    return 10 * x


def test_a_block_lost_mid_run_is_replaced_and_its_elements_rerun(
    cluster_env, tmp_path, cluster_dir
):
    marks = tmp_path / "marks"
    marks.mkdir()
    flow = new_workflow("lost_block").then(map_(slow_once, "x[i] -> y[i]"))
    r = flows.submit(
        flows.workflow.build(flow.on(cluster_env), x=list(range(4)), marks=str(marks)),
        store=cluster_dir / "store",
    )
    mark = marks / "0"
    deadline = time.monotonic() + 120
    while not (mark.exists() and mark.read_text()):
        assert time.monotonic() < deadline, "element 0 never started"
        time.sleep(0.1)
    job = mark.read_text()
    subprocess.run(["scancel", job], check=True)  # as if the block hit its walltime
    r.wait(300)
    s = r.called[0]
    assert r.exit_code == 0 and s.exit_code == 0, flows.report.log(s)
    assert s.outputs.return_values.y.to_array().tolist() == [0, 10, 20, 30]
    assert "worker pool lost" in flows.report.log(s)
    assert len(s.attempts) == 2 and s.attempts[0]["infrastructure"] >= 1  # max_restarts=1
    assert job not in s.record.batch_jobs[-1:]  # the rerun ran in a new block


DRIVER = """
import sys, time
import parsl_flows as flows
from parsl_flows.workflow import build, map_, new_workflow

@flows.step(returns="y")
def slow(x):
    time.sleep(0.2)
    return x

if __name__ == "__main__":
    env = flows.engine.execution_environment(None, "localcluster", queue=("debug", 2))
    flow = new_workflow("killed").then(map_(slow, "x[i] -> y[i]"))
    run = flows.submit(build(flow.on(env), x=list(range(2000))), store=sys.argv[1])
    run.wait()
"""


def _jobs() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_blocks_of_a_sigkilled_driver_end_by_themselves(tmp_path, cluster_dir):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    store = cluster_dir / "store"
    before = _jobs()
    proc = subprocess.Popen([sys.executable, str(script), str(store)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        folder = None
        while folder is None or not list(folder.glob("task-*.pickle")):  # a task finished
            assert time.monotonic() < deadline, "no element finished on Slurm"
            time.sleep(0.5)
            found = list(store.glob("runs/*/steps/00-slow/return_values/y"))
            folder = found[0] if found else None
        blocks = _jobs() - before
        assert blocks, "the run has no Slurm job"
        proc.kill()  # SIGKILL: the driver cannot cancel its blocks
        proc.wait()
        killed = time.monotonic()
        while blocks & _jobs():
            assert time.monotonic() - killed < 120, f"blocks {blocks & _jobs()} outlived 2 min"
            time.sleep(1)
        print(f"the dead driver's Slurm blocks ended {time.monotonic() - killed:.0f} s after it")
    finally:
        if proc.poll() is None:
            proc.kill()
        left = blocks & _jobs() if "blocks" in locals() else set()
        if left:
            subprocess.run(["scancel", *left], check=False)


# -- out of memory (issue 20, part 5) ------------------------------------------------------


def _shared_memory(mb: int) -> None:
    """Really use ``mb`` MB that the worker's own limit does not count: memory shared with
    other processes (``RLIMIT_DATA`` counts private memory), every page written, held for
    a few seconds; Slurm's ``--mem`` counts it (the processes' RSS)."""
    import mmap

    block = mmap.mmap(-1, mb * 2**20)
    for offset in range(0, mb * 2**20, 2**20):
        block[offset : offset + 2**20] = b"x" * 2**20
        if offset % (50 * 2**20) == 0:
            time.sleep(0.01)
    time.sleep(3)


def over_the_block(x: int) -> int:
    if x == 1:
        _shared_memory(600)  # the block asks for 450 MB (200 MB + its pool's own)
    return 10 * x


def test_an_element_over_its_block_memory_is_out_of_memory_not_a_lost_worker(
    cluster_env, cluster_dir
):
    hog = step(over_the_block, returns="y", resources={"memory": "200MB"})
    flow = new_workflow("slurm_oom").then(map_(hog, "x[i] -> y[i]", chunksize=2, max_restarts=3))
    r = run(flow, cluster_env, cluster_dir, x=[0, 1, 2, 3])
    s = r.called[0]
    log = flows.report.log(s)
    assert s.exit_code == 402, log
    assert s.outputs.return_values.y.to_array().compressed().tolist() == [0, 20, 30]
    exc = s.outputs.exception[1]
    assert isinstance(exc, flows.OutOfMemoryError), log
    assert "--mem=450M" in str(exc) and f"block job {exc.job}" in str(exc)
    assert "exceeded memory limit" in str(exc)
    # lost with its block once: run again alone (it might only have been beside the
    # culprit); killed for memory again: out of memory, whatever max_restarts says
    assert [a["out_of_memory"] for a in s.attempts] == [1, 1], log
    assert "worker pool lost" not in log and "out of memory" in log


def test_with_retry_resources_it_runs_again_on_a_block_with_more_memory(cluster_env, cluster_dir):
    hog = step(
        over_the_block,
        returns="y",
        resources={"memory": "200MB"},
        retry_resources={"memory": 4},
    )
    flow = new_workflow("slurm_grow").then(map_(hog, "x[i] -> y[i]", max_restarts=2))
    r = run(flow, cluster_env, cluster_dir, x=[0, 1, 2, 3])
    s = r.called[0]
    log = flows.report.log(s)
    assert r.exit_code == 0 and s.exit_code == 0, log
    assert s.outputs.return_values.y.to_array().tolist() == [0, 10, 20, 30]
    assert [a["memory_mb"] for a in s.attempts] == [200, 800], log
    assert s.attempts[0]["out_of_memory"] == 1
    assert "-200mb" in s.attempts[0]["executor"]
    assert "-800mb" in s.attempts[1]["executor"]  # an executor of its own
    assert "attempt 2: resubmitting 1 of 4 elements with memory 800MB (retry_resources)" in log
    scripts = Path(runner.dfk.run_dir) / "submit_scripts"
    texts = [
        p.read_text()
        for p in scripts.glob("*-800mb*.block-*")
        if not p.name.endswith((".stdout", ".stderr"))
    ]
    assert any("#SBATCH --mem=1050M" in t for t in texts), "no block asked for 800 MB + its pool"


def beside_the_culprit(x: int, marks: str) -> int:
    """Element 1 takes more than the whole block has; element 0, on the block's other
    worker, is running when Slurm kills the block the first time, and quick afterwards."""
    first = not Path(marks, str(x)).exists()
    Path(marks, str(x)).write_text("")
    if x == 1:
        per_cpu = int(os.environ.get("SLURM_MEM_PER_CPU", "1000"))
        cpus = int(os.environ.get("SLURM_CPUS_ON_NODE", "2"))
        _shared_memory(per_cpu * cpus + 300)
    elif first:
        time.sleep(60)
    return x


def test_an_element_only_beside_the_culprit_runs_again_alone_and_succeeds(
    cluster_env, cluster_dir, tmp_path
):
    # no resources: the default executor, two workers a block, the partition's default
    # memory per CPU (DefMemPerCPU) for the block
    marks = tmp_path / "marks"
    marks.mkdir()
    both = step(beside_the_culprit, returns="y")
    flow = new_workflow("beside").then(map_(both, "x[i] -> y[i]", chunksize=1))
    r = run(flow, cluster_env, cluster_dir, x=[0, 1], marks=str(marks))
    s = r.called[0]
    log = flows.report.log(s)
    assert s.outputs.return_values.y.mask.tolist() == [False, True], log
    assert isinstance(s.outputs.exception[1], flows.OutOfMemoryError), log
    assert "no --mem" in str(s.outputs.exception[1])
    assert s.attempts[0]["out_of_memory"] == 2, log  # both were lost with the block
    assert s.record.element_attempts == {"2": "0-1"}


AFTER_THE_STORE_WENT = """
import shutil, sys
sys.path.insert(0, sys.argv[3])
import seed_flows as seed
import parsl_flows as flows
from parsl_flows.workflow import new_workflow

first, second = sys.argv[1], sys.argv[2]
local = flows.engine.execution_environment(None, "localhost")
flow = new_workflow("first").then(seed.make_geometry)
r = flows.run(flows.workflow.build(flow.on(local), x=1.0, y=2.0), store=first)
print("first", r.status, flush=True)
shutil.rmtree(first, ignore_errors=True)  # Parsl's own folder goes with it
slurm = flows.engine.execution_environment(None, "localcluster", queue=("debug", 2))
flow = new_workflow("second").then(seed.make_geometry)
r = flows.submit(flows.workflow.build(flow.on(slurm), x=1.0, y=3.0), store=second).wait(200)
print("second", r.status, flush=True)
"""


def test_a_slurm_run_after_the_store_parsl_started_in_was_deleted_does_not_hang(tmp_path):
    """A notebook runs locally, deletes that store (Parsl's folder was in it), then runs on
    Slurm: the local blocks' state cannot be read any more, which must not stop Parsl from
    polling, and so starting, the Slurm executor's blocks."""
    script = tmp_path / "after.py"
    script.write_text(AFTER_THE_STORE_WENT)
    here = str(Path(__file__).parent)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b"), here],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:2] == ["first finished", "second finished"], out.stderr[-3000:]
