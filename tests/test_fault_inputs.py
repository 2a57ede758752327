"""Issue 10: the fault table, each fault injected for real.

Every row of the table is a test here: steps that return the wrong thing, values that
cannot be stored, awkward input arrays, an empty sweep, a store that is a file, two
drivers on one run, a broken Parsl config file, where the driver listens, and elements
that raise ``SystemExit``, ``KeyboardInterrupt`` or another ``BaseException``.  Runs use
the real local HighThroughputExecutor (``local_env``); waiting is done by polling the
store or a marker file with a deadline, never by sleeping a guess.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import assert_usage_error, cli, stored_elements, wait_for

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.engine.failures import UnpicklableError, exception_bytes, traceback_text
from parsl_flows.engine.runner import runner
from parsl_flows.lock import RunLockedError
from parsl_flows.store import FileBasedObjectArray
from parsl_flows.workflow import map_, new_workflow

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def run(flow, env, store, **inputs) -> flows.Run:
    return flows.submit(flows.workflow.build(flow.on(env), **inputs), store=store).wait(TIMEOUT)


# -- 1. a step returns a tuple of the wrong length -----------------------------------------


@step(returns=("a", "b"))
def two_outputs(x: int):
    if x == 1:
        return (x,)  # too short
    if x == 2:
        return (x, x, x)  # too long
    if x == 3:
        return [x, x]  # a list, not a tuple
    return x, 10 * x


@step(returns="c")
def uses_a(a):
    return a


@pytest.mark.slow
def test_wrong_length_tuple_of_a_plain_call_is_a_missing_output(local_env, store):
    flow = new_workflow("short_call").then(two_outputs).then(uses_a)
    r = run(flow, local_env, store, x=1)
    assert r.exit_code == 450
    s = r.step("two_outputs")
    assert s.exit_code == 403 and s.status == "failed"
    assert list(s.outputs.return_values) == []  # neither output exists
    message = str(s.outputs.exception.fetch_value())
    assert "step 'two_outputs'" in message
    assert "returns=('a', 'b')" in message
    assert "must return a tuple of 2 values" in message
    assert "it returned a tuple of 1: (1,)" in message
    assert message in s.record.message
    assert "did not return every declared output" in s.log()
    assert r.step("uses_a").status == "skipped"
    assert r.step("uses_a").record.missing_inputs == ["a"]


@pytest.mark.slow
def test_wrong_length_tuple_in_a_map_fails_only_those_elements(local_env, store):
    flow = new_workflow("short_map").then(map_(two_outputs, "x[i] -> a[i], b[i]"))
    r = run(flow, local_env, store, x=[0, 1, 2, 3, 4])
    assert r.exit_code == 450
    s = r.called[0]
    assert s.exit_code == 403
    assert s.record.element_codes == {"403": "1-3"}
    bad = [False, True, True, True, False]
    a, b = s.outputs.return_values.a, s.outputs.return_values.b
    assert a.mask.tolist() == b.mask.tolist() == bad
    assert a.to_array().compressed().tolist() == [0, 4]
    assert b.to_array().compressed().tolist() == [0, 40]
    exceptions = s.outputs.exception
    assert exceptions.mask.tolist() == [not x for x in bad]
    # Mapped elements of a list of ints arrive as numpy integers: (np.int64(1),)
    for n, returned in [(1, "a tuple of 1: ("), (2, "a tuple of 3: ("), (3, "list [")]:
        message = str(exceptions[n])
        assert "step 'two_outputs'" in message and "returns=('a', 'b')" in message, message
        assert f"it returned {returned}" in message, message
    assert "end the step with 'return a, b'" in str(exceptions[3])
    log = s.log()
    assert "3 x MissingOutputError" in log
    assert "element 2 (2,): MissingOutputError" in log


# -- 2. a return value that cannot be pickled ----------------------------------------------


class LockedError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@step(returns=("value", "tag"))
def unstorable(kind: str):
    if kind == "lambda":
        return (lambda: 42), kind  # cloudpickle stores a lambda: this element is fine
    if kind == "lock":
        return threading.Lock(), kind
    if kind == "generator":
        return (i for i in range(3)), kind
    if kind == "second":  # the first output pickles, the second does not
        return 2, threading.Lock()
    if kind == "exception":
        raise LockedError("failed while holding a lock")
    return 1, kind


UNSTORABLE = ["ok", "lambda", "lock", "generator", "second", "exception"]


@pytest.fixture(scope="module")
def unstorable_run(local_env, tmp_path_factory):
    flow = new_workflow("unstorable").then(map_(unstorable, "kind[i] -> value[i], tag[i]"))
    return run(flow, local_env, tmp_path_factory.mktemp("unstorable"), kind=UNSTORABLE)


@pytest.mark.slow
def test_unpicklable_return_fails_only_its_element(unstorable_run):
    r = unstorable_run
    assert r.exit_code == 450
    s = r.called[0]
    assert s.exit_code == 401
    assert s.record.n_done == 2 and s.record.n_failed == 4 and s.record.n_infra == 0
    assert len(s.attempts) == 1  # no worker was lost: nothing was retried
    value, tag = s.outputs.return_values.value, s.outputs.return_values.tag
    bad = [False, False, True, True, True, True]
    assert value.mask.tolist() == tag.mask.tolist() == bad
    assert value[0] == 1 and tag[0] == "ok"
    assert value[1]() == 42  # the lambda came back and still works
    # An element is whole or absent: the first output of "second" was written, then removed.
    values_dir = s.path / "return_values" / "value"
    assert 4 not in stored_elements(values_dir)
    exceptions = s.outputs.exception
    for n in (2, 3, 4):
        assert isinstance(exceptions[n], TypeError), exceptions[n]
        assert "pickle" in str(exceptions[n])
    assert "lock" in str(exceptions[2]) and "generator" in str(exceptions[3])
    assert 5 in stored_elements(s.path / "exception")  # see the stand-in test below


@pytest.mark.slow
def test_an_exception_that_cannot_be_pickled_is_kept_as_a_stand_in(unstorable_run):
    s = unstorable_run.called[0]
    kept = s.outputs.exception[5]
    assert isinstance(kept, UnpicklableError)
    assert kept.type_name == "LockedError"
    assert str(kept) == "LockedError: failed while holding a lock"
    assert "LockedError" in kept.remote_traceback
    assert (s.path / "dataset.nc").exists()  # written once the errors can be read
    assert "LockedError" in str(s.dataset()["unstorable_error"].values[5])


@pytest.mark.slow
def test_unpicklable_return_message_names_the_step_and_the_output(unstorable_run):
    s = unstorable_run.called[0]
    for n, output, kind in [(2, "value", "lock"), (3, "value", "generator"), (4, "tag", "lock")]:
        message = str(s.outputs.exception[n])
        assert "'unstorable'" in message, message  # the step
        assert f"'{output}'" in message, message  # the output that could not be stored
        assert "pickle" in message and kind in message, message
    assert "'value'" in s.log()


# -- 3. NaN values, 0-length axes and 0-d arrays as inputs ---------------------------------


@step(returns="p")
def product(V_left, V_right):
    return V_left * V_right


@step(returns="total")
def total(p):
    return float(np.sum(p.to_array()))


outer = new_workflow("outer").then(map_(product, "V_left[a], V_right[b] -> p[a, b]"))


@pytest.mark.slow
def test_nan_inputs_are_passed_through_to_the_function(local_env, store):
    V_left, V_right = np.array([1.0, np.nan, 3.0]), np.array([2.0, np.nan])
    r = run(outer.then(total), local_env, store, V_left=V_left, V_right=V_right)
    assert r.exit_code == 0, flows.report.log(r)
    p = r.called[0].outputs.return_values.p
    assert p.shape == (3, 2) and not p.mask.any()  # NaN is a value, not a failure
    arr = p.to_array()
    assert arr.dtype == np.float64
    np.testing.assert_array_equal(arr.data, np.outer(V_left, V_right))  # NaN where expected
    assert np.isnan(r.outputs.return_values.total.fetch_value())
    ds = r.dataset()
    assert not ds.p_mask.values.any()
    assert np.isnan(ds.p.values).tolist() == np.isnan(np.outer(V_left, V_right)).tolist()


@pytest.mark.slow
def test_zero_length_axis_in_an_outer_product_ends_with_empty_outputs(local_env, store):
    r = run(outer, local_env, store, V_left=np.array([]), V_right=np.array([1.0, 2.0]))
    assert r.exit_code == 0, flows.report.log(r)
    s = r.called[0]
    assert s.status == "finished" and s.exit_code == 0
    assert s.record.n_submitted == 0
    p = r.outputs.return_values.p
    assert p.shape == (0, 2) and p.to_array().size == 0
    assert "exception" not in s.outputs


@step(returns="grid_sum")
def grid_sum(grid) -> float:
    return float(np.sum(grid))


def test_zero_d_array_to_a_mapped_input_is_refused_before_submission(local_env, store):
    with pytest.raises(ValueError, match=r"input 'V_left' of map 'product': .*rank 1.*shape \(\)"):
        flows.workflow.build(outer.on(local_env), V_left=np.array(1.0), V_right=[1.0, 2.0])
    builder = flows.workflow.build(outer.on(local_env), V_left=[1.0], V_right=[1.0, 2.0])
    builder.kwargs.V_right = np.array(2.0)
    with pytest.raises(ValueError, match=r"input 'V_right' of map 'product': .*rank 1"):
        builder.validate()
    with pytest.raises(ValueError, match=r"input 'V_right' .*np\.atleast_1d"):
        flows.submit(builder, store=store)
    assert not store.exists()  # nothing was written, let alone submitted
    grids = new_workflow("grids").then(map_(grid_sum, "grid[i, j] -> grid_sum[i, j]"))
    with pytest.raises(ValueError, match=r"input 'grid' of map 'grid_sum': .*rank 2.*shape \(\)"):
        flows.workflow.build(grids.on(local_env), grid=np.array(5.0))


@step(returns=("s", "factor_ndim"))
def scale(x: float, factor):
    return x * factor, np.ndim(factor)


@pytest.mark.slow
def test_zero_d_array_to_a_broadcast_input_is_given_whole(local_env, store):
    flow = new_workflow("scalar").then(map_(scale, "x[i] -> s[i], factor_ndim[i]"))
    r = run(flow, local_env, store, x=[1.0, 2.0], factor=np.array(3.0))
    assert r.exit_code == 0, flows.report.log(r)
    values = r.called[0].outputs.return_values
    assert values.s.to_array().tolist() == [3.0, 6.0]
    assert values.factor_ndim.to_array().tolist() == [0, 0]  # the 0-d array, as given


# -- 4. an empty sweep ----------------------------------------------------------------------


@step(returns="y")
def double(x: float) -> float:
    return 2 * x


@step(returns="z")
def increment(y: float) -> float:
    return y + 1


@step(returns="summary")
def summarize(z) -> dict:
    arr = z.to_array()
    return {"type": type(z).__name__, "shape": arr.shape, "size": int(arr.size)}


@pytest.mark.slow
def test_empty_sweep_ends_with_empty_outputs_and_downstream_steps_run(local_env, store):
    flow = (
        new_workflow("empty")
        .then(map_(double, "x[i] -> y[i]"))
        .then(map_(increment, "y[i] -> z[i]"))
        .then(summarize)
    )
    r = run(flow, local_env, store, x=[])
    assert r.exit_code == 0, flows.report.log(r)
    assert r.status == "finished"
    for name, out in [("double", "y"), ("increment", "z")]:
        s = r.step(name)
        assert s.status == "finished" and s.exit_code == 0
        assert s.record.n_submitted == 0 and s.attributes["submitted_elements"] == ""
        arr = s.outputs.return_values[out]
        assert isinstance(arr, FileBasedObjectArray) and arr.shape == (0,)
        assert "exception" not in s.outputs
    # The step given the whole (empty) map output runs, and sees an empty array.
    summary = r.outputs.return_values.summary.fetch_value()
    assert summary == {"type": "FileBasedObjectArray", "shape": (0,), "size": 0}
    assert "0/0 done" in flows.report.progress(r)


# -- 5. a store path that is a file --------------------------------------------------------


def test_store_that_is_a_file_fails_before_any_work(local_env, tmp_path):
    path = tmp_path / "not-a-store"
    path.write_text("my notes\n")
    builder = flows.workflow.build(new_workflow("s").then(double).on(local_env), x=1.0)
    with pytest.raises(OSError) as info:
        flows.submit(builder, store=path)
    message = str(info.value)
    assert str(path) in message
    rest = message.replace(str(path), "")
    assert "store" in rest and "not a directory" in rest.lower(), message
    assert "runs" not in rest, message  # about the store itself, not a folder inside it
    assert path.read_text() == "my notes\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-store"]


def test_store_that_is_a_file_on_the_command_line_is_a_usage_error(tmp_path):
    path = tmp_path / "not-a-store"
    path.write_text("my notes\n")
    result = cli(
        "run",
        f"{REPO}/examples/electrostatics.py:flow",
        "--inputs",
        f"{REPO}/examples/electrostatics.json",
        "--store",
        str(path),
        cwd=tmp_path,
    )
    assert_usage_error(result, str(path), "store")
    assert path.read_text() == "my notes\n"


# -- 6. two drivers on one run ---------------------------------------------------------------


@step(returns="opened")
def wait_for_gate(gate: str) -> bool:
    Path(gate + ".started").touch()
    deadline = time.monotonic() + 120
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError("the gate never opened")
        time.sleep(0.05)
    return True


def start_gated_run(env, store: Path, gate: Path) -> flows.Run:
    """A run whose only step is running on a worker until ``gate`` exists."""
    flow = new_workflow("gated").then(wait_for_gate)
    r = flows.submit(flows.workflow.build(flow.on(env), gate=str(gate)), store=store)
    started = Path(f"{gate}.started")
    wait_for(lambda: started.exists() or r.is_finished, "the gated step to start")
    assert not r.is_finished, flows.report.log(r)
    return r


RESUME = """
import json, os, sys
import parsl_flows as flows
from parsl_flows.lock import RunLockedError
run = flows.load_run(sys.argv[1])
try:
    resumed = run.resume()
except RunLockedError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
else:
    print(json.dumps({"error": None, "driving": resumed._execution is not None}), flush=True)
    if resumed._execution is not None:  # a second driver: the bug under test; do not linger
        os._exit(3)
"""


def resume_elsewhere(r: flows.Run) -> tuple[dict, subprocess.CompletedProcess[str]]:
    """``load_run(path).resume()`` in a new process: what it reported, and the process."""
    out = subprocess.run(
        [sys.executable, "-c", RESUME, str(r.path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out


@pytest.mark.slow
def test_a_second_driver_process_is_refused_and_a_finished_run_is_left_alone(
    local_env, store, tmp_path, caplog
):
    gate = tmp_path / "gate"
    r = start_gated_run(local_env, store, gate)
    try:
        report, out = resume_elsewhere(r)
        assert out.returncode == 0, out.stderr
        assert report["error"] == "RunLockedError", report
        assert f"pid {os.getpid()}" in report["message"]
        assert r.id in report["message"]
        lock = json.loads((r.path / "driver.lock").read_text())
        assert lock["pid"] == os.getpid()  # still ours
        assert r.status == "running"
    finally:
        gate.touch()
        r.wait(TIMEOUT)
    assert r.status == "finished" and r.exit_code == 0, flows.report.log(r)
    log = flows.report.log(r)
    assert log.count("workflow 'gated' started") == 1 and "resuming" not in log
    # Resuming a run that ended warns and does nothing, from another process ...
    before = (r.path / "run.json").read_text()
    report, out = resume_elsewhere(r)
    assert out.returncode == 0 and report == {"error": None, "driving": False}, report
    assert f"run {r.id} already ended (finished, exit code 0): nothing to resume" in out.stderr
    assert (r.path / "run.json").read_text() == before
    assert flows.report.log(r) == log
    # ... and from this one.
    with caplog.at_level(logging.WARNING, logger="parsl_flows"):
        again = flows.load_run(r.path).resume()
    assert again.status == "finished"
    assert "nothing to resume" in caplog.text
    assert (r.path / "run.json").read_text() == before


@pytest.mark.slow
def test_a_second_driver_in_the_driving_process_is_refused(local_env, store, tmp_path):
    gate = tmp_path / "gate"
    r = start_gated_run(local_env, store, gate)
    second = None
    try:
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            second = flows.load_run(r.path).resume()
    finally:
        gate.touch()
        r.wait(TIMEOUT)
        if second is not None:
            second.wait(TIMEOUT)
    assert flows.report.log(r).count("workflow 'gated' started") == 1


# -- 7. a Parsl config file that does not load ---------------------------------------------


BAD_CONFIGS = [
    pytest.param(
        "syntax.py",
        "config = (\n",
        "was never closed",
        id="syntax-error",
    ),
    pytest.param(
        "raises.py",
        "raise RuntimeError('no cluster here')\n",
        "no cluster here",
        id="raises",
    ),
    pytest.param(
        "imports.py",
        "import parsl_flows_no_such_module\n",
        "parsl_flows_no_such_module",
        id="import-error",
    ),
    pytest.param("no_config.py", "x = 1\n", "defines no 'config'", id="no-config"),
    pytest.param(
        "not_a_config.py",
        "config = {'executors': []}\n",
        "parsl.config.Config",
        id="not-a-config",
    ),
]


@pytest.mark.parametrize(("name", "text", "fragment"), BAD_CONFIGS)
def test_a_config_file_that_does_not_load_is_named_in_the_error(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(Exception, match=re.escape(str(path))) as info:
        flows.engine.execution_environment.from_file(path)
    assert fragment in str(info.value), str(info.value)


def test_a_missing_config_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "nowhere.py"
    with pytest.raises(FileNotFoundError, match=f"no Parsl config file at {path}"):
        flows.engine.execution_environment.from_file(path)


CLI_BAD_CONFIGS = [
    pytest.param("syntax.py", "config = (\n", "SyntaxError", id="syntax-error"),
    pytest.param("raises.py", "raise RuntimeError('no cluster here')\n", "no cluster here"),
    pytest.param("no_config.py", "x = 1\n", "defines no 'config'", id="no-config"),
    pytest.param(
        "not_a_config.py",
        "config = {'executors': []}\n",
        "parsl.config.Config",
        id="not-a-config",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "text", "fragment"), CLI_BAD_CONFIGS)
def test_a_config_file_that_does_not_load_is_a_usage_error(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    result = cli(
        "run",
        f"{REPO}/examples/electrostatics.py:flow",
        "--inputs",
        f"{REPO}/examples/electrostatics.json",
        "--config",
        str(path),
        cwd=tmp_path,
    )
    assert_usage_error(result, f"--config {path}", fragment)
    assert not (tmp_path / "parsl-flows-store" / "runs").exists()  # no run was started


# -- 8. listeners ------------------------------------------------------------------------------


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1 on a dual-stack socket
    return address.is_loopback


@pytest.mark.slow
def test_every_listening_socket_of_a_running_run_is_on_loopback(local_env, store, tmp_path):
    gate = tmp_path / "gate"
    r = start_gated_run(local_env, store, gate)
    try:
        me = psutil.Process()
        dfk = runner.dfk
        assert dfk is not None
        # Interchanges of Slurm executors that earlier tests of this process started
        # listen on every interface, as they must for compute nodes to reach them.
        cluster = set()
        for executor in dfk.executors.values():
            proc = getattr(executor, "interchange_proc", None)
            if proc is not None and type(executor.provider).__name__ != "LocalProvider":
                cluster.add(proc.pid)
        procs = {p.pid: p for p in [me, *me.children(recursive=True)] if p.pid not in cluster}
        marker = str(dfk.run_dir).rstrip("/") + "/"  # worker pools are detached, but name it
        for p in psutil.process_iter(["cmdline"]):
            if marker in " ".join(p.info.get("cmdline") or []):
                procs.setdefault(p.pid, p)
        commands = {}
        listening = []
        for pid, p in procs.items():
            try:
                commands[pid] = " ".join(p.cmdline())
                sockets = p.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            listening += [(pid, c.laddr) for c in sockets if c.status == psutil.CONN_LISTEN]
        assert any("interchange" in c for c in commands.values()), commands
        assert any("process_worker_pool" in c for c in commands.values()), commands
        assert listening, "the interchange listens for its workers"
        exposed = [
            (commands[pid][:80], addr) for pid, addr in listening if not _is_loopback(addr.ip)
        ]
        assert not exposed, exposed
    finally:
        gate.touch()
        r.wait(TIMEOUT)
    assert r.exit_code == 0, flows.report.log(r)


# -- 9. an element raises SystemExit, KeyboardInterrupt or another BaseException -----------


class Abort(BaseException):
    """A user's own BaseException subclass, as some libraries define to unwind."""


@step(returns="out")
def stops_abruptly(kind: str) -> str:
    if kind == "exit":
        raise SystemExit("bye from element 1")
    if kind == "interrupt":
        raise KeyboardInterrupt("ctrl-c in element 2")
    if kind == "abort":
        raise Abort("custom stop in element 3")
    return kind.upper()


@pytest.mark.slow
def test_base_exceptions_fail_only_their_element(local_env, store):
    flow = new_workflow("abrupt").then(map_(stops_abruptly, "kind[i] -> out[i]"))
    r = run(flow, local_env, store, kind=["ok", "exit", "interrupt", "abort", "fine"])
    assert r.exit_code == 450
    s = r.called[0]
    assert s.exit_code == 401, s.log()
    assert s.record.element_codes == {"401": "1-3"}
    # Promptly: no worker was lost, so nothing was resubmitted as an infrastructure failure.
    assert s.record.n_infra == 0 and len(s.attempts) == 1, s.attempts
    out = s.outputs.return_values.out
    assert out.mask.tolist() == [False, True, True, True, False]
    assert out.to_array().compressed().tolist() == ["OK", "FINE"]
    exceptions = s.outputs.exception
    for n, kind, text in [
        (1, SystemExit, "bye from element 1"),
        (2, KeyboardInterrupt, "ctrl-c in element 2"),
        (3, Abort, "custom stop in element 3"),
    ]:
        kept = exceptions[n]
        assert type(kept).__name__ == kind.__name__ and isinstance(kept, kind), repr(kept)
        assert str(kept) == text


def _raise_from_lookup(key: int) -> BaseException:
    try:
        try:
            {}[key]
        except KeyError as missing:
            raise ValueError(f"no {key}") from missing
    except ValueError as e:
        return e
    raise AssertionError("unreachable")


def test_a_stored_exception_keeps_its_traceback_as_text_and_its_cause() -> None:
    # In a process that imported Parsl (tblib's pickling of tracebacks is installed), the
    # stored pickle still carries no traceback objects: loading those compiled code per
    # frame, four times the cost of a failure.  The text, and the cause, are kept.
    import parsl.app.python  # noqa: F401  (installs tblib.pickling_support, as on workers)

    exc = _raise_from_lookup(7)
    data = exception_bytes(exc)
    assert b"unpickle_traceback" not in data  # tblib's: rebuilt frame by frame on loading
    kept = pickle.loads(data)
    assert repr(kept) == "ValueError('no 7')" and repr(kept.__cause__) == "KeyError(7)"
    assert kept.__traceback__ is None
    assert "_raise_from_lookup" in kept.remote_traceback
    assert "KeyError: 7" in kept.remote_traceback  # the chain, as Python prints it
    assert exc.__traceback__ is not None and exc.__cause__.__traceback__ is not None  # untouched


def test_a_stored_traceback_is_what_python_prints_without_the_markers() -> None:
    # Python 3.11+ underlines the failing expression (^^^^), which it finds by compiling
    # each frame's source line: half the cost of a failed element.  The rest is the same.
    import traceback

    exc = _raise_from_lookup(3)
    python = "".join(traceback.format_exception(exc))
    ours = traceback_text(exc)
    assert ours.count("Traceback (most recent call last):") == 2
    assert "The above exception was the direct cause" in ours
    assert ours.splitlines() == [
        line for line in python.splitlines() if not line.strip() or set(line.strip()) - {"^", "~"}
    ]


def _caught(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except BaseException as e:
        return e
    raise AssertionError("did not raise")


def _during_handling() -> None:
    try:
        _raise_now(ValueError("first"))
    except ValueError:
        _raise_now(RuntimeError("while handling the first"))


def _context_suppressed() -> None:
    try:
        _raise_now(ValueError("hidden"))
    except ValueError:
        raise TypeError("shown alone") from None


def _noted() -> None:
    e = ValueError("with a note")
    e.add_note("sample 12 of the sweep")
    raise e


def _cycle() -> None:
    a, b = ValueError("a"), KeyError("b")
    a.__context__, b.__context__ = b, a
    raise a


def _group() -> None:
    raise ExceptionGroup("two at once", [ValueError(1), KeyError(2)])


def _raise_now(e: BaseException) -> None:
    raise e


class _Silent(Exception):
    def __str__(self) -> str:
        return ""


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def _of_a_module() -> None:
    import json

    json.loads("{")


@pytest.mark.parametrize(
    "raising",
    [
        _during_handling,
        _context_suppressed,
        _noted,
        _cycle,
        _group,
        _of_a_module,
        lambda: _raise_now(_Silent()),
        lambda: _raise_now(_Unprintable()),
        lambda: 1 / 0,
    ],
)
def test_a_stored_traceback_follows_every_chain_as_python_prints_it(
    raising: Callable[[], object],
) -> None:
    # traceback_text builds the text from file names and line numbers (Python's own
    # TracebackException walks each frame's code for column positions: most of what a
    # failed element cost); contexts, suppressed contexts, notes, cycles and groups must
    # still read as Python prints them, minus the ^^^ markers.
    import traceback

    exc = _caught(raising)
    python = "".join(traceback.format_exception(exc))
    assert traceback_text(exc).splitlines() == [
        line for line in python.splitlines() if not line.strip() or set(line.strip()) - {"^", "~"}
    ]


def test_a_stored_syntax_error_keeps_its_caret() -> None:
    # Python prints where the syntax fails under the source line: part of the message.
    import traceback

    exc = _caught(lambda: compile("1 +", "<cell>", "exec"))
    assert traceback_text(exc).endswith("".join(traceback.format_exception_only(exc)))
