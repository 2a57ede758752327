"""A map output's numbers in one file (``parsl_flows/numbers_file.py``), on real files.

Readers take from it what it holds and read the rest from the element files; a folder
that changed since it was written, or a damaged numbers file, sends them back to the
files.  End to end, on the local HighThroughputExecutor: a map's numbers file is written
before the next map starts, and that map's elements get exactly what the files hold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import parsl_flows as flows
from parsl_flows.numbers_file import (
    forget_numbers,
    kind_of,
    numbers_path,
    read_numbers,
    write_numbers,
)
from parsl_flows.store import FileBasedObjectArray, dumps, write_element
from parsl_flows.workflow import build, map_, new_workflow

VALUES: dict[str, list[Any]] = {
    "float": [0.5, -1.25, float("inf"), 3.0],
    "int": [1, -2, 2**40, 0],
    "bool": [True, False, True, True],
    "complex": [1 + 2j, 0j, -1.5j, 3 + 0j],
    "numpy.float32": [np.float32(v) for v in (0.5, 1.5, -2.0, 7.25)],
    "numpy.float64": [np.float64(v) for v in (0.1, 0.2, 0.3, 0.4)],
    "numpy.int32": [np.int32(v) for v in (1, 2, 3, 4)],
    "numpy.bool": [np.bool_(v) for v in (True, False, False, True)],
}


def an_output(tmp_path: Path, values: list[Any]) -> Path:
    """A map output folder as a run lays it out, one file per element."""
    folder = tmp_path / "steps" / "00-f" / "return_values" / "y"
    folder.mkdir(parents=True)
    for n, v in enumerate(values):
        write_element(str(folder), n, dumps(v))
    return folder


def keep(folder: Path, values: list[Any], indices: list[int] | None = None) -> None:
    idx = list(range(len(values))) if indices is None else indices
    write_numbers(folder, np.array(idx), np.asarray([values[n] for n in idx]), kind_of(values[0]))


def elements(arr: np.ma.MaskedArray) -> tuple[list[tuple[str, Any]], Any]:
    return [(type(v).__name__, v) for v in arr.data.ravel().tolist()], arr.mask.tolist()


@pytest.mark.parametrize("name", list(VALUES))
def test_readers_get_from_it_exactly_what_the_files_hold(tmp_path: Path, name: str) -> None:
    values = VALUES[name]
    folder = an_output(tmp_path, values)
    from_files = FileBasedObjectArray(folder, (2, 2))
    expected = (from_files.to_array(), from_files[1], from_files[:, 0])
    keep(folder, values)
    assert numbers_path(folder).exists()
    known = read_numbers(folder, 4)
    assert known is not None and known.kind == kind_of(values[0])
    got = [type(v) for v in known.elements(np.arange(4))]
    assert got == [type(v) for v in values]
    with_numbers = FileBasedObjectArray(folder, (2, 2))
    for want, have in zip(
        expected, (with_numbers.to_array(), with_numbers[1], with_numbers[:, 0]), strict=True
    ):
        assert have.dtype == want.dtype
        assert elements(have) == elements(want)
        assert [type(v) for v in have.data.ravel()] == [type(v) for v in want.data.ravel()]


@pytest.mark.parametrize("name", list(VALUES))
def test_an_element_missing_reads_the_same_with_the_numbers(tmp_path: Path, name: str) -> None:
    # Numbers of a numeric kind become the array at once, not an object per element.
    values = VALUES[name]
    folder = an_output(tmp_path, values)
    os.unlink(folder / "__2__.pickle")
    expected = FileBasedObjectArray(folder, (2, 2)).to_array()
    keep(folder, values, [0, 1, 3])
    have = FileBasedObjectArray(folder, (2, 2)).to_array()
    assert read_numbers(folder, 4) is not None
    assert have.dtype == expected.dtype and have.mask.tolist() == [[False, False], [True, False]]
    assert elements(have) == elements(expected)
    assert [type(v) for v in have.data.ravel()] == [type(v) for v in expected.data.ravel()]


def test_a_folder_changed_since_makes_it_stale(tmp_path: Path) -> None:
    folder = an_output(tmp_path, [1.0, 2.0, 3.0, 4.0])
    keep(folder, [1.0, 2.0, 3.0, 4.0])
    arr = FileBasedObjectArray(folder, (4,))
    assert arr.to_array().tolist() == [1.0, 2.0, 3.0, 4.0]
    write_element(str(folder), 2, dumps(30.0))  # replaced, as the store does: a rename
    assert read_numbers(folder, 4) is None
    assert arr.to_array().tolist() == [1.0, 2.0, 30.0, 4.0]
    keep(folder, [1.0, 2.0, 30.0, 4.0])
    (folder / "__1__.pickle").unlink()  # removed
    assert read_numbers(folder, 4) is None
    assert arr.to_array().tolist() == [1.0, None, 30.0, 4.0]


def test_a_file_that_covers_the_folder_spares_readers_the_listing(
    tmp_path: Path, monkeypatch
) -> None:
    # A map knows from its tasks' codes which elements have files; when they are exactly
    # the elements the numbers file holds, readers take the elements present from the
    # file (listing a million files takes a second).
    import parsl_flows.store as store_module

    values = [1.0, 2.0, 3.0, 4.0]
    folder = an_output(tmp_path, values)
    (folder / "__2__.pickle").unlink()
    write_numbers(folder, np.array([0, 1, 3]), np.array([1.0, 2.0, 4.0]), "builtins.float")
    assert not read_numbers(folder, 4).complete  # not said: readers list
    write_numbers(
        folder, np.array([0, 1, 3]), np.array([1.0, 2.0, 4.0]), "builtins.float", complete=True
    )
    assert read_numbers(folder, 4).complete
    listings: list[Path] = []
    real = store_module.locate
    monkeypatch.setattr(store_module, "locate", lambda f, *a: listings.append(f) or real(f, *a))
    arr = FileBasedObjectArray(folder, (2, 2))
    assert arr.to_array().tolist() == [[1.0, 2.0], [None, 4.0]] and listings == []
    write_element(str(folder), 2, dumps(30.0))  # the folder changes: files are the truth
    assert arr.to_array().tolist() == [[1.0, 2.0], [30.0, 4.0]] and listings == [folder]


def test_elements_it_does_not_hold_come_from_their_files(tmp_path: Path) -> None:
    values = [10, 20, 30, 40, 50, 60]
    folder = an_output(tmp_path, values)
    write_numbers(folder, np.array([0, 2, 4]), np.array([10, 30, 50]), "builtins.int")
    arr = FileBasedObjectArray(folder, (2, 3))
    assert arr.to_array().tolist() == [[10, 20, 30], [40, 50, 60]]
    assert arr[1, :].tolist() == [40, 50, 60]


def test_a_damaged_or_forgotten_numbers_file_leaves_the_files(tmp_path: Path) -> None:
    folder = an_output(tmp_path, [1.5, 2.5])
    keep(folder, [1.5, 2.5])
    path = numbers_path(folder)
    with open(path, "r+b") as f:  # really truncated
        f.truncate(os.path.getsize(path) // 2)
    assert read_numbers(folder, 2) is None
    assert FileBasedObjectArray(folder, (2,)).to_array().tolist() == [1.5, 2.5]
    forget_numbers(folder)
    assert not path.exists()
    forget_numbers(folder)  # nothing to forget: fine


def test_only_the_kinds_it_can_give_back_are_written(tmp_path: Path) -> None:
    folder = an_output(tmp_path, [1.0])
    with pytest.raises(ValueError, match="holds only"):
        write_numbers(folder, np.array([0]), np.array(["a"]), "builtins.str")


# -- end to end, on the local HighThroughputExecutor -------------------------------------


@flows.step(returns="e")
def product(a: float, b: float) -> float:
    if a < 0:
        raise ValueError("a negative sample")
    return a * b


@flows.step(returns=("c", "kind"))
def plus_one(e: Any) -> tuple[Any, str]:
    return np.float32(e + 1), type(e).__name__


@flows.step(returns="mixed")
def int_or_float(e: Any) -> Any:
    return int(e) if e > 1 else float(e)


@flows.step(returns="total")
def total(c: FileBasedObjectArray) -> float:
    return float(c.to_array().sum())


def test_a_map_leaves_its_numbers_for_the_next_steps(local_env, store: Path) -> None:
    flow = (
        new_workflow("numbers")
        .then(map_(product, "a[i], b[j] -> e[i, j]"))
        .then(map_(plus_one, "e[i, j] -> c[i, j], kind[i, j]"))
        .then(map_(int_or_float, "e[i, j] -> mixed[i, j]"))
        .then(total)
    )
    a, b = [-1.0, 0.5, 1.0, 2.0], [1.0, 3.0]
    run = flows.run(build(flow.on(local_env), a=a, b=b), store=store)
    assert run.exit_code != 0  # a[0] fails: 2 elements masked
    steps = run.path / "steps"
    e_folder = steps / "00-product" / "return_values" / "e"
    known = read_numbers(e_folder, 8)
    assert known is not None and known.kind == "builtins.float"
    assert sorted(known.indices.tolist()) == [2, 3, 4, 5, 6, 7]  # the failed ones are not
    assert known.complete  # the map's listing found those files and no other
    # The second map read e from it, and got what the files hold: Python floats.
    kinds = run.step("plus_one").output("kind").fetch_value()
    assert kinds.mask[0].all() and set(kinds.compressed().tolist()) == {"float"}
    c_known = read_numbers(steps / "01-plus_one" / "return_values" / "c", 8)
    assert c_known is not None and c_known.kind == "numpy.float32"
    # An output of two types (int and float) has no numbers file, and reads as before.
    assert not numbers_path(steps / "02-int_or_float" / "return_values" / "mixed").exists()
    assert run.step("int_or_float").output("mixed").fetch_value().compressed().tolist() == [
        0.5,
        1,
        1.0,
        3,
        2,
        6,
    ]
    expected = sum(np.float32(x * y + 1) for x in a[1:] for y in b)
    assert run.step("total").output("total").fetch_value() == pytest.approx(float(expected))


# -- outputs that are not plain numbers: read from their task files --------------------


@flows.step(returns="label")
def label(a: float, b: float) -> str:
    return f"{a}x{b}"


@flows.step(returns="length")
def length(label: str) -> int:
    assert type(label) is str
    return len(label)


def test_a_map_of_objects_is_read_from_its_task_files(local_env, store: Path) -> None:
    flow = (
        new_workflow("objects")
        .then(map_(label, "a[i], b[j] -> label[i, j]"))
        .then(map_(length, "label[i, j] -> length[i, j]"))
    )
    a, b = [1.0, 22.0, 333.0], [4.0, 55.0]
    run = flows.run(build(flow.on(local_env), a=a, b=b), store=store)
    assert run.exit_code == 0, run.log()
    labels = run.step("label").outputs.return_values.label
    assert read_numbers(labels.folder, 6) is None  # strings: no numbers file
    names = sorted(os.listdir(labels.folder))
    assert "index.npz" in names and all(n.startswith("task-") for n in names if n != "index.npz")
    assert len(names) - 1 < 6  # a file per task, not per element
    expected = [[f"{x}x{y}" for y in b] for x in a]
    assert labels.to_array().tolist() == expected
    lengths = run.step("length").outputs.return_values.length.to_array()
    assert lengths.tolist() == [[len(s) for s in row] for row in expected]


def test_a_map_claims_only_the_files_its_tasks_wrote(tmp_path: Path) -> None:
    # Elements already there from an earlier run (resume, reuse) are files the map's own
    # numbers do not hold: the numbers file must not say it covers the folder then.
    from parsl_flows.engine.inputs import MappedInputs

    folder = an_output(tmp_path, [1.0, 2.0, 3.0])
    inputs = MappedInputs()
    kept, succeeded = np.array([0]), np.array([1, 2])
    noted = inputs.note_present(folder.parent.parent, ["y"], 3, kept, succeeded)
    assert noted["y"].tolist() == [True, True, True]
    assert inputs.present(folder, 3) is noted["y"]  # no listing: what the map's end noted
    assert inputs.holds_every(folder, np.array([2, 0, 1]))
    assert not inputs.holds_every(folder, np.array([1, 2]))  # 0 came from before
    assert not inputs.holds_every(tmp_path / "never-noted", np.array([0]))
    write_numbers(folder, np.array([1, 2]), np.array([2.0, 3.0]), "builtins.float")
    assert not read_numbers(folder, 3).complete
    assert FileBasedObjectArray(folder, (3,)).to_array().tolist() == [1.0, 2.0, 3.0]
