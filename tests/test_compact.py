"""``compact``: an ended run's one-file-per-element folders rewritten as task files.

On the real store of ``tests/data/legacy-store-v1.tar.gz`` (see ``tests/legacy_flow.py``),
written before task files: after compaction every value, mask and exception reads as
before (whole arrays, through ``flows.load_run``), each map folder holds task files and a
complete index and no element file, and a restart still reuses everything.  A compaction
really SIGKILLed (between any two of its steps, and at random moments) leaves a run that
reads the same, and compacting again finishes the job.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import legacy_flow
import numpy as np
import pytest
from helpers import cli, extract_tarball

import parsl_flows as flows
from parsl_flows.compact import CompactRefused, compact_run, count_files
from parsl_flows.element_folders import INDEX_NAME
from parsl_flows.lock import RunLock
from parsl_flows.numbers_file import numbers_path
from parsl_flows.status import StepStatus

pytestmark = pytest.mark.slow

TARBALL = Path(__file__).parent / "data" / "legacy-store-v1.tar.gz"
FINISHED, INTERRUPTED = legacy_flow.FINISHED, legacy_flow.INTERRUPTED
TIMEOUT = 120
OWN_FILE = re.compile(r"__\d+__\.pickle")

# Compacts the run argv[1] in small batches (several task files per folder), printing each
# step; at step argv[2] it stops there (sleeps) for the test to SIGKILL it.  argv[3] > 0:
# it sleeps that long at each step instead, and the test kills it at a random moment.
CHILD = """
import sys, time
from parsl_flows.compact import compact_run

stop_at, pause = int(sys.argv[2]), float(sys.argv[3])
seen = 0

def step(what):
    global seen
    seen += 1
    print(seen, what, flush=True)
    time.sleep(600 if seen == stop_at else pause)

print("started", flush=True)
compact_run(sys.argv[1], batch_elements=4, progress=step)
print("done", flush=True)
"""


def extract(where: Path) -> Path:
    """The tarball's store in ``where`` (files' times kept: the numbers files count them)."""
    extract_tarball(TARBALL, where)
    return where / "store"


@pytest.fixture
def legacy_store(tmp_path: Path) -> Path:
    return extract(tmp_path / "legacy")


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Count the steps' calls from now on: ``calls()`` is ``{step: Counter(x)}``."""
    folder = tmp_path / "calls"
    folder.mkdir()
    monkeypatch.setenv(legacy_flow.MARKS_ENV, str(folder))
    monkeypatch.delenv(legacy_flow.SLEEP_ENV, raising=False)

    def counted() -> dict[str, collections.Counter[int]]:
        made: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        for name in os.listdir(folder):
            step, x, _ = name.split("-")
            made[step][int(x)] += 1
        return dict(made)

    return counted


def _plain(v: Any) -> Any:
    """A value as compared: an exception by its type and message (they compare by id)."""
    if v is None or v is np.ma.masked:
        return None
    return f"{type(v).__name__}: {v}" if isinstance(v, BaseException) else (type(v), v)


def _array(arr: flows.FileBasedObjectArray) -> dict[str, Any]:
    """Everything a reader sees of a map folder: the mask, the whole array (dtype too),
    and each element read on its own."""
    whole = arr.to_array()
    return {
        "mask": arr.mask.tolist(),
        "dtype": whole.dtype.str,
        "whole": [_plain(v) for v in whole.tolist()],
        "elements": [_plain(arr[i]) for i in range(arr.size)],
    }


def snapshot(store: Path, run_id: str) -> dict[str, Any]:
    """Every value, mask and exception of a run, as ``flows.load_run`` reads them."""
    run = flows.load_run(run_id, store=store)
    seen: dict[str, Any] = {"returned": sorted(run.outputs.return_values)}
    for s in run.steps:
        rec = s.record
        for out in rec.outputs:
            if rec.kind == "map":
                seen[f"{s.name}.{out}"] = _array(s.output(out))
            elif (s.path / "return_values" / out).is_dir():
                seen[f"{s.name}.{out}"] = s.output(out).fetch_value()
        if rec.kind == "map":
            errors = flows.FileBasedObjectArray(s.path / "exception", rec.shape or ())
            seen[f"{s.name}.exception"] = _array(errors)
    return seen


def map_folders(run_dir: Path) -> list[Path]:
    out = []
    for step_dir in sorted((run_dir / "steps").iterdir()):
        if StepStatus.load(step_dir).kind == "map":
            out += sorted((step_dir / "return_values").iterdir())
            out += [step_dir / "exception"] if (step_dir / "exception").is_dir() else []
    return out


def assert_compact(run_dir: Path) -> None:
    """Each map folder: task files, all named by a complete index, and nothing else."""
    for folder in map_folders(run_dir):
        names = set(os.listdir(folder))
        assert INDEX_NAME in names, folder
        with np.load(folder / INDEX_NAME) as index:
            assert bool(index["complete"]), folder
            assert (index["file_number"] != -2).all(), folder
            indexed = {str(n) for n in index["names"]}
        assert names - {INDEX_NAME} == indexed, (folder, names)
        assert all(n.startswith("task-") for n in indexed), indexed
    for call in ("00-make_xs", "03-total"):  # a plain call's one file stays
        assert [p.name for p in (run_dir / "steps" / call / "return_values").glob("*/*")] == [
            "__0__.pickle"
        ]


def tree(run_dir: Path) -> dict[str, int]:
    """Every file of a run and its modification time: to see that nothing changed."""
    return {
        str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()
    }


# -- compacting ------------------------------------------------------------------------------


def test_compacting_a_finished_legacy_run_keeps_every_value(legacy_store: Path) -> None:
    run_dir = legacy_store / "runs" / FINISHED
    before = snapshot(legacy_store, FINISHED)
    assert before["square.y"]["mask"] == [x % 5 == 3 for x in range(12)]  # the real thing
    n_before = count_files(run_dir)
    y = run_dir / "steps" / "01-square" / "return_values" / "y"
    numbers = numbers_path(y)
    assert numbers.exists()
    # What a compaction killed in the middle of a write leaves: removed, never read.
    (y / ".task-compact-0-0123abcd.pickle.99.89abcdef.tmp").write_bytes(b"cut sh")
    (y.parents[1] / "exception" / ".index.npz.99.89abcdef.tmp").write_bytes(b"cut")

    done = compact_run(run_dir)

    assert snapshot(legacy_store, FINISHED) == before
    assert_compact(run_dir)
    # 10 + 10 + 10 values and 2 exceptions (and the 2 temporary files) became 4 task files
    # and 4 indexes; the numbers files of y and a were forgotten (their folders changed).
    assert (done.removed, done.task_files, done.indexes) == (34, 4, 4)
    assert (done.files_before, done.files_after) == (n_before + 2, count_files(run_dir))
    assert n_before - done.files_after == 32 - 8 + 2
    assert not numbers.exists() and not (run_dir / "driver.lock").exists()

    kept = tree(run_dir)
    again = compact_run(run_dir)
    assert again.already and tree(run_dir) == kept  # nothing touched, not even the lock


def test_a_compacted_run_restarts_reusing_everything(legacy_store: Path, calls) -> None:
    compact_run(legacy_store / "runs" / FINISHED)
    old = flows.load_run(FINISHED, store=legacy_store)
    new = flows.submit(old.get_builder_restart(), store=legacy_store).wait(TIMEOUT)
    assert (new.status, new.exit_code) == ("failed", 450), flows.report.log(new)
    assert calls() == {"square": {3: 1, 8: 1}}  # only the failed elements ran again
    for name, line in {
        "make_xs": "reused 1 of 1 elements",
        "square": "reused 10 of 12 elements",
        "shift_and_name": "reused 10 of 10 elements",
        "total": "reused 1 of 1 elements",
    }.items():
        assert f"{line} from run {old.id}" in flows.report.log(new.step(name)), name
    mine = snapshot(legacy_store, new.id)
    assert mine == snapshot(legacy_store, FINISHED)
    assert compact_run(new.path).already  # today's runs are compact as written


def test_a_resumed_legacy_run_of_mixed_folders_compacts(legacy_store: Path, calls) -> None:
    """The interrupted run, resumed by today's code: own files and task files together."""
    run_dir = legacy_store / "runs" / INTERRUPTED
    resumed = flows.load_run(INTERRUPTED, store=legacy_store).resume().wait(TIMEOUT)
    assert resumed.exit_code == 450, flows.report.log(resumed)
    folder = run_dir / "steps" / "01-square" / "return_values" / "y"
    with np.load(folder / INDEX_NAME) as index:
        tasks = {str(n) for n in index["names"]}
        assert tasks and (index["file_number"] == -2).any()  # mixed
    before = snapshot(legacy_store, INTERRUPTED)

    done = compact_run(run_dir)

    assert snapshot(legacy_store, INTERRUPTED) == before
    assert_compact(run_dir)
    with np.load(folder / INDEX_NAME) as index:
        assert tasks <= {str(n) for n in index["names"]}  # the task files stay as they were
    assert done.removed > 0 and not done.notes


# -- refusals --------------------------------------------------------------------------------


def test_an_interrupted_run_or_one_being_driven_is_refused(legacy_store: Path) -> None:
    interrupted = legacy_store / "runs" / INTERRUPTED
    kept = tree(interrupted)
    with pytest.raises(CompactRefused, match=f"run {INTERRUPTED} was interrupted.*resume it"):
        compact_run(interrupted)
    assert tree(interrupted) == kept

    finished = legacy_store / "runs" / FINISHED
    lock = RunLock(finished)  # a live driver (this process) holds the run
    lock.acquire(lambda _: None)
    try:
        with pytest.raises(CompactRefused, match=f"run {FINISHED} is held by pid {os.getpid()}"):
            compact_run(finished)
    finally:
        lock.release()
    assert any(OWN_FILE.fullmatch(p.name) for p in (finished / "steps").rglob("*/y/*"))


def test_the_command_compacts_every_ended_run_of_a_store(legacy_store: Path) -> None:
    before = snapshot(legacy_store, FINISHED)
    n_before = count_files(legacy_store / "runs" / FINISHED)
    out = cli("compact", "--all", "--store", str(legacy_store), cwd=legacy_store, check=0).stdout
    n_after = count_files(legacy_store / "runs" / FINISHED)
    assert (
        f"run {FINISHED}: removed 32 file(s), wrote 4 task file(s) and 4 index(es): "
        f"{n_before} files before, {n_after} after"
    ) in out, out
    assert f"run {INTERRUPTED}: skipped: run {INTERRUPTED} was interrupted" in out, out
    assert "compacted 1 run(s)" in out and "32 file(s) removed in all" in out, out
    assert snapshot(legacy_store, FINISHED) == before
    assert_compact(legacy_store / "runs" / FINISHED)

    again = cli("compact", "--all", "--store", str(legacy_store), cwd=legacy_store, check=0)
    assert f"run {FINISHED}: already compact ({n_after} files)" in again.stdout, again.stdout
    one = cli("compact", INTERRUPTED[:15], "--store", str(legacy_store), cwd=legacy_store, check=1)
    assert "resume it first" in one.stderr and INTERRUPTED in one.stderr, one.stderr
    usage = cli("compact", "--store", str(legacy_store), cwd=legacy_store, check=2)
    assert "give one run, or --all" in usage.stderr, usage.stderr


# -- killed ----------------------------------------------------------------------------------


@contextlib.contextmanager
def child(tmp_path: Path, run_dir: Path, stop_at: int, pause: float) -> Iterator[IO[str]]:
    """A compaction in a process of its own (``CHILD``), its output; SIGKILLed on leaving."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(stop_at), str(pause)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        yield proc.stdout
    finally:
        proc.send_signal(signal.SIGKILL)  # a real kill -9, wherever it is
        proc.wait(30)
        proc.stdout.close()


@pytest.fixture(params=["legacy", "mixed"])
def source(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A store to copy for each kill, and the run to compact there: the finished legacy
    run, or the interrupted one resumed by today's code (own files beside task files under
    a complete index, where removing an element file before the index would lose it)."""
    store = extract(tmp_path / "source")
    if request.param == "legacy":
        return store, FINISHED
    monkeypatch.delenv(legacy_flow.SLEEP_ENV, raising=False)
    monkeypatch.delenv(legacy_flow.MARKS_ENV, raising=False)
    resumed = flows.load_run(INTERRUPTED, store=store).resume().wait(TIMEOUT)
    assert resumed.exit_code == 450, flows.report.log(resumed)
    return store, INTERRUPTED


def test_a_compaction_killed_between_any_two_steps_loses_nothing(
    tmp_path: Path, source: tuple[Path, str]
) -> None:
    origin, run_id = source
    baseline = snapshot(origin, run_id)
    steps: list[str] = []
    whole = tmp_path / "whole"
    shutil.copytree(origin, whole)
    compact_run(whole / "runs" / run_id, batch_elements=4, progress=steps.append)
    assert len(steps) >= 5  # task files (several in a folder), an index, removals

    for k in range(1, len(steps) + 1):
        store = tmp_path / f"k{k}"
        shutil.copytree(origin, store)
        run_dir = store / "runs" / run_id
        with child(tmp_path, run_dir, k, 0.0) as out:
            for line in out:  # the child stops (sleeps) right after printing step k
                if line.startswith(f"{k} "):
                    break
            else:
                raise AssertionError(f"the child ended before step {k}")
        assert snapshot(store, run_id) == baseline, f"killed after step {k}: {steps[k - 1]}"
        compact_run(run_dir)  # finishes the job: the stale lock is taken over
        assert snapshot(store, run_id) == baseline, k
        assert_compact(run_dir)


def test_a_compaction_killed_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    """Killed twice at random moments (mid-write too), then compacted to the end."""
    rng = random.Random(19)
    baseline = None
    for attempt in range(6):
        store = extract(tmp_path / f"a{attempt}")
        run_dir = store / "runs" / FINISHED
        baseline = baseline or snapshot(store, FINISHED)
        for _kill in range(2):
            with child(tmp_path, run_dir, 0, 0.01) as out:
                assert out.readline() == "started\n"
                time.sleep(rng.uniform(0, 0.3))
            assert snapshot(store, FINISHED) == baseline
        compact_run(run_dir)
        assert snapshot(store, FINISHED) == baseline
        assert_compact(run_dir)
