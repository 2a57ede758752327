"""The command line's progress and summary, in a real terminal and in a pipe.

A terminal is a pseudo-terminal (``pty``) the CLI process has as stdin, stdout and
stderr, so it sees ``isatty()`` as a user's shell would; its output is read as bytes,
escape sequences and all.  Runs use Parsl's thread pool (``--env threads``): no worker
processes hold the terminal open after the driver exits.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from helpers import cli
from test_cli import SLOW_FLOW

pytestmark = pytest.mark.slow

TIMEOUT = 300
RUN_ARGS = ("run", "flows.py:flow", "--set", 'x={"arange": [16]}', "--set", "delay=0.3")
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "flows.py").write_text(SLOW_FLOW)
    return tmp_path


def in_terminal(*args: str, cwd: Path, columns: int = 120) -> tuple[int, str]:
    """``python -m parsl_flows ARGS`` with a pseudo-terminal for its standard streams.

    Returns the exit status and everything written to the terminal, decoded.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("PARSL_FLOWS_STORE", "NO_COLOR")}
    env.update(TERM="xterm-256color", LANG="C.UTF-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "parsl_flows", *args],
        cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal's other side has closed it
                break
            if not data:
                break
            chunks.append(data)
        else:
            raise AssertionError(f"the CLI did not finish within {TIMEOUT} s")
        return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_terminal_shows_rich_bars_with_counts_rate_and_time_left(work: Path) -> None:
    status, raw = in_terminal(*RUN_ARGS, "--env", "threads", cwd=work)
    assert status == 0, raw
    assert "\x1b[" in raw  # drawn, not printed line by line
    drawn = _ESCAPE.sub("", raw).replace("\r\n", "\n")  # the terminal ends lines with CRLF
    # A bar of rich's characters per running step, with its counts, rate and time left.
    bars = [line for line in re.split(r"[\r\n]", drawn) if line.startswith("slow_double ━")]
    assert bars, drawn
    assert any(re.search(r"\d+/16 done, \d+ remaining", bar) for bar in bars), bars
    assert any(re.search(r"\d+\.\d/s .*\d s left", bar) for bar in bars), bars
    assert "[#" not in drawn and "running: " not in drawn  # none of the hand-drawn bar
    # What stays on the screen: of each line, what follows its last carriage return.
    text = "\n".join(line.rsplit("\r", 1)[-1] for line in drawn.split("\n"))
    # Each finished step is printed once; the bars are gone at the end.
    assert len(re.findall(r"^  ok\s+slow_double  exit 0 .* 16/16 done$", text, re.M)) == 1
    assert len(re.findall(r"^  ok\s+add_up  exit 0", text, re.M)) == 1
    assert not re.search(r"^slow_double ━", text, re.M), text
    # The closing table is rich's, with the same columns; the lines after it are as ever.
    assert re.search(r"^STEP\s+┃\s+STATE\s+┃\s+EXIT\s+┃ .*┃\s+TIME$", text, re.M), text
    assert re.search(r"^━+╇━+", text, re.M), text
    assert re.search(r"^slow_double\s+│\s+ok\s+│\s+0\s+│\s+16\s+│", text, re.M), text
    assert re.search(r"^  total  240\.0$", text, re.M), text
    assert re.search(r"^       finished, exit code 0 \(", text, re.M), text


def test_a_pipe_gets_plain_lines(work: Path) -> None:
    result = cli(*RUN_ARGS, "--env", "threads", cwd=work, check=0)
    out = result.stdout
    assert "\x1b" not in out and "\r" not in out and "━" not in out, out
    # Whether a step is seen running, and how often its counts are printed, is timing;
    # every line's form is not.
    lines = [
        line
        for line in out.splitlines()
        if not re.fullmatch(r"  (started  \w+|running  slow_double  \d+/16 done.*)", line)
    ]
    time_ = r"\d+\.\d s"
    expected = [
        r"run    \d{8}-\d{6}-slow-\w+",
        rf"store  {re.escape(str(work / 'parsl-flows-store'))}",
        rf"  ok       slow_double  exit 0  {time_}  16/16 done",
        rf"  ok       add_up  exit 0  {time_}",
        "",
        r"STEP         STATE  EXIT  DONE  FAILED  LOST  NOT RUN  ATTEMPTS +TIME",
        rf"slow_double  ok        0    16       0     0        0         1 +{time_}",
        rf"add_up       ok        0     1       0     0                  1 +{time_}",
        "",
        "returns:",
        r"  y      array \(16,\), 16 of 16 elements present",
        r"  total  240\.0",
        "",
        r"run    \d{8}-\d{6}-slow-\w+",
        rf"       finished, exit code 0 \({time_}\)",
        rf"store  {re.escape(str(work / 'parsl-flows-store'))}",
    ]
    assert len(lines) == len(expected), out
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (pattern, line, out)
    assert "  started  slow_double" in out.splitlines()  # it runs for seconds: always seen
