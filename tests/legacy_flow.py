"""The workflow behind ``tests/data/legacy-store-v1.tar.gz``: a store written before task files.

The tarball holds a store written by the code of commit f13cf20, the last layout with one
file per element (``steps/NN-name/return_values/<output>/__<n>__.pickle`` and
``exception/__<n>__.pickle``).  ``tests/test_legacy_store.py`` checks that today's code
still reads, resumes and restarts it.  Its two runs:

- ``FINISHED``: ``legacy(n=12)`` run to its end (exit code 450: ``square`` fails for
  ``x % 5 == 3``, that is 3 and 8, so those elements are masked in ``y``, ``a`` and ``b``);
- ``INTERRUPTED``: the same, its driver SIGKILLed while ``square`` was half done.

Do not edit the steps: the runs hold their code by value (``plan.pickle``: this module
is not installed, so cloudpickle carries it), resumes and restarts run that code, and
reuse keys hash it.  The environment variables below change nothing a key sees: tests
count calls with ``LEGACY_FLOW_MARKS``, and the fixture slowed ``square`` down with
``LEGACY_FLOW_SLEEP`` to interrupt it.

How the tarball was made (the code of f13cf20 in a worktree; Python 3.11.7, cloudpickle
2.1.0, Parsl 2026.10.26)::

    git -C /work/main worktree add /tmp/legacy-wt f13cf20
    mkdir /tmp/legacy-fixture && cd /tmp && PYTHONPATH=/tmp/legacy-wt:/work/main/tests \\
        python -c 'import legacy_flow; legacy_flow.make_store("/tmp/legacy-fixture")'
    tar -C /tmp/legacy-fixture --sort=name --owner=0 --group=0 --numeric-owner \\
        -czf /work/main/tests/data/legacy-store-v1.tar.gz store

then ``FINISHED`` and ``INTERRUPTED`` below were set to the run ids it printed.

Paths: the runs name no absolute path, but for ``parsl_run_dir`` in the interrupted run's
``driver.lock`` (``/tmp/legacy-fixture/store/parsl-runinfo/001``, only used to find the
dead driver's Parsl processes on take-over, of which a thread pool leaves none); run
folders, ``restarted_from`` and reuse go by the run's own folder and its id.  The tarball
keeps the files' modification times, which the interrupted run's lease (expired) and the
maps' numbers files (element folder times) are judged by.  The steps' code is pickled by
value, so resuming or restarting these runs needs the Python minor version that wrote
them (3.11): code objects do not load across versions, and reuse keys hash bytecode.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np

from parsl_flows import step
from parsl_flows.workflow import map_, new_workflow

__all__ = ["FINISHED", "INTERRUPTED", "flow", "make_store"]

MARKS_ENV = "LEGACY_FLOW_MARKS"  # a folder: each call leaves a file "<step>-<x>-<random>"
SLEEP_ENV = "LEGACY_FLOW_SLEEP"  # seconds each call of square sleeps

#: The runs in the tarball's store (``store/runs/<id>``), as ``make_store`` printed them.
FINISHED = "20261205-173041-legacy-a66ed5"
INTERRUPTED = "20261205-173042-legacy-4057d1"


def _called(name: str, x: int) -> None:
    marks = os.environ.get("LEGACY_FLOW_MARKS")
    if marks:
        open(os.path.join(marks, f"{name}-{x}-{uuid.uuid4().hex}"), "w").close()


@step(returns="xs")
def make_xs(n: int) -> list[int]:
    _called("make_xs", n)
    return list(range(n))


@step(returns="y")
def square(xs: int) -> int:  # one element of xs: a map's parameter is named as its array
    _called("square", xs)
    delay = os.environ.get("LEGACY_FLOW_SLEEP")
    if delay:
        time.sleep(float(delay))
    if xs % 5 == 3:
        raise ValueError(f"square: x = {xs} is not allowed (x % 5 == 3)")
    return xs * xs


@step(returns=("a", "b"))
def shift_and_name(y: int) -> tuple[int, str]:
    _called("shift_and_name", y)
    return y + 1, str(y)


@step(returns="total")
def total(a) -> int:  # a: the whole map output, a FileBasedObjectArray
    _called("total", 0)
    return int(np.ma.sum(a.to_array()))  # masked elements (failed ones) are left out


flow = (
    new_workflow("legacy")
    .then(make_xs)
    .then(map_(square, "xs[i] -> y[i]"))
    .then(map_(shift_and_name, "y[i] -> a[i], b[i]"))
    .then(total)
    .returning("y", "a", "b", "total")
)

_DRIVER = """
import os, sys
sys.path.insert(0, {tests!r})
import legacy_flow
import parsl_flows as flows

env = flows.engine.execution_environment(None, "threads")
run = flows.submit(flows.workflow.build(legacy_flow.flow.on(env), n=12), store=sys.argv[1])
print(run.path, flush=True)
run.wait()
"""


def make_store(folder: str) -> None:
    """Write the fixture's store in ``folder/store`` (see the module's docstring).

    Run with the code of the layout to preserve (PYTHONPATH); takes a few seconds.
    """
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import parsl_flows as flows

    store = Path(folder, "store")
    env = flows.engine.execution_environment(None, "threads")
    finished = flows.run(flows.workflow.build(flow.on(env), n=12), store=store)
    assert finished.exit_code == 450, flows.report.log(finished)

    script = Path(folder, "driver.py")
    script.write_text(_DRIVER.format(tests=str(Path(__file__).parent)))
    driver_env = {**os.environ, SLEEP_ENV: "0.5"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store)], stdout=subprocess.PIPE, text=True, env=driver_env
    )
    try:
        run_path = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
        folders = [run_path / "steps" / "01-square" / d for d in ("return_values/y", "exception")]
        deadline = time.monotonic() + 120
        while sum(len(os.listdir(d)) for d in folders if d.exists()) < 6:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    script.unlink()
    print(f"finished: {finished.id}\ninterrupted: {run_path.name}")
