"""A store written before task files (one file per element) stays readable, resumable and
restartable.

``tests/data/legacy-store-v1.tar.gz`` was written by the code of commit f13cf20 (see
``tests/legacy_flow.py`` for the workflow and how the tarball was made).  These tests go
through the public API only, never the store's file names: the layout they were written
in is what they keep working.  The runs hold their steps' code by value and run on the
``threads`` environment, so calls are counted in this process (``LEGACY_FLOW_MARKS``).
"""

from __future__ import annotations

import collections
import logging
import math
import os
from pathlib import Path
from typing import Any

import legacy_flow
import numpy as np
import pytest
from helpers import extract_tarball

import parsl_flows as flows

pytestmark = pytest.mark.slow

TARBALL = Path(__file__).parent / "data" / "legacy-store-v1.tar.gz"
N = 12  # the runs' input n
TIMEOUT = 120


@pytest.fixture
def legacy_store(tmp_path: Path) -> Path:
    """The tarball's store, in a fresh folder: runs hold no absolute path that matters."""
    extract_tarball(TARBALL, tmp_path / "legacy")  # keeps the files' times
    return tmp_path / "legacy" / "store"


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
            # shift_and_name marks its y = x * x: count it by x as well
            made[step][math.isqrt(int(x)) if step == "shift_and_name" else int(x)] += 1
        return dict(made)

    return counted


def fails(x: int) -> bool:
    return x % 5 == 3


def expected(n: int) -> dict[str, Any]:
    """y, a and b as ``to_array().tolist()`` gives them (None where masked), and total."""
    y = [None if fails(x) else x * x for x in range(n)]
    return {
        "y": y,
        "a": [None if v is None else v + 1 for v in y],
        "b": [None if v is None else str(v) for v in y],
        "total": sum(v + 1 for v in y if v is not None),
    }


def check_values(run: flows.Run, n: int) -> None:
    """Every value of the run's outputs, masks where ``square`` failed, and its errors."""
    want = expected(n)
    returned = run.outputs.return_values
    assert sorted(returned) == ["a", "b", "total", "y"]
    failed = [fails(x) for x in range(n)]
    for name in ("y", "a", "b"):
        arr = returned[name]
        assert arr.shape == (n,), name
        assert arr.mask.tolist() == failed, name
        assert arr.to_array().tolist() == want[name], name
        assert arr[4] == want[name][4] and arr[3] is np.ma.masked, name
    assert returned.a.to_array().dtype.kind == "i"  # numbers come back as numbers
    assert returned.total.fetch_value() == want["total"]
    errors = run.step("square").outputs.exception
    assert errors.mask.tolist() == [not f for f in failed]
    for x in range(n):
        if fails(x):
            assert isinstance(errors[x], ValueError)
            assert str(errors[x]) == f"square: x = {x} is not allowed (x % 5 == 3)"
    assert "exception" not in run.step("shift_and_name").outputs


# -- (a) read ----------------------------------------------------------------------------


def test_a_finished_legacy_run_reads_as_written(legacy_store: Path) -> None:
    run = flows.load_run(legacy_flow.FINISHED, store=legacy_store)
    assert (run.status, run.exit_code) == ("failed", 450)
    assert [(s.name, s.status, s.exit_code, s.is_map) for s in run.steps] == [
        ("make_xs", "finished", 0, False),
        ("square", "failed", 401, True),
        ("shift_and_name", "finished", 0, True),
        ("total", "finished", 0, False),
    ]
    assert run.inputs["n"] == N
    check_values(run, N)
    square = run.step("square")
    assert square.attributes["submitted_elements"] == "0-11"
    assert "element 3 (3,): ValueError: square: x = 3 is not allowed" in flows.report.log(square)
    progress = flows.report.progress(run)
    assert "10/12 done, 2 failed" in progress
    assert "10/10 done, 2 not submitted" in progress

    want = expected(N)
    ds = square.dataset()
    assert ds.xs.values.tolist() == list(range(N))
    assert ds.y_mask.values.tolist() == [fails(x) for x in range(N)]
    np.testing.assert_array_equal(
        ds.y.where(~ds.y_mask).values, [np.nan if v is None else v for v in want["y"]]
    )
    assert ds.square_error.values[3].startswith("ValueError: square: x = 3 is not allowed")
    assert ds.square_error.values[0] == ""
    assert ds.square_attempts.values.tolist() == [1] * N
    pair = run.step("shift_and_name").dataset()
    assert pair.a.values[~pair.a_mask.values].tolist() == [v for v in want["a"] if v is not None]
    assert [pair.b.values[x] for x in (0, 4, 11)] == ["0", "16", "121"]
    assert pair.b_mask.values.tolist() == [fails(x) for x in range(N)]
    assert pair.shift_and_name_attempts.values.tolist() == [0 if fails(x) else 1 for x in range(N)]
    whole = run.dataset()
    assert {"y", "a", "b", "square_error"} <= set(whole.data_vars)
    assert int(whole.a.where(~whole.a_mask).sum()) == want["total"]
    one = run.outputs.return_values.y.to_xarray()
    assert one.y_mask.values.tolist() == [fails(x) for x in range(N)]
    assert int(one.y.where(~one.y_mask).sum()) == sum(v for v in want["y"] if v is not None)
    samples = flows.input_samples(run.outputs.return_values.y)
    assert [s["xs"] for s in samples] == list(range(N))
    assert [s["y_mask"] for s in samples] == [fails(x) for x in range(N)]


# -- (b) resume --------------------------------------------------------------------------


def test_b_interrupted_legacy_run_resumes_computing_only_what_is_missing(
    legacy_store: Path, calls, caplog: pytest.LogCaptureFixture
) -> None:
    run = flows.load_run(legacy_flow.INTERRUPTED, store=legacy_store)
    assert run.status == "interrupted"  # its driver was SIGKILLed mid-map
    y = run.step("square").outputs.return_values.y
    had = np.flatnonzero(~y.mask).tolist()
    assert 0 < len(had) < N - 2  # square was half done (and had failed for 3, not 8)
    assert [y[x] for x in had] == [x * x for x in had]
    assert "a" not in run.outputs.return_values and "total" not in run.outputs.return_values

    resumed = run.resume().wait(TIMEOUT)
    assert (resumed.status, resumed.exit_code) == ("failed", 450), flows.report.log(resumed)
    check_values(resumed, N)
    check_values(flows.load_run(legacy_flow.INTERRUPTED, store=legacy_store), N)
    made = calls()
    assert "make_xs" not in made
    assert made["square"] == {x: 1 for x in range(N) if x not in had}
    assert made["shift_and_name"] == {x: 1 for x in range(N) if not fails(x)}
    assert made["total"] == {0: 1}
    assert f"{len(had)} of {N} elements are already in the store (resumed)" in (
        flows.report.log(resumed.step("square"))
    )
    with caplog.at_level(logging.WARNING):
        again = flows.load_run(legacy_flow.INTERRUPTED, store=legacy_store).resume()
    assert "nothing to resume" in caplog.text and again.exit_code == 450


# -- (c) restart and reuse ---------------------------------------------------------------


def test_c_restart_of_a_legacy_run_reuses_every_element_there(legacy_store: Path, calls) -> None:
    old = flows.load_run(legacy_flow.FINISHED, store=legacy_store)
    new = flows.submit(old.get_builder_restart(), store=legacy_store).wait(TIMEOUT)
    assert (new.status, new.exit_code) == ("failed", 450), flows.report.log(new)
    assert new.id != old.id
    check_values(new, N)
    assert calls() == {"square": {3: 1, 8: 1}}  # only the failed elements ran again
    reused = {
        "make_xs": "reused 1 of 1 elements",
        "square": "reused 10 of 12 elements",
        "shift_and_name": "reused 10 of 10 elements",
        "total": "reused 1 of 1 elements",
    }
    for name, line in reused.items():
        assert f"{line} from run {old.id}" in flows.report.log(new.step(name)), name
    check_values(flows.load_run(old.id, store=legacy_store), N)  # the old run is untouched


def test_c_restart_with_more_inputs_computes_only_the_new_elements(
    legacy_store: Path, calls
) -> None:
    old = flows.load_run(legacy_flow.FINISHED, store=legacy_store)
    builder = old.get_builder_restart()
    builder.kwargs.n = 15
    new = flows.submit(builder, store=legacy_store).wait(TIMEOUT)
    assert new.exit_code == 450, flows.report.log(new)
    check_values(new, 15)
    assert calls() == {
        "make_xs": {15: 1},
        "square": {3: 1, 8: 1, 12: 1, 13: 1, 14: 1},  # the failed ones and the new ones
        "shift_and_name": {12: 1, 14: 1},  # 13 failed in square
        "total": {0: 1},
    }
    assert f"reused 10 of 15 elements from run {old.id}" in flows.report.log(new.step("square"))
    assert f"reused 10 of 12 elements from run {old.id}" in flows.report.log(
        new.step("shift_and_name")
    )
