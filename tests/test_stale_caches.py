"""Right under a shared filesystem's stale caches (issue 18, item 4).

Through one client of a shared filesystem (NFS, Lustre, sshfs) a listing, a folder's time
stamp or a file's attributes may be up to a minute old when another client changed them.
The test bed serves one folder to several clients of its own: this process (the driver)
sees it at ``/tmp/pf-shared``, and ``/run/parsl-flows-slurm/clients/nodeN`` are other
clients of the same folder, each with its own 20 s cache, as the Slurm nodes see it.  So
a file written through ``node1`` is really there, yet this client's listing may not show
it; these tests make that happen, then check that the engine does not go by it.

Without the test bed these tests skip, unless ``LOCAL_SLURM_SHARED`` is set (CI), where a
missing test bed is a failure.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.engine.reuse import has_every_output, present_elements
from parsl_flows.engine.tasks import remove_exceptions
from parsl_flows.numbers_file import forget_numbers, numbers_path, read_numbers, write_numbers
from parsl_flows.store import dumps, present_indices, write_element
from parsl_flows.workflow import map_, new_workflow

STATE = Path("/run/parsl-flows-slurm")
LOCAL = Path(os.environ.get("LOCAL_SLURM_SHARED", "/tmp/pf-shared"))  # this client
NODES = [STATE / "clients" / f"node{k}" for k in (1, 2, 3)]  # other clients, same folder

if not (NODES[0].is_mount() and LOCAL.is_mount()):
    if os.environ.get("LOCAL_SLURM_SHARED"):
        raise RuntimeError(
            f"LOCAL_SLURM_SHARED is set, but {NODES[0]} or {LOCAL} is not a mount: start the "
            "test bed (LOCAL_SLURM_NODES=3 LOCAL_SLURM_SHARED=/tmp/pf-shared "
            "bash tools/local-slurm.sh start)"
        )
    pytest.skip("no shared-filesystem test bed", allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture
def place() -> Iterator[str]:
    """A folder of its own in the shared filesystem, by its name there; removed after."""
    name = f"stale-{uuid.uuid4().hex[:8]}"
    (LOCAL / name).mkdir()
    yield name
    # On the file server itself: this client's stale listing may miss what others wrote.
    shutil.rmtree(STATE / "shared-backing" / name, ignore_errors=True)
    shutil.rmtree(LOCAL / name, ignore_errors=True)


@pytest.fixture
def cluster_place(place: str) -> Iterator[str]:
    """``place``, for a run on the Slurm nodes: Parsl, whose folder is in it, is shut down
    (its blocks cancelled) before it is removed; a later test starts its own."""
    from parsl_flows.engine.runner import runner

    yield place
    runner.shutdown(timeout=30)


def via(client: Path, path: Path) -> Path:
    """``path`` (under this client's mount) as another client sees it."""
    return client / path.relative_to(LOCAL)


def stale_listing(folder: Path, writer: Path) -> list[int]:
    """List ``folder`` here (so this client caches it), then have ``writer`` (another
    client) add element 1; returns what this client lists then: the stale listing."""
    assert present_indices(folder).tolist() == [0]
    write_element(str(via(writer, folder)), 1, dumps(1.0))
    return present_indices(folder).tolist()


# -- listings ---------------------------------------------------------------------------


def test_a_fresh_listing_sees_what_another_client_just_wrote(place: str) -> None:
    folder = LOCAL / place / "y"
    folder.mkdir()
    write_element(str(folder), 0, dumps(0.0))
    assert stale_listing(folder, NODES[0]) == [0], "the test bed's listing was not stale"
    assert present_indices(folder, fresh=True).tolist() == [0, 1]


def test_a_resume_finds_the_elements_another_client_wrote(place: str) -> None:
    # What a resume starts from (no Parsl result tells what a killed driver's tasks did).
    step_dir = LOCAL / place
    folder = step_dir / "return_values" / "y"
    folder.mkdir(parents=True)
    write_element(str(folder), 0, dumps(0.0))
    assert stale_listing(folder, NODES[0]) == [0], "the test bed's listing was not stale"
    assert present_elements(step_dir, ["y"], np.arange(3)).tolist() == [0, 1]


def test_exception_files_another_client_wrote_are_removed_before_a_rerun(place: str) -> None:
    # A stale exception file would read as the new attempt's error if the element's task
    # is lost, or make a task that is still running look finished to the stall check.
    exc_dir = LOCAL / place / "exception"
    exc_dir.mkdir()
    for again in (True, False):  # a retry within a run; a resume's first attempt
        write_element(str(exc_dir), 0, dumps(ValueError("old")))
        assert stale_listing(exc_dir, NODES[0]) == [0], "the test bed's listing was not stale"
        remove_exceptions(exc_dir, np.array([0, 1]), again=again)
        server = STATE / "shared-backing" / exc_dir.relative_to(LOCAL)  # what all see, later
        assert sorted(os.listdir(server)) == [], again


# -- presence checks --------------------------------------------------------------------


def test_a_result_another_client_removed_is_not_taken_for_present(place: str) -> None:
    # The stall check and lost tasks ask the store whether an element finished.
    folder = LOCAL / place / "return_values" / "y"
    folder.mkdir(parents=True)
    write_element(str(folder), 3, dumps(3.0))
    assert has_every_output(LOCAL / place, ["y"], 3)  # and this client caches the file
    os.unlink(via(NODES[0], folder) / "__3__.pickle")
    assert (folder / "__3__.pickle").exists(), "the test bed's attributes were not stale"
    assert not has_every_output(LOCAL / place, ["y"], 3)


# -- the numbers file -------------------------------------------------------------------


def an_output_written_by_the_nodes(place: str, n: int) -> Path:
    """A map output whose elements the nodes wrote, while this client's view of its folder
    was cached before they did."""
    folder = LOCAL / place / "steps" / "00-f" / "return_values" / "y"
    folder.mkdir(parents=True)
    before = os.stat(folder).st_mtime_ns  # this client now caches the folder's time
    time.sleep(1.1)  # a later second: the file server stamps folders to the second here
    for k in range(n):
        write_element(str(via(NODES[k % 2], folder)), k, dumps(float(k)))
    for node in NODES[:2]:  # each writer keeps its view of the folder (NFS does, after a write)
        os.stat(via(node, folder))
    assert os.stat(folder).st_mtime_ns == before, "the test bed's time stamp was not stale"
    return folder


def test_the_nodes_take_a_finished_maps_numbers(place: str) -> None:
    # The map's downstream tasks run on the nodes, each with its own view of the folder.
    folder = an_output_written_by_the_nodes(place, 4)
    assert write_numbers(folder, np.arange(4), np.arange(4.0), "builtins.float", complete=True)
    for node in NODES:  # node1 and node2 wrote elements; node3 never looked
        known = read_numbers(via(node, folder), 4)
        assert known is not None and known.complete, node
        assert known.values.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_folder_changed_after_its_numbers_were_kept_is_read_from_its_files(place: str) -> None:
    folder = an_output_written_by_the_nodes(place, 4)
    assert write_numbers(folder, np.arange(4), np.arange(4.0), "builtins.float", complete=True)
    time.sleep(1.1)  # a later second, as above
    node3 = via(NODES[2], folder)
    write_element(str(node3), 4, dumps(4.0))  # from outside: the numbers no longer cover it
    assert read_numbers(node3, 5) is None
    arr = flows.store.FileBasedObjectArray(node3, (5,))
    assert arr.to_array().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_numbers_removed_by_the_driver_are_gone_for_every_node(place: str) -> None:
    # A resume or restart removes a map's numbers before its elements change; a node that
    # read them before must not keep serving them from a stale view.
    folder = an_output_written_by_the_nodes(place, 2)
    assert write_numbers(folder, np.arange(2), np.arange(2.0), "builtins.float", complete=True)
    node1 = via(NODES[0], folder)
    assert read_numbers(node1, 2) is not None
    forget_numbers(folder)
    assert numbers_path(node1).exists(), "the test bed's attributes were not stale"
    assert read_numbers(node1, 2) is None


# -- a run on the Slurm nodes -----------------------------------------------------------


def _task_files(folder: Path) -> list[str]:
    """The task files of an element folder, on the file server (one element each here)."""
    try:
        return [name for name in os.listdir(folder) if name.startswith("task-")]
    except FileNotFoundError:
        return []


@step(returns="y")
def gated(x: int, gate: str) -> int:
    """Element 0 at once, the others once ``gate`` exists (or after 5 minutes)."""
    import os
    import time

    deadline = time.monotonic() + 300
    while x and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return 10 * x


@step(returns="z")
def plus_one(y: int) -> int:
    return y + 1


@pytest.mark.slurm
def test_a_map_downstream_gets_every_element_the_nodes_wrote(
    cluster_place: str, tmp_path: Path
) -> None:
    """The driver lists the map's output while it runs (as ``status`` does), and its client
    keeps that listing: the map's end must not go by it."""
    if shutil.which("sinfo") is None:
        pytest.fail("the test bed is up, but Slurm's commands are not on PATH")
    env = flows.engine.execution_environment(None, "localcluster", queue=("debug", 2))
    gate = tmp_path / "go"  # /tmp is this machine's: the nodes see it at once
    flow = (
        new_workflow("stale")
        .then(map_(gated, "x[i] -> y[i]", chunksize=1))
        .then(map_(plus_one, "y[i] -> z[i]"))
    )
    builder = flows.workflow.build(flow.on(env), x=list(range(6)), gate=str(gate))
    r = flows.submit(builder, store=LOCAL / cluster_place / "store")
    try:
        folder = r.path / "steps" / "00-gated" / "return_values" / "y"
        server = STATE / "shared-backing" / folder.relative_to(LOCAL)
        deadline = time.monotonic() + 300
        while not _task_files(server):
            assert time.monotonic() < deadline, "element 0 never ran"
            assert r.status == "running", flows.report.log(r)
            time.sleep(0.1)
        assert present_indices(folder).tolist() == [0]  # this client keeps this listing
    finally:
        gate.touch()
    r.wait(300)
    assert r.exit_code == 0, flows.report.log(r)
    first, second = r.called
    assert second.record.submitted_elements == "0-5", flows.report.log(second)
    assert second.outputs.return_values.z.to_array().tolist() == [10 * x + 1 for x in range(6)]
    known = read_numbers(folder, 6)
    assert known is not None and known.complete
    import xarray as xr

    with xr.open_dataset(first.path / "dataset.nc") as dataset:  # the helper listed it here
        assert not dataset["y_mask"].values.any()
        assert dataset["y"].values.tolist() == [10 * x for x in range(6)]


@step(returns="y")
def counted(x: int, gate: str, calls: str) -> int:
    """Elements 0 to 2 at once, the others once ``gate`` exists; each call leaves a file in
    ``calls``."""
    import os
    import time
    import uuid

    deadline = time.monotonic() + 300
    while x >= 3 and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    open(os.path.join(calls, f"{x}-{uuid.uuid4().hex}"), "w").close()
    return 10 * x


@pytest.mark.slurm
def test_a_resume_computes_nothing_twice_though_this_client_listed_the_map(
    cluster_place: str, tmp_path: Path
) -> None:
    """The driver stops while the nodes still run elements, having listed the map's output
    (as ``status`` does); the nodes finish them; the resume, here, must find them all."""
    from parsl_flows.engine.submit import start

    env = flows.engine.execution_environment(None, "localcluster", queue=("debug", 2))
    gate, calls = tmp_path / "go", tmp_path / "calls"  # /tmp: the nodes see it at once
    calls.mkdir()
    flow = (
        new_workflow("resumed")
        .then(map_(counted, "x[i] -> y[i]", chunksize=1))
        .then(map_(plus_one, "y[i] -> z[i]"))
    )
    builder = flows.workflow.build(flow.on(env), x=list(range(6)), gate=str(gate), calls=str(calls))
    execution = start(builder, store=LOCAL / cluster_place / "store")
    folder = execution.run_dir / "steps" / "00-counted" / "return_values" / "y"
    server = STATE / "shared-backing" / folder.relative_to(LOCAL)
    try:
        deadline = time.monotonic() + 300
        while len(_task_files(server)) < 3:
            assert time.monotonic() < deadline, "elements 0 to 2 never ran"
            assert not execution.done.is_set(), flows.report.log(flows.load_run(execution.run_dir))
            time.sleep(0.1)
        assert present_indices(folder).tolist() == [0, 1, 2]  # this client keeps this listing
        execution.request_stop("stopped by the test")  # Parsl's tasks go on, as after a kill
        assert execution.done.wait(60)
    finally:
        gate.touch()
    deadline = time.monotonic() + 300
    while len(_task_files(server)) < 6:  # the nodes finish what the driver left running
        assert time.monotonic() < deadline, "the elements left running never finished"
        time.sleep(0.1)
    stopped = flows.load_run(execution.run_dir)
    assert stopped.status == "interrupted", flows.report.log(stopped)
    r = stopped.resume().wait(300)
    assert r.exit_code == 0, flows.report.log(r)
    assert sorted(int(name.split("-")[0]) for name in os.listdir(calls)) == list(range(6))
    first, second = r.called
    assert first.record.n_reused == 6, flows.report.log(first)
    assert second.record.submitted_elements == "0-5", flows.report.log(second)
    assert second.outputs.return_values.z.to_array().tolist() == [10 * x + 1 for x in range(6)]
