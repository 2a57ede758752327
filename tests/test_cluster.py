"""The cluster test bed: several Slurm nodes on one machine, the store on a shared filesystem.

``LOCAL_SLURM_NODES=3 LOCAL_SLURM_SHARED=/tmp/pf-shared bash tools/local-slurm.sh start``
starts it (``.ci/run`` does): three slurmd, each in a mount namespace of its own where the
shared folder is that node's own sshfs client, with its own caches, while this process
(the driver, on the "login node") sees it through another client.  The store of every
test here lives in the shared folder.  Without the test bed these tests skip, except in
CI (``CI=true``) or with ``LOCAL_SLURM_SHARED`` set, where a missing test bed is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@step(returns="node")
def where(x: int) -> str:
    import time

    time.sleep(0.3)  # long enough that every worker of the block gets some
    return os.environ.get("SLURMD_NODENAME", "")


def test_a_block_of_two_nodes_runs_elements_on_both(computers, shared_store):
    env = computers("twonodes", cores_per_node=2, nodes_per_block=2, poll_seconds=2)
    flow = new_workflow("spread").then(map_(where, "x[i] -> node[i]"))
    r = flows.submit(flows.workflow.build(flow.on(env), x=list(range(24))), store=shared_store)
    r.wait(300)
    s = r.called[0]
    assert r.exit_code == 0, flows.report.log(s)
    nodes = s.outputs.return_values.node.to_array().tolist()
    assert len(set(nodes)) == 2 and set(nodes) <= set(NODES), nodes
    assert len(s.record.batch_jobs) == 1, s.record.batch_jobs  # one block, two nodes
    # The chunker sized tasks for the workers that exist: 2 per node, 2 nodes.
    from parsl_flows.engine.chunking import worker_count
    from parsl_flows.engine.runner import runner

    assert worker_count(runner.dfk.executors[s.record.executor]) == 4


def test_a_block_with_more_nodes_than_the_partition_is_refused_before_submission(
    computers, shared_store
):
    env = computers("toowide", nodes_per_block=len(NODES) + 1)
    flow = new_workflow("wide").then(map_(where, "x[i] -> node[i]"))
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
        flow = new_workflow("never").then(map_(where, "x[i] -> node[i]"))
        r = flows.submit(flows.workflow.build(flow.on(env), x=[1, 2]), store=shared_store)
        r.wait(120)
    finally:
        subprocess.run(["scontrol", "delete", "PartitionName=short"], check=True)
    s = r.called[0]
    assert s.exit_code == 402, flows.report.log(s)
    assert "will never start block job" in flows.report.log(s)
    assert "PartitionTimeLimit" in flows.report.log(s)
    assert not (_jobs() - before), "the block that could never start is still queued"
