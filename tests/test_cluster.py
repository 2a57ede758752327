"""The cluster test bed: several Slurm nodes on one machine, the store on a shared filesystem.

``LOCAL_SLURM_NODES=3 LOCAL_SLURM_SHARED=/tmp/pf-shared bash tools/local-slurm.sh start``
starts it (``.ci/run`` does): three slurmd, each in a mount namespace of its own where the
shared folder is that node's own sshfs client, with its own caches, while this process
(the driver, on the "login node") sees it through another client.  The store of every
test here lives in the shared folder.  Without the test bed these tests skip, except in
CI (``CI=true``) or with ``LOCAL_SLURM_SHARED`` set, where a missing test bed is a failure.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import resume_computing_nothing_twice, wait_for

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.workflow import map_, new_workflow

STATE = Path(os.environ.get("LOCAL_SLURM_STATE", "/run/parsl-flows-slurm"))


def _test_bed() -> tuple[Path, list[str]] | None:
    """The shared folder and the nodes of the running test bed, if there is one."""
    try:
        shared = Path((STATE / "shared").read_text().strip())
        nodes = (STATE / "nodes").read_text().split()
    except OSError:
        return None
    if not shared.is_mount() or len(nodes) < 2 or shutil.which("sinfo") is None:
        return None
    return shared, nodes


BED = _test_bed()
if BED is None:
    if os.environ.get("CI") == "true" or os.environ.get("LOCAL_SLURM_SHARED"):
        raise RuntimeError(
            "the cluster tests need the test bed: LOCAL_SLURM_NODES=3 "
            "LOCAL_SLURM_SHARED=/tmp/pf-shared bash tools/local-slurm.sh start"
        )
    pytest.skip(
        "no multi-node test bed (LOCAL_SLURM_NODES=3 LOCAL_SLURM_SHARED=DIR "
        "bash tools/local-slurm.sh start)",
        allow_module_level=True,
    )
SHARED, NODES = BED

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture
def shared_store() -> Iterator[Path]:
    """A store of its own in the shared folder, removed afterwards."""
    path = SHARED / f"test-{uuid.uuid4().hex[:8]}"
    yield path / "store"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def computers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a computers file; ``computers(name, **settings)`` returns its environment."""
    path = tmp_path / "computers.toml"
    monkeypatch.setenv("PARSL_FLOWS_COMPUTERS", str(path))
    entries: list[str] = []

    def define(name: str, **settings: object) -> flows.engine.ExecutionEnvironment:
        lines = [f"[{name}]"]
        for key, value in {"partition": "debug", **settings}.items():
            text = f'"{value}"' if isinstance(value, str) else str(value).lower()
            lines.append(f"{key} = {text}")
        entries.append("\n".join(lines))
        path.write_text("\n\n".join(entries) + "\n")
        return flows.engine.execution_environment(None, name)

    return define


def _jobs() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@step(returns="worker")
def where(x: int) -> str:
    import time

    time.sleep(0.3)  # long enough that every worker of the block gets some
    return f"{os.environ.get('SLURMD_NODENAME', '')}/{os.getpid()}"


def test_a_block_of_two_nodes_runs_elements_on_both(computers, shared_store):
    # 3 cores a node: more than this machine has, as nodes of the test bed advertise
    env = computers("twonodes", cores_per_node=3, nodes_per_block=2, poll_seconds=2)
    flow = new_workflow("spread").then(map_(where, "x[i] -> worker[i]"))
    r = flows.submit(flows.workflow.build(flow.on(env), x=list(range(36))), store=shared_store)
    r.wait(300)
    s = r.called[0]
    assert r.exit_code == 0, flows.report.log(s)
    workers = set(s.outputs.return_values.worker.to_array().tolist())
    nodes = {w.split("/")[0] for w in workers}
    assert len(nodes) == 2 and nodes <= set(NODES), workers
    assert len(s.record.batch_jobs) == 1, s.record.batch_jobs  # one block, two nodes
    # Each node's pool has the 3 workers the block asked for (the chunker counts 6), not
    # as many as the machine has cores.
    per_node = {n: sum(w.startswith(f"{n}/") for w in workers) for n in nodes}
    assert max(per_node.values()) == 3, per_node
    from parsl_flows.engine.chunking import worker_count
    from parsl_flows.engine.runner import runner

    assert worker_count(runner.dfk.executors[s.record.executor]) == 6


def test_a_block_with_more_nodes_than_the_partition_is_refused_before_submission(
    computers, shared_store
):
    env = computers("toowide", nodes_per_block=len(NODES) + 1)
    flow = new_workflow("wide").then(map_(where, "x[i] -> worker[i]"))
    builder = flows.workflow.build(flow.on(env), x=[1, 2])
    with pytest.raises(
        ValueError, match=rf"blocks of {len(NODES) + 1} nodes.*at most {len(NODES)}"
    ):
        flows.submit(builder, store=shared_store)
    assert not (shared_store / "runs").exists()


def test_a_block_slurm_never_starts_is_reported_within_poll_seconds(computers, shared_store):
    """A limit the check before submission does not look at: a partition's time limit."""
    subprocess.run(
        ["scontrol", "create", "PartitionName=short", f"Nodes={NODES[0]}", "MaxTime=1"], check=True
    )
    try:
        env = computers("short", partition="short", walltime="00:30:00", poll_seconds=2)
        before = _jobs()
        flow = new_workflow("never").then(map_(where, "x[i] -> worker[i]"))
        r = flows.submit(flows.workflow.build(flow.on(env), x=[1, 2]), store=shared_store)
        r.wait(120)
    finally:
        subprocess.run(["scontrol", "delete", "PartitionName=short"], check=True)
    s = r.called[0]
    assert s.exit_code == 402, flows.report.log(s)
    assert "will never start block job" in flows.report.log(s)
    assert "PartitionTimeLimit" in flows.report.log(s)
    assert not (_jobs() - before), "the block that could never start is still queued"


# -- the seed story, a big sweep, a killed driver: right with the store on the shared fs ---


def run(flow, env, store, **inputs):
    return flows.submit(flows.workflow.build(flow.on(env), **inputs), store=store).wait(600)


@pytest.fixture(scope="module")
def cluster_env():
    return flows.engine.execution_environment(None, "localcluster", queue=("debug", 2))


def test_the_seed_story_on_the_test_bed(cluster_env, shared_store):
    import seed_flows as seed

    r = run(
        seed.total_flow_with_restarts,
        cluster_env,
        shared_store,
        **seed.seed_inputs(mesh_error=False, failure_probability=0.2),
    )
    charge_step = r.step("modified_get_charge")
    attempts = charge_step.attempts
    assert attempts[0]["submitted_elements"] == "2-17,22-37,42-57,62-77"
    for before, after in itertools.pairwise(attempts):
        assert after["n_submitted"] == before["n_submitted"] - before["succeeded"]
    charge = charge_step.outputs.return_values.charge
    electrostatics = r.step("modified_electrostatics").outputs.return_values.electrostatics
    assert electrostatics.mask.sum() == 200 - 64  # outside V_limits: masked, as the seed says
    assert np.sum(charge.mask != electrostatics.mask) <= 1  # 64 * 0.2**5: 2% of runs leave one
    # A restart with wider limits reuses the model steps and computes the sweep again.
    builder = r.get_builder_restart()
    builder.kwargs.V_limits = [-0.45, 0.45]
    again = flows.submit(builder, store=shared_store).wait(600)
    for name in ("make_geometry", "modified_make_mesh", "make_materials"):
        assert (again.step(name).record.n_reused, again.step(name).record.n_submitted) == (1, 0)
    masked = again.step("modified_electrostatics").outputs.return_values.electrostatics.mask
    assert masked.sum() < electrostatics.mask.sum()
    avg = again.outputs.return_values.avg_electrostatic_charge.fetch_value()
    charge = again.step("modified_get_charge").outputs.return_values.charge.to_array()
    assert avg == pytest.approx(np.mean(charge))
    # A fresh build of those inputs, reusing from the whole store (its index files on the
    # shared filesystem): every element that exists is taken; only failures run again.
    inputs = seed.seed_inputs(mesh_error=False, failure_probability=0.2, V_limits=[-0.45, 0.45])
    fresh = flows.submit(
        flows.workflow.build(seed.total_flow_with_restarts.on(cluster_env), **inputs),
        store=shared_store,
        reuse="store",
    ).wait(600)
    rec = fresh.step("modified_electrostatics").record
    assert (rec.n_reused, rec.n_submitted) == ((~masked).sum(), masked.sum())
    assert rec.reused_from == again.id
    rec = fresh.step("modified_get_charge").record
    charge_mask = again.step("modified_get_charge").outputs.return_values.charge.mask
    assert rec.n_reused == (~charge_mask).sum()
    assert set(fresh.dataset()["modified_get_charge_run"].values.ravel()) <= {
        again.id,
        fresh.id,
        "",
    }


def _unlucky_once(name: str, marks: str) -> bool:
    """True for about 5% of first calls: an element fails once, then works."""
    import random

    mark = Path(marks, name)
    if mark.exists() or random.random() >= 0.05:
        return False
    mark.touch()
    return True


@step(returns="y")
def doubled_or_flaky(x: int, marks: str) -> int:
    if _unlucky_once(f"a{x}", marks):
        raise RuntimeError(f"element {x} was unlucky")
    return 2 * x


@step(returns="z")
def plus_one_or_flaky(y: int, marks: str) -> int:
    if _unlucky_once(f"b{y}", marks):
        raise RuntimeError(f"element {y} was unlucky")
    return y + 1


def test_a_two_map_sweep_of_10000_with_random_failures_and_restarts(
    computers, shared_store, tmp_path
):
    env = computers("sweep", cores_per_node=2, nodes_per_block=3, poll_seconds=5)
    flow = (
        new_workflow("sweep")
        .then(map_(doubled_or_flaky, "x[i] -> y[i]", max_restarts=2))
        .then(map_(plus_one_or_flaky, "y[i] -> z[i]"))  # no restart within the run
    )
    n = 10_000
    r = run(flow, env, shared_store, x=list(range(n)), marks=str(tmp_path))
    first, second = r.called
    failed_first = first.attempts[0]["n_submitted"] - first.attempts[0]["succeeded"]
    assert 250 < failed_first < 750, first.attempts  # 5%, within reason
    assert first.attempts[1]["n_submitted"] == failed_first
    assert first.exit_code == 0 and not first.outputs.return_values.y.to_array().mask.any()
    z = second.outputs.return_values.z.to_array()
    failed = np.flatnonzero(z.mask)
    assert second.exit_code == 401 and 250 < len(failed) < 750
    assert sorted(int(p.name[1:]) // 2 for p in tmp_path.glob("b*")) == failed.tolist()
    restarted = flows.submit(r.get_builder_restart(), store=shared_store).wait(600)
    rec = restarted.called[1].record
    assert (rec.n_reused, rec.n_submitted) == (n - len(failed), len(failed))
    assert restarted.called[0].record.n_reused == n
    assert restarted.exit_code == 0, flows.report.log(restarted)
    z = restarted.called[1].outputs.return_values.z.to_array()
    assert not z.mask.any() and z.tolist() == [2 * x + 1 for x in range(n)]
    y = restarted.called[0].outputs.return_values.y.to_array()
    assert y.tolist() == [2 * x for x in range(n)]


DRIVER = """
import sys
import parsl_flows as flows
from parsl_flows import step
from parsl_flows.workflow import map_, new_workflow

@step(returns="y")
def counted(x, calls):
    import os, time, uuid
    open(os.path.join(calls, f"{x}-{uuid.uuid4().hex}"), "w").close()
    time.sleep(0.02)
    return 2 * x

env = flows.engine.execution_environment(None, "localcluster", queue=("debug", 2))
flow = new_workflow("killme").then(map_(counted, "x[i] -> y[i]")).on(env)
run = flows.submit(flows.workflow.build(flow, x=list(range(2000)), calls=sys.argv[2]),
                   store=sys.argv[1])
print(run.path, flush=True)
run.wait()
"""


def _backing(path: Path) -> Path:
    """Where the file server keeps ``path``: what every client sees once its caches expire."""
    return STATE / "shared-backing" / path.relative_to(SHARED)


def test_resume_after_a_sigkilled_driver_computes_nothing_twice(shared_store, tmp_path):
    import signal
    import sys

    calls = tmp_path / "calls"  # local: the nodes share this machine's /tmp
    calls.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(shared_store), str(calls)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        run_path = Path(proc.stdout.readline().strip())

        def a_third_done() -> bool:
            assert proc.poll() is None, "the driver ended before it could be killed"
            return len(os.listdir(calls)) >= 700

        wait_for(a_third_done, "a third of the map done", 300)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Only elements cut off mid-call by the kill and by the take-over run twice.
    resume_computing_nothing_twice(run_path, calls, 2000, 600)


@step(returns="node")
def slow_where(x: int, marks: str) -> str:
    node = os.environ.get("SLURMD_NODENAME", "")
    Path(marks, f"{x}-{node}-{uuid.uuid4().hex[:6]}").touch()
    time.sleep(1)
    return node


def test_a_node_lost_mid_run_costs_no_restart_and_nothing_is_lost(
    computers, shared_store, tmp_path
):
    marks = tmp_path / "marks"
    marks.mkdir()
    # One block per node (exclusive), so that losing a node loses one block of three.
    env = computers("pernode", cores_per_node=2, max_blocks=len(NODES), exclusive=True,
                    poll_seconds=2)  # fmt: skip
    flow = new_workflow("lose").then(map_(slow_where, "x[i] -> node[i]"))
    n = 90
    r = flows.submit(
        flows.workflow.build(flow.on(env), x=list(range(n)), marks=str(marks)), store=shared_store
    )
    victim = ""
    try:
        deadline = time.monotonic() + 180
        while not victim:  # a node that runs elements while another does too
            busy = sorted({m.split("-")[1] for m in os.listdir(marks)})
            victim = busy[0] if len(busy) >= 2 else ""
            assert time.monotonic() < deadline, f"elements never ran on two nodes: {busy}"
            assert r.status not in ("finished", "failed"), flows.report.log(r)
            time.sleep(0.2)
        subprocess.run(
            ["scontrol", "update", f"NodeName={victim}", "State=DOWN", "Reason=test"], check=True
        )
        r.wait(600)
    finally:
        if victim:
            subprocess.run(["scontrol", "update", f"NodeName={victim}", "State=RESUME"])
    s = r.called[0]
    assert r.exit_code == 0 and s.exit_code == 0, flows.report.log(s)
    nodes = s.outputs.return_values.node.to_array()
    assert not nodes.mask.any()
    runs = [m.split("-")[:2] for m in os.listdir(marks)]
    lost = {x for x, node in runs if node == victim}
    # Ran again: a second start, elsewhere or on the victim itself once slurmd registers
    # again (ReturnToService=2 brings a DOWN node with a live slurmd back).
    rerun = {x for x in lost if sum(y == x for y, _ in runs) >= 2}
    assert rerun, "no element of the lost node ran again"
    assert s.attempts[0]["infrastructure"] >= 1, s.attempts
    assert "worker pool lost" in flows.report.log(s) or "lost" in flows.report.log(s)


@step(returns="y")
def tripled(x: int) -> int:
    time.sleep(0.25)
    return 3 * x


def test_a_shared_filesystem_that_stalls_for_30_s_only_delays_the_run(computers, shared_store):
    import signal

    node = NODES[-1]
    env = computers("stalling", cores_per_node=2, scheduler_options=f"#SBATCH --nodelist={node}",
                    poll_seconds=2)  # fmt: skip
    flow = new_workflow("stall").then(map_(tripled, "x[i] -> y[i]"))
    n = 160
    r = flows.submit(flows.workflow.build(flow.on(env), x=list(range(n))), store=shared_store)
    client = int((STATE / f"sshfs-{node}.pid").read_text())
    results = _backing(r.path / "steps" / "00-tripled" / "return_values" / "y")
    deadline = time.monotonic() + 180
    while (len(os.listdir(results)) if results.exists() else 0) < 20:
        assert time.monotonic() < deadline, "no element finished"
        time.sleep(0.1)
    os.kill(client, signal.SIGSTOP)  # every file operation of the node now waits
    try:
        stalled_at = len(os.listdir(results))
        time.sleep(30)  # the fault: 30 s of a filesystem that does not answer
        assert len(os.listdir(results)) <= stalled_at + 4  # the stall was real
    finally:
        os.kill(client, signal.SIGCONT)
    r.wait(600)
    s = r.called[0]
    assert r.exit_code == 0 and s.exit_code == 0, flows.report.log(s)
    assert s.outputs.return_values.y.to_array().tolist() == [3 * x for x in range(n)]
    assert [(a["failed"], a["infrastructure"]) for a in s.attempts] == [(0, 0)], s.attempts
