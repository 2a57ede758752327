"""Helpers shared by the end-to-end tests: the command line in a subprocess, polling, and
processes' command lines."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

TIMEOUT = 300


def extract_tarball(tarball: Path, where: Path) -> None:
    """Unpack one of the tests' own tarballs into ``where``, files' times kept.

    With tarfile's "data" filter where this Python has it (3.11.4 and later; Debian
    bookworm's 3.11.2 has not, and refuses the argument).
    """
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(where, filter="data")
        else:
            tar.extractall(where)


def cli(
    *args: str, cwd: Path, timeout: float = TIMEOUT, check: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m parsl_flows ARGS`` in ``cwd``; ``check`` asserts the exit status.

    ``$PARSL_FLOWS_STORE`` is dropped, so the store is the one ``cwd`` or the arguments say.
    """
    env = {k: v for k, v in os.environ.items() if k != "PARSL_FLOWS_STORE"}
    result = subprocess.run(
        [sys.executable, "-m", "parsl_flows", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check is not None:
        assert result.returncode == check, (result.returncode, result.stdout, result.stderr)
    return result


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 2, one line ``parsl_flows: error: ...`` on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("parsl_flows: error: "), lines
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def command_line(p: psutil.Process) -> str:
    """A process's command line; "" for one gone, or a zombie not reaped yet (the shell
    that Parsl's LocalProvider starts a worker pool with is one, for a moment)."""
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def resume_computing_nothing_twice(run_path: Path, calls: Path, n: int, timeout: float) -> Any:
    """Resume the run of a killed driver of the ``counted`` map (``y = 2 x``, a file in
    ``calls`` per call), check every value, and that only elements cut off mid-call by
    the kill ran twice (a few at most); the resumed run."""
    import parsl_flows as flows

    interrupted = flows.load_run(run_path)
    assert interrupted.status == "interrupted"
    resumed = interrupted.resume().wait(timeout)
    assert resumed.exit_code == 0, flows.report.log(resumed)
    y = resumed.called[0].outputs.return_values.y.to_array()
    assert not y.mask.any() and y.tolist() == [2 * x for x in range(n)]
    called = [name.split("-")[0] for name in os.listdir(calls)]
    assert set(called) == {str(x) for x in range(n)}
    assert len(called) - n <= 4, len(called) - n
    assert "already in the store (resumed)" in flows.report.log(resumed.called[0])
    return resumed


def file_of(folder: Path, n: int) -> Path:
    """The file holding element ``n`` of a map output's ``folder`` (a task file, or its own)."""
    from parsl_flows.element_folders import OWN, locate

    loc = locate(folder)
    k = int(loc.file[n])
    assert k != -1, f"no file holds element {n} of {folder}"
    return folder / (f"__{n}__.pickle" if k == OWN else loc.names[k])


def stored_elements(folder: Path) -> list[int]:
    """The elements a map output's ``folder`` holds, as its files say (no index needed)."""
    from parsl_flows.element_folders import locate

    return locate(folder).present().tolist()
