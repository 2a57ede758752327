"""The run lock as a lease: judged from any host, renewed by its driver, taken over safely.

The first tests fake "another host" with a lock record naming one, on a local folder.
The last ones need the test bed of issue 18 (``LOCAL_SLURM_NODES=3
LOCAL_SLURM_SHARED=/tmp/pf-shared bash tools/local-slurm.sh start``): a real driver on
this host with its store on the shared filesystem, and ``tools/local-slurm.sh login hostb
...`` as a second login node (its own host name, its own client of that filesystem).
They skip without it, except when ``$LOCAL_SLURM_SHARED`` is set (CI), where they must run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import command_line, wait_for

import parsl_flows as flows
from parsl_flows import lease
from parsl_flows import lock as lock_module
from parsl_flows.engine import cleanup as cleanup_module
from parsl_flows.lock import RunLock, RunLockedError, _encode, driver_alive
from parsl_flows.processes import wait_ended
from parsl_flows.workflow import map_, new_workflow

OTHER = "otherhost"
REPO = Path(__file__).resolve().parents[1]


def remote_lock(run_dir: Path, age: float = 0.0, **fields: object) -> dict:
    """Write a lock as a driver of host ``otherhost`` would, last renewed ``age`` s ago."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "pid": 4242,
        "host": OTHER,
        "create_time": 1.0,
        "since": time.time() - age - 60,
        "renewed": time.time() - age,
        "renew_seconds": lease.RENEW_SECONDS,
        "helpers": [],
        "parsl_run_dir": None,
        "batch_jobs": [],
        **fields,
    }
    path = run_dir / "driver.lock"
    path.write_bytes(_encode(record))
    if age:  # on a local disk this host's clock is the file server's
        stamp = os.stat(path).st_mtime - age
        os.utime(path, (stamp, stamp))
    return record


@pytest.fixture(autouse=True)
def fresh_clock_offsets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test measures the filesystem's clock anew (the offset is kept 30 s)."""
    monkeypatch.setattr(lease, "_offsets", {})
    yield


@pytest.fixture
def sleeper() -> Iterator[psutil.Process]:
    """A process standing for another host's leftover (the pid namespace is shared here)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield psutil.Process(proc.pid)
    proc.kill()
    proc.wait()


# -- judging a lease ---------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [1e6, -1e6])
def test_a_lease_is_judged_by_the_file_servers_clock_not_this_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    fresh, old = tmp_path / "fresh", tmp_path / "old"
    remote_lock(fresh)
    remote_lock(old, age=200)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)  # this host's clock is way off
    assert driver_alive(fresh) is True
    assert driver_alive(old) is False


def test_a_lease_expires_after_lease_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote_lock(tmp_path, age=100)
    assert lease.lease_seconds() == 90
    assert driver_alive(tmp_path) is False
    monkeypatch.setenv(lease.LEASE_ENV, "120")
    assert driver_alive(tmp_path) is True
    monkeypatch.setenv(lease.LEASE_ENV, "3")
    with pytest.raises(ValueError, match="must exceed the renewal period"):
        lease.lease_seconds()


def test_an_older_versions_lock_of_another_host_stays_undecided(tmp_path: Path) -> None:
    """Written without a lease: never renewed, so its age says nothing."""
    record = remote_lock(tmp_path, age=1000)
    del record["renew_seconds"]
    (tmp_path / "driver.lock").write_text(json.dumps(record))
    assert driver_alive(tmp_path) is None
    with pytest.raises(RunLockedError, match="cannot tell whether it is alive"):
        RunLock(tmp_path).acquire(print)


def test_a_dead_pid_on_this_host_is_dead_at_once(tmp_path: Path, sleeper) -> None:
    record = remote_lock(tmp_path, host=socket.gethostname(), pid=sleeper.pid)
    record["create_time"] = sleeper.create_time()
    (tmp_path / "driver.lock").write_bytes(_encode(record))
    assert driver_alive(tmp_path) is True
    sleeper.kill()
    sleeper.wait()
    assert driver_alive(tmp_path) is False  # its lock was written a moment ago


# -- taking over -------------------------------------------------------------------------------


def test_a_live_lease_of_another_host_is_refused_saying_who_and_when(tmp_path: Path) -> None:
    remote_lock(tmp_path, age=30)
    with pytest.raises(RunLockedError) as refused:
        RunLock(tmp_path).acquire(print)
    message = str(refused.value)
    assert f"already being driven by pid 4242 on host {OTHER}" in message
    assert re.search(r"renewed its lease 3\d s ago", message), message
    assert re.search(r"the lease expires in (5\d|60) s \(about \d\d:\d\d:\d\d here\)", message)
    assert f"stop it on {OTHER} (kill 4242)" in message
    assert json.loads((tmp_path / "driver.lock").read_text())["host"] == OTHER


def test_an_expired_lease_of_another_host_is_taken_over_without_signalling_its_processes(
    tmp_path: Path, sleeper: psutil.Process
) -> None:
    parsl_run_dir = tmp_path / "parsl-runinfo" / "000"
    # A "worker pool" naming the dead driver's Parsl run directory, as local pools do.
    pool = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", f"{parsl_run_dir}/"]
    )
    cancelled: list[list[str]] = []
    lines: list[str] = []
    lock = RunLock(
        tmp_path / "run",
        cancel_jobs=lambda jobs: cancelled.append(jobs) or jobs,
    )
    try:
        remote_lock(
            tmp_path / "run",
            age=100,
            helpers=[[sleeper.pid, sleeper.create_time()]],
            parsl_run_dir=str(parsl_run_dir),
            batch_jobs=["123", "124"],
        )
        lock.acquire(lines.append)
        text = "\n".join(lines)
        assert f"taking over the expired lease of driver pid 4242 on host {OTHER}" in text
        assert re.search(r"last renewed 10\d s ago", text), text
        assert cancelled == [["123", "124"]]
        assert "cancelled the dead driver's batch job(s) 123, 124" in text
        assert (
            f"left 1 process(es) of host {OTHER} alone (pids {sleeper.pid}): stop them there "
            f"if they still run; its worker pools name {parsl_run_dir}" in text
        )
        assert sleeper.status() != psutil.STATUS_ZOMBIE and pool.poll() is None
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    finally:
        lock.release()
        pool.kill()
        pool.wait()
    assert not lock.path.exists()


def test_cleanup_cancels_another_hosts_jobs_and_says_what_it_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sleeper: psutil.Process
) -> None:
    cancelled: list[str] = []
    monkeypatch.setattr(cleanup_module, "cancel_jobs", lambda jobs: cancelled.extend(jobs) or jobs)
    runs = tmp_path / "store" / "runs"
    remote_lock(
        runs / "dead", age=100, helpers=[[sleeper.pid, sleeper.create_time()]], batch_jobs=["77"]
    )
    remote_lock(runs / "alive", age=10, batch_jobs=["78"])
    found = cleanup_module.cleanup(tmp_path / "store")
    assert [f.run_id for f in found] == ["dead"]
    assert found[0].actions == [
        "cancelled the dead driver's batch job(s) 77",
        f"left 1 process(es) of host {OTHER} alone (pids {sleeper.pid}): stop them there if "
        "they still run",
        f"removed the stale lock of driver pid 4242 on host {OTHER}",
    ]
    assert cancelled == ["77"]
    assert sleeper.status() != psutil.STATUS_ZOMBIE
    assert not (runs / "dead" / "driver.lock").exists()
    assert (runs / "alive" / "driver.lock").exists()


# -- renewing ----------------------------------------------------------------------------------


def test_the_driver_renews_once_a_period_and_stops_for_good_when_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lock_module, "RENEW_SECONDS", 0.1)
    writes: list[int] = []  # their sizes
    write_bytes = lock_module.write_bytes
    monkeypatch.setattr(
        lock_module,
        "write_bytes",
        lambda p, d: writes.append(len(d)) or write_bytes(p, d),
    )
    lock = RunLock(tmp_path)
    lost: list[str] = []
    lock.acquire(print)
    lock.on_lost(lost.append)
    try:
        path = lock.path
        old = time.time() - 1000
        os.utime(path, (old, old))
        wait_for(lambda: (lease.lease_age(path) or 1e9) < 5, "a renewal", timeout=5)
        writes.clear()
        time.sleep(1.0)
        assert 7 <= len(writes) <= 12, len(writes)  # one write a period, nothing more
        # One size: a client with the old size cached reads a renewal whole (sshfs does).
        assert set(writes) == {len(path.read_bytes())} == {512}, writes
        taken = remote_lock(tmp_path)  # another host took it over
        wait_for(lambda: bool(lost), "the driver to notice", timeout=5)
        assert "lost its lease to pid 4242 on host otherhost" in lost[0]
        assert lock.lost == lost[0]
        time.sleep(0.5)
        lock.note_helpers(None, ["999"])  # nor does the run's thread write it
        assert json.loads(path.read_text()) == taken
    finally:
        lock.release()
    assert json.loads(lock.path.read_text()) == taken  # the new owner's lock stays


# -- a driver that lost its lease stops its run --------------------------------------------------


@flows.step(returns="y")
def leisurely(x: int) -> int:
    time.sleep(0.02)
    return x


def mark(path: Path) -> None:
    """Rewrite a record as a new driver would (a field of its own shows it is still its)."""
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "new_owner": True}))


def test_a_driver_that_lost_its_lease_stops_without_writing_to_the_run(
    thread_env, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lock_module, "RENEW_SECONDS", 0.1)
    flow = new_workflow("lost").then(map_(leisurely, "x[i] -> y[i]", chunksize=1))
    r = flows.submit(flows.workflow.build(flow.on(thread_env), x=np.arange(2000)), store=store)
    status = r.path / "steps" / "00-leisurely" / "status.json"
    wait_for(lambda: json.loads(status.read_text())["state"] == "running", "the map to start")
    taken = remote_lock(r.path)
    mark(r.path / "run.json")  # the new driver's, from now on
    execution = r._execution
    assert execution is not None
    wait_for(lambda: execution.lease_lost, "the driver to notice", timeout=5)
    mark(status)  # until it noticed, it saved the step's counts as tasks ended
    r.wait(30)
    assert execution.outcome == "interrupted"
    for path in (r.path / "run.json", status):  # neither was written again
        assert json.loads(path.read_text())["new_owner"] is True, path
    assert json.loads((r.path / "driver.lock").read_text()) == taken
    assert "lost its lease to pid 4242 on host otherhost" in r.log()
    assert r.step("leisurely").output("y").mask.sum() > 0  # it did stop


# -- two login nodes on the test bed -------------------------------------------------------------

SHARED = Path(os.environ.get("LOCAL_SLURM_SHARED") or "/tmp/pf-shared")
HERE = socket.gethostname()
LEASE = 30  # the test bed's clients cache for 20 s; renewals come every 5 s

DRIVER = """\
import sys, time
import parsl_flows as flows
from parsl_flows.workflow import build, map_, new_workflow

@flows.step(returns="y")
def slow(x):
    time.sleep(0.05)
    return 2 * x

flow = new_workflow("leased").then(map_(slow, "x[i] -> y[i]"))

if __name__ == "__main__":
    if sys.argv[3] == "slurm":
        env = flows.engine.execution_environment(None, "localcluster", queue=("debug", 2))
    else:
        env = flows.engine.execution_environment(None, "localhost")
    run = flows.submit(build(flow.on(env), x=list(range(int(sys.argv[2])))), store=sys.argv[1])
    print("RUN", run.path, flush=True)
    run.wait()
"""

CHECK = """\
import sys
import parsl_flows as flows
run = flows.load_run(sys.argv[1])
y = run.step("slow").output("y").to_array()
right = y.tolist() == [2 * x for x in range(len(y))] and not y.mask.any()
print(run.status, run.exit_code, right)
"""


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A fresh folder on the test bed's shared filesystem (its store), removed after."""
    if not os.path.ismount(SHARED):
        if os.environ.get("LOCAL_SLURM_SHARED"):
            pytest.fail(f"$LOCAL_SLURM_SHARED={SHARED} is not mounted: start the test bed")
        pytest.skip(f"no test bed: {SHARED} is not a shared filesystem (tools/local-slurm.sh)")
    folder = SHARED / f"lease-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    yield folder
    for _ in range(5):  # a killed pool's last files may land while it is being removed
        if subprocess.run(["rm", "-rf", str(folder)], capture_output=True).returncode == 0:
            break
        time.sleep(1)


def lease_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PARSL_FLOWS_STORE"}
    env[lease.LEASE_ENV] = str(LEASE)
    return env


def on_hostb(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` as on a second login node "hostb" (own host name, own client)."""
    return subprocess.run(
        ["bash", str(REPO / "tools" / "local-slurm.sh"), "login", "hostb", sys.executable, *args],
        cwd=cwd,
        env=lease_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_driver(
    folder: Path, tmp_path: Path, where: str, n: int
) -> tuple[subprocess.Popen[str], Path]:
    """A driver on this host, its store in ``folder``; returns it and its run's folder."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(folder / "store"), str(n), where],
        env=lease_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("RUN "), line
    return proc, Path(line.split()[1])


def read_lock(run_path: Path) -> dict:
    return json.loads((run_path / "driver.lock").read_text() or "{}")


def pending_signals(p: psutil.Process) -> int:
    """Signals sent to ``p`` and not delivered yet (a stopped process keeps a SIGTERM)."""
    status = Path(f"/proc/{p.pid}/status").read_text()
    return sum(int(m, 16) for m in re.findall(r"^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)", status, re.M))


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def jobs_of(store: Path) -> set[str]:
    """Slurm jobs whose batch script lies in ``store`` (submitted by its drivers)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %o"], capture_output=True, text=True)
    return {j for j, _, cmd in (line.partition(" ") for line in out.stdout.splitlines())
            if cmd.startswith(f"{store}/")}  # fmt: skip


def pools_of(jobs: list[str]) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if "process_worker_pool" in " ".join(p.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                if p.environ().get("SLURM_JOB_ID") in jobs:
                    found.append(p)
    return found


def kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILL ``procs`` and their descendants (a pool's workers and resource tracker)."""
    for p in list(procs):
        with contextlib.suppress(psutil.Error):
            procs = [*procs, *p.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert not wait_ended(procs, 10)


@pytest.mark.slurm
@pytest.mark.slow
def test_resume_from_another_login_node_waits_for_the_lease_then_takes_over(
    shared: Path, tmp_path: Path
) -> None:
    proc, run_path = start_driver(shared, tmp_path, "slurm", 300)
    frozen: list[psutil.Process] = []
    jobs: list[str] = []
    try:
        wait_for(lambda: bool(read_lock(run_path).get("batch_jobs")), "a Slurm block", 120)
        jobs = read_lock(run_path)["batch_jobs"]
        wait_for(lambda: bool(pools_of(jobs)), "the block's worker pool", 60)
        store = str(shared / "store")
        refused = on_hostb(tmp_path, "-m", "parsl_flows", "resume", run_path.name, "--store", store)
        assert refused.returncode == 2, (refused.stdout, refused.stderr)
        assert f"already being driven by pid {proc.pid} on host {HERE}" in refused.stderr
        assert "renewed its lease" in refused.stderr and "the lease expires in" in refused.stderr
        # Freeze what the driver started, so none of it can end by itself: only a
        # successor can end the block, and nobody may signal the interchange.
        interchange = next(
            c for c in psutil.Process(proc.pid).children() if "interchange" in command_line(c)
        )
        frozen = [interchange, *pools_of(jobs)]
        for p in frozen:
            p.suspend()
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        while True:
            tried = time.monotonic()
            out = on_hostb(
                tmp_path, "-m", "parsl_flows", "resume", run_path.name, "--store", store,
                timeout=120,
            )  # fmt: skip
            if "already being driven" not in out.stderr:
                break
            assert tried - killed < LEASE + 40, "the dead driver's lease never expired"
            time.sleep(2)
        waited = tried - killed
        print(f"hostb took over {waited:.0f} s after the kill (lease {LEASE} s, renewals 5 s)")
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert waited > LEASE - lease.RENEW_SECONDS - 2  # never before the lease expired
        log = on_hostb(tmp_path, "-c", f"print(open({str(run_path / 'log.txt')!r}).read())")
        text = log.stdout
        assert f"taking over the expired lease of driver pid {proc.pid} on host {HERE}" in text
        assert f"cancelled the dead driver's batch job(s) {', '.join(jobs)}" in text
        assert re.search(  # the interchange, and helpers that ended with their driver
            rf"left \d+ process\(es\) of host {HERE} alone \(pids [\d, ]*\b{interchange.pid}\b",
            text,
        ), text
        assert interchange.status() == psutil.STATUS_STOPPED  # never signalled:
        assert pending_signals(interchange) == 0  # not even a SIGTERM waiting for it
        wait_for(lambda: not set(jobs) & squeue_ids(), "the dead driver's block to end", 30)
        check = on_hostb(tmp_path, "-c", CHECK, str(run_path))
        assert check.stdout.split() == ["finished", "0", "True"], (check.stdout, check.stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all(frozen)
        left = jobs_of(shared / "store")
        if left:
            subprocess.run(["scancel", *left], check=False)


@pytest.mark.slow
def test_cleanup_from_another_login_node_leaves_the_dead_drivers_processes_alone(
    shared: Path, tmp_path: Path
) -> None:
    proc, run_path = start_driver(shared, tmp_path, "local", 20000)
    frozen: list[psutil.Process] = []
    store = str(shared / "store")
    try:
        wait_for(lambda: bool(read_lock(run_path).get("helpers")), "the driver's interchange", 60)
        cleaned = on_hostb(tmp_path, "-m", "parsl_flows", "cleanup", "--store", store)
        assert "nothing to clean up" in cleaned.stdout, (cleaned.stdout, cleaned.stderr)
        status = on_hostb(tmp_path, "-m", "parsl_flows", "status", run_path.name, "--store", store)
        assert "running" in status.stdout and "interrupted" not in status.stdout, status.stdout
        interchange = next(
            c for c in psutil.Process(proc.pid).children() if "interchange" in command_line(c)
        )
        frozen = [interchange]
        interchange.suspend()  # it cannot follow its driver: only cleanup could stop it
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        while True:
            status = on_hostb(
                tmp_path, "-m", "parsl_flows", "status", run_path.name, "--store", store
            )
            if "interrupted" in status.stdout:
                break
            assert time.monotonic() - killed < LEASE + 40, status.stdout
            time.sleep(2)
        print(f"hostb saw the driver dead {time.monotonic() - killed:.0f} s after the kill")
        cleaned = on_hostb(tmp_path, "-m", "parsl_flows", "cleanup", "--store", store)
        assert cleaned.returncode == 0, cleaned.stderr
        assert re.search(
            rf"left \d+ process\(es\) of host {HERE} alone \(pids [\d, ]*\b{interchange.pid}\b",
            cleaned.stdout,
        ), cleaned.stdout
        assert f"removed the stale lock of driver pid {proc.pid} on host {HERE}" in cleaned.stdout
        assert interchange.status() == psutil.STATUS_STOPPED
        assert pending_signals(interchange) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        marker = f"{store}/parsl-runinfo/"
        frozen += [
            p for p in psutil.process_iter(["cmdline"])
            if marker in " ".join(p.info["cmdline"] or [])
        ]  # fmt: skip
        kill_all(frozen)
