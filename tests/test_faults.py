"""The fault table (docs/failure-modes.md), each fault injected for real.

Real signals to real driver processes, workers that really die, element files really
truncated, a store on a filesystem that really fills up or turns read-only.  Everything
runs on the real local HighThroughputExecutor.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cloudpickle
import psutil
import pytest
from helpers import command_line, file_of, stored_elements, wait_for

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.element_folders import read_task_file
from parsl_flows.engine.runner import STOP_SECONDS
from parsl_flows.errors import InfrastructureError
from parsl_flows.numbers_file import forget_numbers
from parsl_flows.processes import wait_ended
from parsl_flows.store import DamagedFileError, element_path, load_pickle
from parsl_flows.workflow import map_, new_workflow

pytestmark = pytest.mark.slow


def n_files(folder: Path) -> int:
    try:
        return sum(1 for name in os.listdir(folder) if name.endswith(".pickle"))
    except FileNotFoundError:
        return 0


def leftover_temporaries(store: Path) -> list[Path]:
    return [p for p in store.rglob("*.tmp")]


# -- a driver in its own process, as a user's script -----------------------------------------

DRIVER = """\
import sys, time
import numpy as np
import parsl_flows as flows
from parsl_flows.workflow import build, map_, new_workflow

@flows.step(returns="y")
def slow(x):
    time.sleep({delay})
    return 2 * x

flow = new_workflow("faults").then(map_(slow, "x[i] -> y[i]"))

if __name__ == "__main__":
    env = flows.engine.execution_environment(None, "localhost")
    run = flows.submit(build(flow.on(env), x=np.arange({n})), store={store!r})
    print("RUN", run.path, flush=True)
    if {wait}:
        run.wait()
        print("ENDED", run.status, flush=True)
"""


class Driver:
    """A script that submits a slow map and waits for it, in a process of its own."""

    def __init__(self, tmp_path: Path, n: int, delay: float, wait: bool = True) -> None:
        self.store = tmp_path / "store"
        script = tmp_path / f"driver_{uuid.uuid4().hex[:6]}.py"
        script.write_text(DRIVER.format(n=n, delay=delay, store=str(self.store), wait=wait))
        self.out = tmp_path / "driver.out"
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            stdout=open(self.out, "w"),  # noqa: SIM115 (the child owns it)
            stderr=subprocess.STDOUT,
        )

    @property
    def run(self) -> flows.Run:
        runs = self.store / "runs"
        wait_for(
            lambda: runs.is_dir() and any((r / "run.json").exists() for r in runs.iterdir()),
            "the run to be created",
        )
        return flows.load_run(next(runs.iterdir()))

    def results(self) -> Path:
        return self.run.path / "steps" / "00-slow" / "return_values" / "y"

    def wait_for_results(self, n: int) -> None:
        folder = self.results()
        wait_for(lambda: n_files(folder) >= n, f"{n} elements to finish")

    def parsl_processes(self) -> list[psutil.Process]:
        """The driver's descendants and the worker pools that name its store (detached)."""
        procs: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            procs.update({p.pid: p for p in psutil.Process(self.proc.pid).children(recursive=True)})
        for p in psutil.process_iter(["cmdline"]):
            if str(self.store) in " ".join(p.info["cmdline"] or []):
                procs.setdefault(p.pid, p)
                with contextlib.suppress(psutil.Error):
                    for c in p.children(recursive=True):
                        procs.setdefault(c.pid, c)
        return list(procs.values())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for p in self.parsl_processes():
            with contextlib.suppress(psutil.Error):
                p.kill()


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Callable[..., Driver]]:
    made: list[Driver] = []

    def make(n: int = 400, delay: float = 0.05, wait: bool = True) -> Driver:
        made.append(Driver(tmp_path, n, delay, wait))
        return made[-1]

    yield make
    for d in made:
        d.stop()


def gone_within(procs: list[psutil.Process], seconds: float) -> float:
    """Seconds until every process in ``procs`` has exited; fails after ``seconds``."""
    start = time.monotonic()
    alive = wait_ended(procs, seconds)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    return time.monotonic() - start


def test_nothing_outlives_a_sigkilled_driver(driver) -> None:
    d = driver()
    d.wait_for_results(5)
    helpers = d.parsl_processes()
    assert any("process_worker_pool" in " ".join(p.cmdline()) for p in helpers), helpers
    assert any("interchange" in " ".join(p.cmdline()) for p in helpers), helpers
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    took = gone_within(helpers, 30)
    print(f"the killed driver's {len(helpers)} Parsl processes were gone {took:.1f} s later")
    assert d.run.status == "interrupted"


def test_ctrl_c_on_a_script_stops_the_run_and_resume_carries_it_on(driver) -> None:
    d = driver(n=300)
    d.wait_for_results(5)
    helpers = d.parsl_processes()
    d.proc.send_signal(signal.SIGINT)
    d.proc.wait(timeout=10)  # the bound: the process exits within 10 s
    output = d.out.read_text()
    assert "KeyboardInterrupt" in output and "ENDED" not in output, output
    gone_within(helpers, 5)
    run = d.run
    assert run.status == "interrupted"
    assert "Ctrl-C" in run.record.message
    assert "resume() carries it on" in run.log()
    done_before = n_files(d.results())
    assert 0 < done_before < 300

    resumed = run.resume().wait(300)
    assert resumed.status == "finished" and resumed.exit_code == 0, resumed.log()
    y = resumed.step("slow").outputs.return_values.y.to_array()
    assert y.tolist() == [2 * x for x in range(300)]
    assert resumed.step("slow").record.n_reused >= done_before


def test_ctrl_c_while_a_script_that_did_not_wait_is_ending(driver) -> None:
    """The script submitted and reached its end; the interpreter waits for the run there."""
    d = driver(n=300, wait=False)
    d.wait_for_results(5)
    helpers = d.parsl_processes()
    d.proc.send_signal(signal.SIGINT)
    d.proc.wait(timeout=10)
    gone_within(helpers, 5)
    run = d.run
    assert run.status == "interrupted"
    assert "at the end of the script" in run.record.message
    assert n_files(d.results()) < 300


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    """The first Ctrl-C's clean stop hangs (a frozen interchange); the second one leaves."""
    (tmp_path / "flows.py").write_text(
        textwrap.dedent(
            """
            import time
            import parsl_flows as flows
            from parsl_flows.workflow import map_, new_workflow

            @flows.step(returns="y")
            def slow(x):
                time.sleep(0.05)
                return x

            flow = new_workflow("twice").then(map_(slow, "x[i] -> y[i]"))
            """
        )
    )
    out = open(tmp_path / "out.txt", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "parsl_flows", "run", "flows.py:flow",
         "--set", 'x={"arange": [2000]}', "--store", str(tmp_path / "store")],
        cwd=tmp_path, stdout=out, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        runs = tmp_path / "store" / "runs"
        wait_for(lambda: runs.is_dir() and any(runs.iterdir()), "the run to be created")
        folder = next(runs.iterdir()) / "steps" / "00-slow" / "return_values" / "y"
        wait_for(lambda: n_files(folder) >= 3, "some elements to finish")
        helpers = psutil.Process(proc.pid).children(recursive=True)
        for p in helpers:
            if "interchange" in command_line(p):
                p.suspend()  # Parsl's clean shutdown now waits for it
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        for line in proc.stderr:
            if "interrupted: stopping run" in line:
                break
        proc.send_signal(signal.SIGINT)  # while the first one is being handled
        proc.wait(timeout=STOP_SECONDS)
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "carry on" not in rest  # it left at once, without its closing report
    gone_within(helpers, 30)


# -- walltime per call -------------------------------------------------------------------------


@step(returns="y", resources={"walltime": "00:00:02"})
def hangs_at_two(x: int) -> int:
    if x == 2:
        time.sleep(600)
    return 10 * x


@step(returns="y", resources={"walltime": "00:00:02"})
def ignores_its_timeout_at_two(x: int) -> int:
    if x == 2:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:  # noqa: SIM105 (spelled out: a step that swallows every error)
                time.sleep(600)
            except TimeoutError:
                pass
    return 10 * x


@pytest.mark.parametrize("func", [hangs_at_two, ignores_its_timeout_at_two])
def test_walltime_stops_one_hung_element_and_the_others_go_on(local_env, store, func) -> None:
    flow = new_workflow("walltime").then(map_(func, "x[i] -> y[i]", chunksize=5))
    r = flows.submit(flows.workflow.build(flow.on(local_env), x=list(range(5))), store=store)
    r.wait(120)
    s = r.called[0]
    assert s.exit_code == 401, flows.report.log(s)
    y = s.outputs.return_values.y
    assert y.mask.tolist() == [False, False, True, False, False]
    assert y.to_array().compressed().tolist() == [0, 10, 30, 40]
    exc = s.outputs.exception[2]
    assert type(exc) is TimeoutError
    assert "walltime of 00:00:02" in str(exc) and "element 2" in str(exc)
    if func is ignores_its_timeout_at_two:
        assert "its worker was ended" in str(exc)
    assert s.record.element_codes == {"401": "2"}


@step(returns="y", resources={"walltime": "00:00:01"})
def spins(x: int) -> int:
    while x == 1:  # pure Python: only an asynchronous exception can stop it in a thread
        pass
    return x


def test_walltime_holds_on_the_thread_pool_too(thread_env, store) -> None:
    flow = new_workflow("spin").then(map_(spins, "x[i] -> y[i]", chunksize=3))
    r = flows.submit(flows.workflow.build(flow.on(thread_env), x=[0, 1, 2]), store=store)
    r.wait(60)
    s = r.called[0]
    assert s.outputs.return_values.y.mask.tolist() == [False, True, False]
    assert isinstance(s.outputs.exception[1], TimeoutError)


@step(returns="y", resources={"walltime": "00:00:01"})
def sleepy_call(x: int) -> int:
    time.sleep(60)
    return x


def test_walltime_holds_for_a_plain_call(local_env, store) -> None:
    r = flows.submit(
        flows.workflow.build(new_workflow("call").then(sleepy_call).on(local_env), x=1),
        store=store,
    ).wait(60)
    s = r.called[0]
    assert s.exit_code == 401
    exc = s.outputs.exception.fetch_value()
    assert isinstance(exc, TimeoutError) and "the call of step 'sleepy_call'" in str(exc)


# -- a dying worker costs one element ----------------------------------------------------------


@step(returns="y")
def kills_its_worker_at_seven(x: int, calls: str) -> int:
    Path(calls, f"{x}-{uuid.uuid4().hex}").touch()
    if x == 7:
        os._exit(1)  # as a segfault or an OOM kill
    return 10 * x


def test_a_dying_worker_costs_only_the_element_that_killed_it(local_env, store, tmp_path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    flow = new_workflow("dies").then(map_(kills_its_worker_at_seven, "x[i] -> y[i]", chunksize=10))
    r = flows.submit(
        flows.workflow.build(flow.on(local_env), x=list(range(10)), calls=str(calls)),
        store=store,
    ).wait(180)
    s = r.called[0]
    y = s.outputs.return_values.y
    assert y.mask.tolist() == [x == 7 for x in range(10)], flows.report.log(s)
    assert y.to_array().compressed().tolist() == [10 * x for x in range(10) if x != 7]
    exc = s.outputs.exception[7]
    assert isinstance(exc, InfrastructureError) and exc.cause.startswith("worker lost")
    assert s.record.element_codes == {"402": "7"}
    counts = {x: 0 for x in range(10)}
    for f in calls.iterdir():
        counts[int(f.name.split("-")[0])] += 1
    # Elements that finished before the loss ran once; 8 and 9 (never started) ran once
    # when resubmitted; 7 ran alone on each infrastructure retry.
    assert {x: c for x, c in counts.items() if x != 7} == {x: 1 for x in range(10) if x != 7}
    assert counts[7] == 1 + flows.engine.attempts.INFRA_RETRIES


# -- damaged element files ---------------------------------------------------------------------


@step(returns="y")
def double(x: int) -> int:
    time.sleep(0.02)
    return 2 * x


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_element_file_is_named_when_read(local_env, store) -> None:
    flow = new_workflow("t").then(map_(double, "x[i] -> y[i]"))
    r = flows.run(flows.workflow.build(flow.on(local_env), x=list(range(6))), store=store)
    y = r.step("double").outputs.return_values.y
    damaged = file_of(y.folder, 3)
    held = read_task_file(damaged)[0].tolist()
    truncate(damaged)
    named = rf"task file .*{damaged.name} \(elements .* of"
    with pytest.raises(DamagedFileError, match=named) as e:
        y[3]
    assert e.value.elements == held and 3 in held  # the elements it held, from the index
    # The whole array comes from the map's numbers file, which holds every element: the
    # element files are not read, and the values are right.
    assert y.to_array().tolist() == [0, 2, 4, 6, 8, 10]
    forget_numbers(y.folder)
    with pytest.raises(DamagedFileError, match="resume"):
        y.to_array()
    (y.folder / "__4__.pickle").write_bytes(b"")
    with pytest.raises(DamagedFileError, match="element 4"):
        load_pickle(element_path(y.folder, 4))


def test_restart_recomputes_a_damaged_element_instead_of_reusing_it(local_env, store) -> None:
    flow = new_workflow("t").then(map_(double, "x[i] -> y[i]"))
    first = flows.run(flows.workflow.build(flow.on(local_env), x=list(range(6))), store=store)
    damaged = file_of(first.step("double").outputs.return_values.y.folder, 2)
    held = len(read_task_file(damaged)[0])
    truncate(damaged)
    again = flows.submit(first.get_builder_restart(), store=store).wait(120)
    s = again.step("double")
    assert s.record.n_reused == 6 - held
    assert s.outputs.return_values.y.to_array().tolist() == [0, 2, 4, 6, 8, 10]


def test_interrupt_then_resume_in_the_same_process_recomputes_damaged_files(
    local_env, store
) -> None:
    flow = new_workflow("t").then(map_(double, "x[i] -> y[i]", chunksize=1))
    r = flows.submit(flows.workflow.build(flow.on(local_env), x=list(range(200))), store=store)
    folder = r.path / "steps" / "00-double" / "return_values" / "y"
    wait_for(lambda: n_files(folder) >= 10, "some elements to finish")
    r.interrupt()  # what Ctrl-C in a notebook cell does
    assert r.status == "interrupted"
    done = stored_elements(folder)
    assert 10 <= len(done) < 200
    truncate(file_of(folder, done[0]))
    resumed = r.resume().wait(300)  # same process: Parsl starts again
    assert resumed.exit_code == 0, resumed.log()
    s = resumed.step("double")
    assert s.outputs.return_values.y.to_array().tolist() == [2 * x for x in range(200)]
    assert "damaged" in s.log()


# -- the store's filesystem fills up or turns read-only -----------------------------------------


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_fs(tmp_path: Path, local_env) -> Iterator[Callable[[str], Path]]:
    """Mount tmpfs filesystems of a given size (root only).

    Parsl is started first, elsewhere: the first run of a process puts Parsl's own logs
    in its store, and a worker's open log would keep the filesystem busy.
    """
    if not _can_mount():
        pytest.skip("mounting a filesystem needs root")
    warm = new_workflow("warm").then(map_(double, "x[i] -> y[i]"))
    flows.run(flows.workflow.build(warm.on(local_env), x=[1]), store=tmp_path / "elsewhere")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if res.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@step(returns="blob")
def big(x: int) -> bytes:
    return bytes([x % 256]) * 150_000


def remount_read_only(where: Path) -> None:
    """Turn a mounted filesystem read-only under a running run.

    Linux refuses while a file there is open for writing ("mount point is busy"); workers
    hold each element file open for microseconds, so a few tries find a moment between.
    """
    for _ in range(500):
        cmd = ["mount", "-o", "remount,ro", str(where)]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return
        time.sleep(0.01)
    pytest.fail(f"{where} stayed busy: it could not be made read-only")


def assert_every_file_reads(store: Path) -> int:
    """Read every element file and task file of ``store`` (a DamagedFileError here would
    be a half-written file); how many elements the results' files hold."""
    n = 0
    for path in store.rglob("__*__.pickle"):
        load_pickle(path)
        n += "return_values" in path.parts
    for path in store.rglob("task-*.pickle"):
        _, pickles = read_task_file(path)
        for data in pickles:
            cloudpickle.loads(data)
        n += len(pickles) * ("return_values" in path.parts)
    return n


def test_a_store_that_fills_up_mid_run_keeps_every_file_whole(local_env, small_fs) -> None:
    store = small_fs("2m")
    flow = new_workflow("full").then(map_(big, "x[i] -> blob[i]", chunksize=1))
    r = flows.submit(flows.workflow.build(flow.on(local_env), x=list(range(40))), store=store)
    r.wait(180)
    assert (r.status, r.exit_code) == ("failed", 450)
    written = assert_every_file_reads(store)
    assert 0 < written < 40
    assert not leftover_temporaries(store)
    log = r.step("big").log() + r.log()
    assert "No space left on device" in log or "No space left" in str(r.record.message), log


def test_a_store_that_turns_read_only_mid_run_keeps_every_file_whole(local_env, small_fs) -> None:
    store = small_fs("64m")
    flow = new_workflow("ro").then(map_(double, "x[i] -> y[i]", chunksize=1))
    r = flows.submit(flows.workflow.build(flow.on(local_env), x=list(range(400))), store=store)
    folder = r.path / "steps" / "00-double" / "return_values" / "y"
    wait_for(lambda: n_files(folder) >= 5, "some elements to finish")
    remount_read_only(store)
    try:
        r.wait(180)
        assert r.status == "failed"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(store)], check=True)
    written = assert_every_file_reads(store)
    assert 5 <= written < 400
    assert not leftover_temporaries(store)


# -- a notebook kernel ---------------------------------------------------------------------------


NOTEBOOK_SETUP = """
import time
import numpy as np
import parsl_flows as flows
from parsl_flows.workflow import build, map_, new_workflow

@flows.step(returns="y")
def slow(x):
    time.sleep(0.05)
    return 2 * x

flow = new_workflow("nb").then(map_(slow, "x[i] -> y[i]"))
env = flows.engine.execution_environment(None, "localhost")
X = np.arange(400)
"""


def test_ctrl_c_in_a_notebook_cell_stops_the_run_and_the_kernel_carries_on(tmp_path) -> None:
    manager = pytest.importorskip("jupyter_client.manager")
    km, kc = manager.start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    store = tmp_path / "store"

    def cell(code: str) -> tuple[str, str]:
        printed: list[str] = []

        def hook(msg: dict) -> None:
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])

        reply = kc.execute_interactive(code, timeout=300, output_hook=hook)
        return reply["content"]["status"], "".join(printed)

    try:
        assert cell(NOTEBOOK_SETUP)[0] == "ok"
        kc.execute(
            f"run = flows.submit(build(flow.on(env), x=X), store={str(store)!r})\nrun.wait()"
        )
        wait_for(lambda: (store / "runs").is_dir(), "the run to be created")
        run_dir = next((store / "runs").iterdir())
        folder = run_dir / "steps" / "00-slow" / "return_values" / "y"
        wait_for(lambda: n_files(folder) >= 5, "some elements to finish")
        km.interrupt_kernel()  # the notebook's stop button: SIGINT to the kernel
        reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        status, printed = cell("print(run.status, len(flows.engine.stopping.live_executions()))")
        assert (status, printed.split()) == ("ok", ["interrupted", "0"])
        # No kernel restart: the same kernel resumes the run on a new Parsl.
        status, printed = cell(
            "again = run.resume().wait(300)\nprint(again.status, again.exit_code)"
        )
        assert (status, printed.split()) == ("ok", ["finished", "0"]), printed
        status, printed = cell("print((again.step('slow').output('y').to_array() == 2 * X).all())")
        assert printed.strip() == "True"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_cleanup_stops_what_a_dead_driver_left_when_nothing_could_follow_it(driver) -> None:
    d = driver()
    d.wait_for_results(5)
    helpers = d.parsl_processes()
    interchange = next(p for p in helpers if "interchange" in " ".join(p.cmdline()))
    interchange.suspend()  # frozen: it cannot notice that its driver dies
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    result = subprocess.run(
        [sys.executable, "-m", "parsl_flows", "cleanup", "--store", str(d.store)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"run {d.run.id}:" in result.stdout
    assert "Parsl process(es) the dead driver left running" in result.stdout
    assert "removed the stale lock" in result.stdout
    gone_within([interchange], 10)
    assert d.run.status == "interrupted"
    again = subprocess.run(
        [sys.executable, "-m", "parsl_flows", "cleanup", "--store", str(d.store)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "nothing to clean up" in again.stdout


# -- a result Parsl never returns ------------------------------------------------------------


def test_a_task_whose_result_never_comes_back_is_taken_from_the_store(
    local_env, store, monkeypatch
) -> None:
    """A worker killed just after a task can lose that task's result (seen in the soak).

    The race cannot be forced on a real worker, so the stuck future is made by hand; the
    elements' files are real, written by a real run.
    """
    from concurrent.futures import Future

    from parsl_flows.engine import tasks
    from parsl_flows.engine.task_writer import TaskWriter
    from parsl_flows.engine.worker import OK, USER_ERROR, TaskSpec
    from parsl_flows.store import dumps

    r = flows.run(
        flows.workflow.build(new_workflow("t").then(map_(double, "x[i] -> y[i]")).on(local_env),
                             x=list(range(4))),
        store=store,
    )  # fmt: skip
    step_dir = r.step("double").path
    # A task "stuck-1" that finished in the store: its files written by the worker's own
    # writer, element 3 failed.
    writer = TaskWriter(str(step_dir), "stuck-1", ("y",), 4)
    for n in (0, 1, 2):
        writer.add_ok(n, [dumps(2 * n)])
    writer.add_failed(3, USER_ERROR, ValueError("three"), True)
    assert writer.finish() == ""
    monkeypatch.setattr(tasks, "_STALL_SECONDS", 0.3)
    task = TaskSpec("", str(step_dir), (0, 1, 2, 3), (4,), {}, name="stuck-1")
    running = TaskSpec("", str(step_dir), (4,), (5,), {}, name="running-1")  # no file yet
    stuck: Future = Future()
    never: Future = Future()
    lines: list[str] = []
    st = r.step("double").record
    following = tasks.StepTasks(st, lambda: None, lambda: None, lambda: None, lines.append)
    got = following._as_completed({stuck: task, never: running})
    fut, seen = next(got)
    assert fut is stuck and seen is task and not fut.done()
    result = following._task_from_store(task)
    assert result.indices.tolist() == [0, 1, 2, 3] and result.name == "stuck-1"
    assert result.codes.tolist() == [OK, OK, OK, USER_ERROR]
    assert result.failures[3][0] == "ValueError: three"
    assert "its result never came back" in lines[0]
