"""The ``dataset.nc`` files of a run, written by a helper process beside the driver.

Each map's ``dataset.nc`` is written as the map ends, and the run's own when the run ends
(:mod:`parsl_flows.dataset` builds them).  Doing that in the driver cost it about 55 MB
for xarray, pandas and netCDF4 alone, plus the arrays being written: a third of a 100,000
element run's peak, in the process a notebook keeps for hours.  And netCDF4's HDF5 is
not thread-safe: a crash in it took the driver, and every run in it, down.

So one helper process per driver process (``python -m parsl_flows.write_datasets``)
writes them, one request at a time, in order.  It starts when a map's first task comes
back (not before: its imports would slow Parsl's own start on a small machine) and stays
for the driver's later runs (a notebook pays its start once).  It reads a request
a line from its standard input and answers each on its standard output; it ignores
Ctrl-C (the driver decides what stops) and ends when its input closes: when the driver
exits, or dies.  A helper that dies (killed, out of memory) costs the files it was
asked for, which are reported as not written; the next request starts a new one.
"""

from __future__ import annotations

import atexit
import base64
import io
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

__all__ = ["DatasetWriter", "dataset_writer"]

logger = logging.getLogger(__name__)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class DatasetWriter:
    """Asks the helper process to write a step's or a run's ``dataset.nc``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._at_exit = False
        #: The helper's peak resident memory (MB), as it last reported it.
        self.peak_rss_mb = 0.0

    def write(
        self,
        what: Literal["step", "run"],
        path: Path,
        known: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        **extra: Any,
    ) -> str | None:
        """Write the ``dataset.nc`` of the step or run directory ``path``.

        Returns None when it is written (or a step has none to write: a plain call, a
        map that never started), else why not.  Never raises: the results are in the
        store either way.  ``known`` maps a step's output to numbers the workers sent
        back, ``(indices, values)``, so that the helper need not read their files again;
        ``extra`` goes with the request (a run's ``outcome``).
        """
        if known:
            extra["known"] = {out: _encoded(*pair) for out, pair in known.items()}
        with self._lock:
            try:
                proc = self._started()
                stdin, stdout = _pipes(proc)
                stdin.write(json.dumps({what: str(path), **extra}) + "\n")
                stdin.flush()
                line = stdout.readline()
            except OSError as e:
                line = ""
                logger.debug("dataset writer: %s", e)
            if not line:
                return self._lost()
        reply = json.loads(line)
        self.peak_rss_mb = max(self.peak_rss_mb, float(reply.get("peak_rss_mb", 0.0)))
        error = reply.get("error")
        return None if error is None else str(error)

    def start(self) -> None:
        """Start the helper now, if it is not running, without waiting for it.

        Its start (a Python with xarray and netCDF4 to import: a second or two) then
        overlaps the run's work instead of delaying the first map's file, or the end of
        a short run.  While a request is being answered the helper is running already,
        and the caller (a map's first result) must not wait for that file to be written.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._started()
        finally:
            self._lock.release()

    def close(self) -> None:
        """End the helper (it finishes the file it is writing): at exit, or in tests."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            _pipes(proc)[0].close()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    def _started(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        env = dict(os.environ)
        # The helper reads element files, whose classes must import there as here.
        path = [_PACKAGE_ROOT, *(p for p in sys.path if p and os.path.isdir(p))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "parsl_flows.write_datasets"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        if not self._at_exit:
            atexit.register(self.close)
            self._at_exit = True
        return self._proc

    def _lost(self) -> str:
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"the process writing dataset.nc files ended ({how})"


def _encoded(indices: np.ndarray, values: np.ndarray) -> str:
    """``.npz`` bytes in base64, as ``write_datasets`` reads them back."""
    buffer = io.BytesIO()
    np.savez(buffer, indices=indices, values=values)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pipes(proc: subprocess.Popen[str]) -> tuple[IO[str], IO[str]]:
    assert proc.stdin is not None and proc.stdout is not None  # both PIPE
    return proc.stdin, proc.stdout


#: The driver process's one writer.
dataset_writer = DatasetWriter()
