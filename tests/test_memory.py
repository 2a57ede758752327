"""Memory per element (issue 20, part 5), against a real local HighThroughputExecutor.

An element that really allocates past its step's ``resources={"memory": ...}`` fails alone
with an :class:`OutOfMemoryError` naming its limit; its neighbours in the same task, its
worker and the machine carry on.  ``retry_resources`` gives later attempts more memory;
without it, running out of memory is not retried.  On Slurm, see ``test_slurm.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import parsl_flows as flows
from parsl_flows import OutOfMemoryError, step
from parsl_flows.engine.configs import fail_blocks_once
from parsl_flows.engine.memory_kills import out_of_memory_kill
from parsl_flows.errors import InfrastructureError
from parsl_flows.selection import select_elements
from parsl_flows.workflow import map_, new_workflow

MB = 2**20


def _grow(mb: int) -> list[np.ndarray]:
    """Really allocate ``mb`` MB, 10 MB at a time, every page written (``np.ones``)."""
    return [np.ones(10 * MB // 8) for _ in range(mb // 10)]


def allocates(x: int) -> int:
    if x == 1:
        held = _grow(600)
        return len(held)
    _grow(50)  # the neighbours use memory too, well within their limit
    return 10 * x


hog = step(allocates, returns="y", resources={"memory": "200MB"})
growing_hog = step(
    allocates, returns="y", resources={"memory": "200MB"}, retry_resources={"memory": 4}
)


def _run(flow, env, store):
    r = flows.submit(flows.workflow.build(flow.on(env), x=[0, 1, 2, 3]), store=store)
    return r.wait(180)


def test_an_element_over_its_memory_fails_alone_and_its_neighbours_go_on(local_env, store):
    flow = new_workflow("oom").then(map_(hog, "x[i] -> y[i]", chunksize=4))  # one task
    r = _run(flow, local_env, store)
    assert r.status == "failed" and r.exit_code == 450  # the run ends normally
    s = r.called[0]
    assert s.exit_code == 402, flows.report.log(s)  # out of memory is not the user's code
    y = s.outputs.return_values.y
    assert y.mask.tolist() == [False, True, False, False]
    assert y.to_array().compressed().tolist() == [0, 20, 30]  # 2 and 3 ran after it
    exc = s.outputs.exception[1]
    assert isinstance(exc, OutOfMemoryError)
    assert isinstance(exc, MemoryError) and isinstance(exc, InfrastructureError)
    assert exc.limit_mb == 200 and exc.cause == "out of memory"
    text = str(exc)
    assert "element 1 of step 'allocates'" in text and "limit of 200MB" in text
    assert "resources={'memory'" in text and "retry_resources" in text
    assert s.record.element_codes == {"402": "1"}
    assert len(s.attempts) == 1 and s.attempts[0]["memory_mb"] == 200
    assert s.attempts[0]["out_of_memory"] == 1
    log = flows.report.log(s)
    assert "with memory 200MB" in log and "1 x OutOfMemoryError" in log
    # as data: the dataset's error text, and a selection by its type (--recompute)
    assert str(r.dataset()["allocates_error"].values[1]).startswith("OutOfMemoryError: ")
    assert select_elements(r.path / "steps" / "00-allocates", "OutOfMemoryError").tolist() == [1]


def test_without_retry_resources_out_of_memory_is_not_retried(local_env, store):
    flow = new_workflow("oom3").then(map_(hog, "x[i] -> y[i]", chunksize=4, max_restarts=3))
    r = _run(flow, local_env, store)
    s = r.called[0]
    assert len(s.attempts) == 1, flows.report.log(s)  # it would only fail again
    assert isinstance(s.outputs.exception[1], OutOfMemoryError)
    assert s.exit_code == 402


def test_with_retry_resources_it_succeeds_on_attempt_2_with_more_memory(local_env, store):
    flow = new_workflow("grow").then(map_(growing_hog, "x[i] -> y[i]", chunksize=4, max_restarts=3))
    r = _run(flow, local_env, store)
    s = r.called[0]
    assert r.exit_code == 0 and s.exit_code == 0, flows.report.log(s)
    assert s.outputs.return_values.y.to_array().tolist() == [0, 60, 20, 30]
    assert [a["memory_mb"] for a in s.attempts] == [200, 800]  # x4 an attempt
    assert [a["out_of_memory"] for a in s.attempts] == [1, 0]
    assert s.record.element_attempts == {"1": "0,2-3", "2": "1"}
    log = flows.report.log(s)
    assert "attempt 2: resubmitting 1 of 4 elements with memory 800MB (retry_resources)" in log


def never_enough(x: int) -> int:
    return len(_grow(10_000)) if x == 1 else x


def test_retry_resources_stop_at_max_restarts(local_env, store):
    always = step(
        never_enough,
        returns="y",
        resources={"memory": "100MB"},
        retry_resources={"memory": lambda attempt: 100 * attempt},
    )
    flow = new_workflow("cap").then(map_(always, "x[i] -> y[i]", max_restarts=3))
    r = _run(flow, local_env, store)
    s = r.called[0]
    assert [a["memory_mb"] for a in s.attempts] == [100, 200, 300], flows.report.log(s)
    assert s.exit_code == 410  # restarts exhausted with the element still out of memory
    assert "limit of 300MB" in str(s.outputs.exception[1])


def many_threads(x: int) -> int:
    """8 threads alive at once, each with numpy work: each reserves a malloc arena (64 MB
    of address space) and a stack (8 MB) and uses little; under ``RLIMIT_AS`` a 100 MB
    limit stopped them (``can't start new thread``), ``RLIMIT_DATA`` counts only their
    stacks (66 MB here)."""
    out: list[float] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        out.append(float(np.ones(10_000).sum()))
        barrier.wait(30)

    workers = [threading.Thread(target=work) for _ in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return len(out) + x


def test_threads_that_reserve_address_space_are_not_out_of_memory(local_env, store):
    threads = step(many_threads, returns="y", resources={"memory": "100MB"})
    r = _run(new_workflow("threads").then(map_(threads, "x[i] -> y[i]")), local_env, store)
    assert r.exit_code == 0, flows.report.log(r.called[0])
    assert r.called[0].outputs.return_values.y.to_array().tolist() == [8, 9, 10, 11]


@step(returns="big", resources={"memory": "150MB"})
def big_call(n: int) -> int:
    return len(_grow(n))


def test_a_plain_call_over_its_memory_is_out_of_memory_too(local_env, store):
    r = flows.submit(flows.workflow.build(new_workflow("call").then(big_call).on(local_env), n=500),
                     store=store).wait(120)  # fmt: skip
    s = r.called[0]
    assert s.exit_code == 402
    exc = s.outputs.exception.fetch_value()
    assert isinstance(exc, OutOfMemoryError)
    assert "the call of step 'big_call'" in str(exc) and "150MB" in str(exc)


def test_memory_is_not_enforced_on_the_thread_pool(thread_env, store):
    # the elements run in the driver's own threads: a limit there would hold the driver
    r = _run(new_workflow("threads_env").then(map_(hog, "x[i] -> y[i]")), thread_env, store)
    s = r.called[0]
    assert s.exit_code == 0, flows.report.log(s)
    assert s.outputs.return_values.y.to_array().tolist() == [0, 60, 20, 30]


# -- Slurm's memory kills, read from a block's files (the real thing: test_slurm.py) -------

KILL = (
    "slurmstepd-node1: error: StepId=271.batch exceeded memory limit (433192960 > 104857600), "
    "being killed\nslurmstepd-node1: error: Exceeded job memory limit\n"
)


class ManagerLost(Exception):  # Parsl's has the lost manager's id
    def __init__(self, manager_id: bytes) -> None:
        self.manager_id = manager_id


def _blocks(tmp_path: Path, stderr: dict[str, str]) -> tuple[Path, dict[str, tuple[str, str]]]:
    logdir = tmp_path / "label"
    blocks = {}
    for block, text in stderr.items():
        (logdir / f"block-{block}" / f"manager{block}").mkdir(parents=True)
        script = tmp_path / f"parsl.label.block-{block}.123"
        script.write_text("#!/bin/bash\n#SBATCH --mem=450M\n")
        Path(f"{script}.stderr").write_text(text)
        blocks[block] = (str(270 + int(block)), f"{script}.stderr")
    return logdir, blocks


def test_a_pool_killed_for_memory_is_out_of_memory_and_names_its_job(tmp_path):
    logdir, blocks = _blocks(tmp_path, {"0": "", "1": KILL})
    error = out_of_memory_kill(ManagerLost(b"manager1"), logdir, blocks, "hog", 200)
    assert isinstance(error, OutOfMemoryError)
    assert "block job 271" in str(error) and "--mem=450M" in str(error)
    assert "exceeded memory limit" in str(error) and error.job == "271"
    # the pool of block 0 was lost for another reason: a plain loss
    assert out_of_memory_kill(ManagerLost(b"manager0"), logdir, blocks, "hog", 200) is None
    # task/cgroup: the kernel's OOM killer, as slurmstepd reports it
    cgroup = "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=272.batch.\n"
    logdir, blocks = _blocks(tmp_path / "cg", {"2": cgroup})
    assert out_of_memory_kill(ManagerLost(b"manager2"), logdir, blocks, "hog", None)
    # not a batch system's executor: nothing to read
    assert out_of_memory_kill(ManagerLost(b"m"), None, {}, "hog", None) is None


def test_a_block_killed_for_memory_does_not_take_its_executor_out_of_service(tmp_path):
    from parsl.jobs.states import JobState, JobStatus

    killed, broken = tmp_path / "killed.stderr", tmp_path / "broken.stderr"
    killed.write_text(KILL)
    broken.write_text("cannot load the environment\n")
    calls: list[Exception] = []
    executor = SimpleNamespace(
        bad_state_is_set=False,
        provider=SimpleNamespace(init_blocks=0),
        set_bad_state_and_fail_all=calls.append,
    )
    fail_blocks_once(executor, {"0": JobStatus(JobState.FAILED, stderr_path=str(killed))})
    assert not calls  # its elements are out of memory; retries need the executor
    fail_blocks_once(executor, {"1": JobStatus(JobState.FAILED, stderr_path=str(broken))})
    assert len(calls) == 1  # a block that cannot start still fails the executor


def test_the_limit_costs_an_element_a_few_microseconds():
    """Read what the process holds, set the limit, put it back: per element, on the worker."""
    from parsl_flows.engine.memory_limit import MemoryLimit

    for _ in range(100):  # warm up (opens /proc/self/statm once)
        with MemoryLimit(1024):
            pass
    n = 10_000
    start = time.perf_counter()
    for _ in range(n):
        with MemoryLimit(1024) as limit:
            pass
    each = (time.perf_counter() - start) / n
    print(f"memory limit: {each * 1e6:.1f} µs an element")
    assert limit.active and each < 50e-6


@pytest.mark.parametrize(
    ("resources", "retry", "words"),
    [
        ({"memory": "1GB"}, {"cores": 2}, ["cannot grow 'cores'", "only 'memory'"]),
        ({"memory": "1GB"}, {"memory": 0}, ["factor > 0", "not 0"]),
        ({"memory": "1GB"}, {"memory": -2}, ["factor > 0", "not -2"]),
        ({"memory": "1GB"}, {"memory": "8GB"}, ["factor > 0", "not '8GB'"]),
        (None, {"memory": 2}, ["resources give none", "resources={'memory': '4GB'}"]),
        (None, {"memory": lambda attempt: "lots"}, ["for attempt 1", "'lots'"]),
        ({"memory": "1GB"}, [("memory", 2)], ["must be a dict"]),
    ],
)
def test_retry_resources_are_checked_when_the_step_is_made(resources, retry, words):
    with pytest.raises((ValueError, TypeError)) as raised:
        step(lambda x: x, returns="y", resources=resources, retry_resources=retry)
    for word in words:
        assert word in str(raised.value)


def test_retry_resources_give_the_memory_of_each_attempt():
    doubled = step(
        lambda x: x, returns="y", resources={"memory": "1GB"}, retry_resources={"memory": 2}
    )
    assert [doubled.retry_resources.memory_mb(1024, k) for k in (1, 2, 3)] == [1024, 2048, 4096]
    by_attempt = step(lambda x: x, returns="y", retry_resources={"memory": lambda a: f"{a}GB"})
    assert [by_attempt.retry_resources.memory_mb(None, k) for k in (1, 2)] == [1024, 2048]
    assert not step(lambda x: x, returns="y").retry_resources
