"""The helper process that writes ``dataset.nc`` files for a driver (see ``engine.datasets``).

    python -m parsl_flows.write_datasets

Reads requests, one JSON object a line: ``{"step": "<step dir>", "known": {...}}`` or
``{"run": "<run dir>", "outcome": [status, exit code]}``; writes the file, then answers
with one line: ``{"written": path or null, "error": null or why, "peak_rss_mb": ...}``.
Ends when its input ends.  ``known`` maps an output to the numbers the driver already
has of it (``.npz`` bytes of ``indices`` and ``values``, in base64): the step's files
are then not read again (``step_dataset(known=...)``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import write_run_dataset, write_step_dataset
from .status import StepStatus


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """Carry out one request; a failure is an answer, not an end."""
    try:
        if "step" in request:
            step_dir = Path(request["step"])
            rec = StepStatus.load(step_dir)
            if rec.kind != "map" or rec.shape is None:  # nothing laid out to write
                written = None
            else:
                written = write_step_dataset(step_dir, known=_known(request.get("known", {})))
        else:
            outcome = request.get("outcome")
            written = write_run_dataset(
                Path(request["run"]), outcome=None if outcome is None else tuple(outcome)
            )
        return {"written": None if written is None else str(written), "error": None}
    except Exception as e:
        return {"written": None, "error": f"{type(e).__name__}: {e}"}


def _known(encoded: dict[str, str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    known = {}
    for out, text in encoded.items():
        with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as npz:
            known[out] = (npz["indices"], npz["values"])
    return known


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group; the driver decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Answers go to the original standard output alone; anything else printed (a library's
    # warning, even from C) goes to standard error, not into the answers.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        reply = handle(json.loads(line))
        reply["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        answers.write(json.dumps(reply) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
