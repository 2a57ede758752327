"""Shared fixtures: one real local HighThroughputExecutor per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can import seed_flows

import parsl_flows as flows


@pytest.fixture(scope="session")
def local_env() -> flows.engine.ExecutionEnvironment:
    """The library's default environment: a real local HTEX, started once per session."""
    return flows.engine.execution_environment(None, "localhost")


@pytest.fixture(scope="session")
def thread_env() -> flows.engine.ExecutionEnvironment:
    return flows.engine.execution_environment(None, "threads")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


_EXIT_STATUS = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _EXIT_STATUS
    _EXIT_STATUS = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Never let a stuck run hang the test process at exit (runs after the summary).

    Runs are carried out in non-daemon threads (so a script that submits and ends still
    finishes its runs).  A test that fails while its run still waits on Parsl would then
    keep the interpreter alive forever, and CI would hang instead of failing.
    """
    import threading

    stuck = [t.name for t in threading.enumerate() if t.name.startswith("parsl_flows-")]
    if stuck:
        sys.stderr.write(f"\nruns still going after the tests: {stuck}; exiting without them\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(_EXIT_STATUS or 1)


@pytest.fixture
def cluster_dir(tmp_path: Path):
    """Where a Slurm test keeps its stores: the test bed's shared folder when it runs.

    ``LOCAL_SLURM_SHARED=DIR bash tools/local-slurm.sh start`` mounts a shared filesystem
    at DIR that every node sees through a client of its own (see tests/test_cluster.py);
    stores there meet the caches and round trips of a cluster's NFS or Lustre.
    """
    import shutil
    import uuid

    shared = os.environ.get("LOCAL_SLURM_SHARED")
    if not shared or not Path(shared).is_mount():
        yield tmp_path
        return
    path = Path(shared) / f"test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
