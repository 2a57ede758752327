"""Numbers sent back with a task's codes (``TaskResult.values``, ``engine/numbers_back.py``).

A map's ``dataset.nc`` is written from the values its workers sent back, when every
element gave a plain number; anything else, and its files are read as before.  The
worker is run here on a real step of a real run (thread pool), on real files.
"""

from __future__ import annotations

import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import parsl_flows as flows
from parsl_flows.dataset.reading import _read_output
from parsl_flows.engine.numbers_back import NumbersBack
from parsl_flows.engine.task_outputs import number_arrays
from parsl_flows.engine.worker import (
    OK,
    USER_ERROR,
    Source,
    TaskResult,
    TaskSpec,
    run_task,
)
from parsl_flows.files import dumps, write_element
from parsl_flows.workflow import build, map_, new_workflow


@flows.step(returns=("half", "label", "maybe"))
def three(x: int) -> tuple[float, dict[str, int], object]:
    if x == 3:
        raise ValueError("three fails")
    return x / 2, {"x": x}, (x if x < 4 else "four or more")


@pytest.fixture
def step_of_a_run(tmp_path: Path, thread_env) -> tuple[Path, Path]:
    """The step directory of a finished map of ``three`` over 0..5, and its run's."""
    flow = new_workflow("sent").then(map_(three, "x[i] -> half[i], label[i], maybe[i]"))
    run = flows.run(build(flow.on(thread_env), x=list(range(6))), store=tmp_path / "store")
    step_dir = run.step("three").path
    shutil.rmtree(step_dir / "return_values")
    return step_dir, run.path


def task(step_dir: Path, run_dir: Path, indices: tuple[int, ...]) -> TaskSpec:
    x = Source("value", str(run_dir / "inputs" / "x.pickle"))
    mapspec = "x[i] -> half[i], label[i], maybe[i]"
    return TaskSpec(str(step_dir / "step.pickle"), str(step_dir), indices, (6,), {"x": x}, mapspec)


def test_a_worker_sends_the_numbers_of_the_elements_that_succeeded(step_of_a_run) -> None:
    tr = run_task(task(*step_of_a_run, (0, 1, 2, 3)))
    assert tr.codes.tolist() == [OK, OK, OK, USER_ERROR]
    assert tr.values["half"].tolist() == [0.0, 0.5, 1.0]  # element 3 failed: not there
    assert tr.values["half"].dtype == np.float64
    assert tr.values["maybe"].dtype == np.int64  # ints so far
    assert "label" not in tr.values  # dicts: their files will be read


def test_one_value_that_is_not_a_number_leaves_the_output_out(step_of_a_run) -> None:
    tr = run_task(task(*step_of_a_run, (2, 4, 5)))
    assert tr.values["half"].tolist() == [1.0, 2.0, 2.5]
    assert "maybe" not in tr.values  # "four or more"


def test_no_element_succeeded_sends_nothing(step_of_a_run) -> None:
    tr = run_task(task(*step_of_a_run, (3,)))
    assert tr.codes.tolist() == [USER_ERROR] and tr.values == {}


def result(indices: list[int], codes: list[int], **values: list[object]) -> TaskResult:
    arrays = {out: np.asarray(v) for out, v in values.items()}
    return TaskResult(np.array(indices), np.array(codes, dtype=np.int16), values=arrays)


def test_the_driver_knows_an_output_only_if_every_task_sent_it() -> None:
    back = NumbersBack(["a", "b"])
    back.add(result([4, 5, 6], [OK, USER_ERROR, OK], a=[1, 2], b=[0.5, 1.5]))
    back.add(result([0, 1], [OK, OK], a=[2.5, 3.0]))  # b: not plain numbers here
    back.add(result([9], [USER_ERROR]))  # nothing succeeded: says nothing
    known = back.known()
    assert list(known) == ["a"]
    indices, values = known["a"]
    assert indices.tolist() == [4, 6, 0, 1]
    assert values.tolist() == [1.0, 2.0, 2.5, 3.0] and values.dtype == np.float64


def test_a_task_read_from_the_store_makes_its_outputs_unknown() -> None:
    back = NumbersBack(["a"])
    back.add(result([0], [OK], a=[1.0]))
    back.add(TaskResult.of([(1, OK, "")]))  # its worker died: no values came back
    assert back.known() == {}


NUMBERS = st.sampled_from(
    [True, False, 3, -7, 2.5, np.float32(1.5), np.float64(-0.25), np.int32(7), np.int64(9), 1 + 2j]
)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(NUMBERS, min_size=1, max_size=12), cuts=st.sets(st.integers(1, 11)))
def test_numbers_sent_back_give_the_dataset_that_reading_the_files_gives(
    tmp_path_factory: pytest.TempPathFactory, values: list[object], cuts: set[int]
) -> None:
    # The dtype numpy gives the values task by task, then joined, is the dtype it gives
    # all the values read from their files at once: bool, int, float or complex alike.
    folder = tmp_path_factory.mktemp("out")
    for n, v in enumerate(values):
        write_element(str(folder), n, dumps(v))
    back = NumbersBack(["out"])
    bounds = [0, *sorted(c for c in cuts if c < len(values)), len(values)]
    for lo, hi in pairwise(bounds):
        sent = number_arrays({"out": list(values[lo:hi])})
        back.add(TaskResult(np.arange(lo, hi), np.zeros(hi - lo, dtype=np.int16), values=sent))
    shape = (len(values) + 1,)  # one element more, without a file: masked
    from_files = _read_output(folder, shape, None)
    sent = _read_output(folder, shape, None, back.known()["out"])
    assert sent.data.dtype == from_files.data.dtype
    np.testing.assert_array_equal(sent.data, from_files.data)
    np.testing.assert_array_equal(sent.mask, from_files.mask)


def test_a_failed_element_leaves_no_reference_cycle(step_of_a_run) -> None:
    # A failure kept in a local of the frame that its traceback holds made a cycle: a map
    # where many elements fail left each of them to the garbage collector.
    import gc

    run_task(task(*step_of_a_run, (3,)))  # what loads once (the step, its inputs)
    gc.collect()
    gc.disable()
    try:
        tr = run_task(task(*step_of_a_run, (3,)))
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert tr.codes.tolist() == [USER_ERROR]
    assert unreachable == 0
