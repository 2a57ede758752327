"""Restarts of failed elements, reuse of unchanged work, resume after a killed driver."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import seed_flows as seed
from helpers import resume_computing_nothing_twice

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.lock import RunLockedError
from parsl_flows.ranges import expand
from parsl_flows.workflow import map_, new_workflow

pytestmark = pytest.mark.slow


def run(flow, env, store, **inputs):
    return flows.submit(flows.workflow.build(flow.on(env), **inputs), store=store).wait(300)


# -- restarts ------------------------------------------------------------------------------


def test_seed_restarts_resubmit_exactly_the_failed_elements(local_env, store):
    r = run(
        seed.total_flow_with_restarts,
        local_env,
        store,
        **seed.seed_inputs(mesh_error=False, failure_probability=0.2),
    )
    charge_step = r.step("modified_get_charge")
    attempts = charge_step.attempts
    assert attempts[0]["n_submitted"] == 64
    assert attempts[0]["submitted_elements"] == "2-17,22-37,42-57,62-77"
    for before, after in itertools.pairwise(attempts):
        failed_before = before["n_submitted"] - before["succeeded"]
        assert after["n_submitted"] == failed_before
    assert 1 <= len(attempts) <= 5
    log = flows.report.log(charge_step)
    for a in attempts[1:]:
        assert f"attempt {a['attempt']}: resubmitting {a['n_submitted']} of 64 elements" in log
    charge = charge_step.outputs.return_values.charge
    electrostatics = r.step("modified_electrostatics").outputs.return_values.electrostatics
    still_failed = np.sum(charge.mask != electrostatics.mask)
    if still_failed == 0:  # overwhelmingly likely: 64 * 0.2**5 = 2%
        assert charge_step.exit_code == 0
    else:  # the elements left failed used all five attempts
        assert charge_step.exit_code == 410
        assert set(charge_step.record.element_attempts) >= {"5"}
    # every element records its attempts; the sum matches the attempts' submissions
    per_element = {
        n: int(k) for k, text in charge_step.record.element_attempts.items() for n in expand(text)
    }
    assert sorted(per_element) == expand("2-17,22-37,42-57,62-77")
    assert sum(per_element.values()) == sum(a["n_submitted"] for a in attempts)
    avg = r.outputs.return_values.avg_electrostatic_charge.fetch_value()
    assert avg == pytest.approx(np.mean(charge.to_array()))


@step(returns="y")
def persistent_or_transient(x: int, marks: str) -> int:
    mark = Path(marks, str(x))
    if x % 2:
        raise ValueError(f"element {x} is ill-defined")
    if not mark.exists():  # fails once, then works
        mark.touch()
        raise TimeoutError(f"element {x} timed out")
    return x


def test_retry_on_retries_only_the_named_errors(local_env, store, tmp_path):
    flow = new_workflow("retry_on").then(
        map_(persistent_or_transient, "x[i] -> y[i]", max_restarts=5, retry_on=TimeoutError)
    )
    r = run(flow, local_env, store, x=list(range(6)), marks=str(tmp_path))
    s = r.called[0]
    assert [a["n_submitted"] for a in s.attempts] == [6, 3]  # odd ones never retried
    assert s.record.element_attempts == {"1": "1,3,5", "2": "0,2,4"}
    assert s.outputs.return_values.y.mask.tolist() == [False, True] * 3
    assert s.exit_code == 401  # not 410: nothing used up its restarts
    errors = s.outputs.exception.fetch_value()
    assert all(isinstance(e, ValueError) for e in errors.compressed())


@step(returns="value")
def flaky(counter: str, fail_times: int) -> str:
    calls = len(os.listdir(counter))
    Path(counter, str(calls)).touch()
    if calls < fail_times:
        raise ConnectionError(f"call {calls} failed")
    return "ok"


@pytest.mark.parametrize(("restarts", "exit_code"), [(3, 0), (2, 410)])
def test_with_restarts_reruns_a_plain_step(local_env, store, tmp_path, restarts, exit_code):
    counter = tmp_path / "calls"
    counter.mkdir()
    flow = new_workflow("flaky").then(flaky).with_restarts({flaky: restarts})
    r = run(flow, local_env, store, counter=str(counter), fail_times=2)
    s = r.called[0]
    assert s.exit_code == exit_code
    assert len(s.attempts) == min(restarts, 3)
    if exit_code == 0:
        assert r.outputs.return_values.value.fetch_value() == "ok"
    else:
        assert isinstance(s.outputs.exception.fetch_value(), ConnectionError)


# -- reuse of unchanged work ---------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(local_env, tmp_path_factory):
    store = tmp_path_factory.mktemp("reuse")
    return run(seed.new_flow, local_env, store, **seed.seed_inputs(mesh_error=False))


def test_restart_with_new_limits_reuses_the_model_steps(first_run):
    builder = first_run.get_builder_restart()
    builder.kwargs.V_limits = [-0.45, 0.45]
    r = flows.submit(builder, store=first_run.path.parents[1]).wait(300)
    for name in ("make_geometry", "modified_make_mesh", "make_materials"):
        rec = r.step(name).record
        assert (rec.n_reused, rec.n_submitted) == (1, 0), name
        assert rec.reused_from == first_run.id
    electrostatics = r.step("modified_electrostatics").record
    assert electrostatics.n_reused == 0 and electrostatics.n_submitted == 200
    assert "reused 1 of 1 elements from run" in flows.report.log(r.step("make_geometry"))
    assert "reused" in flows.report.progress(r)


def test_restart_without_reuse_recomputes_everything(first_run):
    builder = first_run.get_builder_restart()
    r = flows.submit(builder, store=first_run.path.parents[1], reuse=False).wait(300)
    assert all(s.record.n_reused == 0 for s in r.called)
    assert r.step("make_geometry").record.n_submitted == 1


def test_extending_a_sweep_computes_only_the_new_elements(local_env, store):
    inputs = seed.seed_inputs()
    for extra in ("V_limits", "failure_probability", "mesh_error"):
        inputs.pop(extra)
    first = run(seed.total_flow, local_env, store, **inputs)
    assert first.exit_code == 0
    builder = first.get_builder_restart()
    builder.kwargs.V_right = np.concatenate([inputs["V_right"], np.linspace(0.6, 1.0, 5)])
    second = flows.submit(builder, store=store).wait(300)
    assert second.exit_code == 0
    for name in ("run_electrostatics", "get_charge"):
        rec = second.step(name).record
        assert rec.shape == [10, 25]
        assert (rec.n_reused, rec.n_submitted) == (200, 50), name
    assert second.step("average_charge").record.n_submitted == 1  # its input changed
    old = first.step("get_charge").outputs.return_values.charge.to_array()
    new = second.step("get_charge").outputs.return_values.charge.to_array()
    np.testing.assert_allclose(new[:, :20], old)


# -- resume after a killed driver ----------------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import sys
    import parsl_flows as flows
    from parsl_flows import step
    from parsl_flows.workflow import map_, new_workflow

    @step(returns="y")
    def counted(x, calls):
        import os, time, uuid
        open(os.path.join(calls, f"{x}-{uuid.uuid4().hex}"), "w").close()
        time.sleep(0.004)
        return 2 * x

    env = flows.engine.execution_environment(None, "localhost")
    flow = new_workflow("killme").then(map_(counted, "x[i] -> y[i]")).on(env)
    run = flows.submit(flows.workflow.build(flow, x=list(range(2000)), calls=sys.argv[2]),
                       store=sys.argv[1])
    print(run.path, flush=True)
    run.wait()
    """
)


def test_resume_after_sigkill_computes_only_what_is_missing(store, tmp_path, local_env):
    calls = tmp_path / "calls"
    calls.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store), str(calls)], stdout=subprocess.PIPE, text=True
    )
    try:
        run_path = Path(proc.stdout.readline().strip())
        deadline = time.monotonic() + 120
        while len(os.listdir(calls)) < 1000:
            assert proc.poll() is None, "the driver ended before it could be killed"
            assert time.monotonic() < deadline, "the map never got half done"
            time.sleep(0.05)
        with pytest.raises(RunLockedError, match="already being driven by pid"):
            flows.load_run(run_path).resume()
        helpers = psutil.Process(proc.pid).children(recursive=True)  # the HTEX interchange
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Only elements cut off mid-call by the kill ran twice (2 workers: a few at most).
    resumed = resume_computing_nothing_twice(run_path, calls, 2000, 300)
    assert "taking over the stale lock" in flows.report.log(resumed)
    # The dead driver's interchange and worker pool (Parsl run dir 000) were stopped.
    dead_dir = str(store / "parsl-runinfo" / "000") + "/"
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if dead_dir in " ".join(p.info["cmdline"] or []) or p.pid in {h.pid for h in helpers}
    ]
    assert helpers and leftovers == [], "the dead driver's Parsl processes are still running"


def test_resuming_a_finished_run_does_nothing(local_env, store, caplog):
    r = run(new_workflow("done").then(seed.make_geometry), local_env, store, x=1.0, y=2.0)
    with caplog.at_level(logging.WARNING):
        again = flows.load_run(r.path).resume()
    assert "nothing to resume" in caplog.text
    assert again.exit_code == 0 and again.status == "finished"


def test_keys_that_fail_cost_only_the_reuse_of_that_map(local_env, store, monkeypatch) -> None:
    # A map's keys are worked out beside it, in a thread: if that fails, the map's elements
    # still stand; only a later restart cannot reuse them (it recomputes them).
    from parsl_flows.engine.hashing import KeyBook

    real = KeyBook.node_keys

    def broken(self, node, *args, **kwargs):  # type: ignore[no-untyped-def]
        if node.name == "double":
            raise RuntimeError("keys went wrong")
        return real(self, node, *args, **kwargs)

    monkeypatch.setattr(KeyBook, "node_keys", broken)
    flow = new_workflow("k").then(map_(double, "x[i] -> y[i]"))
    run = flows.run(flows.workflow.build(flow.on(local_env), x=[1, 2, 3]), store=store)
    assert run.exit_code == 0, run.log()
    assert run.step("double").outputs.return_values.y.to_array().tolist() == [2, 4, 6]
    assert "cannot be reused later: RuntimeError: keys went wrong" in run.step("double").log()
    monkeypatch.setattr(KeyBook, "node_keys", real)
    again = flows.run(run.get_builder_restart(), store=store)
    assert again.exit_code == 0 and again.step("double").record.n_reused == 0


@step(returns="y")
def double(x: int) -> int:
    return 2 * x
