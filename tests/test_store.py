"""The file-based store: atomic writes, element files, FileBasedObjectArray."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from parsl_flows.store import (
    FileBasedObjectArray,
    default_store,
    element_path,
    load_pickle,
    present_indices,
    read_json,
    write_json,
    write_pickle,
)


def test_default_store_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PARSL_FLOWS_STORE", raising=False)
    assert default_store() == tmp_path / "parsl-flows-store"
    monkeypatch.setenv("PARSL_FLOWS_STORE", str(tmp_path / "env"))
    assert default_store() == tmp_path / "env"
    assert default_store(tmp_path / "arg") == tmp_path / "arg"


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    write_pickle(tmp_path / "a" / "x.pickle", {"a": 1})
    write_json(tmp_path / "a" / "s.json", {"n": np.int64(3)})
    assert sorted(os.listdir(tmp_path / "a")) == ["s.json", "x.pickle"]
    assert load_pickle(tmp_path / "a" / "x.pickle") == {"a": 1}
    assert read_json(tmp_path / "a" / "s.json") == {"n": 3}


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.pickle"
    write_pickle(target, 1)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        write_pickle(target, Unpicklable())
    assert load_pickle(target) == 1
    assert os.listdir(tmp_path) == ["x.pickle"]


def test_present_indices_ignores_temporary_and_foreign_files(tmp_path: Path) -> None:
    for n in (4, 0, 11):
        write_pickle(element_path(tmp_path, n), n)
    (tmp_path / ".__5__.pickle.123.abc.tmp").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "x__6__.pickle").write_text("x")
    (tmp_path / "__7__.pickle.bak").write_text("x")
    assert present_indices(tmp_path).tolist() == [0, 4, 11]
    assert present_indices(tmp_path / "missing").tolist() == []
    # The listing is parsed as lines: a name holding a newline must not pass for two files.
    (tmp_path / "__8__.pickle\n__9__.pickle").write_text("x")
    assert present_indices(tmp_path).tolist() == [0, 4, 11]


@pytest.fixture
def array(tmp_path: Path) -> FileBasedObjectArray:
    shape = (3, 4)
    for n in range(12):
        if n % 5 != 0:  # 0, 5, 10 missing
            write_pickle(element_path(tmp_path, n), float(n))
    return FileBasedObjectArray(tmp_path, shape)


def test_mask_and_elements(array: FileBasedObjectArray) -> None:
    expected = np.array([n % 5 == 0 for n in range(12)]).reshape(3, 4)
    np.testing.assert_array_equal(array.mask, expected)
    assert array[0, 1] == 1.0
    assert array[0, 0] is np.ma.masked
    assert array[-1, -1] == 11.0
    with pytest.raises(IndexError):
        array[3, 0]


def test_to_array_is_numeric_and_masked(array: FileBasedObjectArray) -> None:
    arr = array.to_array()
    assert arr.dtype == np.float64
    assert arr.mask.sum() == 3
    assert np.mean(arr) == pytest.approx(np.mean([n for n in range(12) if n % 5]))


def test_slicing_gives_masked_sub_arrays(array: FileBasedObjectArray) -> None:
    row = array[1]
    assert row.mask.tolist() == [False, True, False, False]
    assert row.compressed().tolist() == [4.0, 6.0, 7.0]
    col = array[:, 2]
    assert col.compressed().tolist() == [2.0, 6.0]
    assert list(array)[2].compressed().tolist() == [8.0, 9.0, 11.0]


def test_objects_stay_objects(tmp_path: Path) -> None:
    write_pickle(element_path(tmp_path, 0), ("a", 1))
    arr = FileBasedObjectArray(tmp_path, (2,)).to_array()
    assert arr.dtype == object
    assert arr[0] == ("a", 1) and arr.mask.tolist() == [False, True]


def test_pickles_as_a_reference_to_its_folder(array: FileBasedObjectArray) -> None:
    import cloudpickle

    again = cloudpickle.loads(cloudpickle.dumps(array))
    assert again.folder == array.folder and again.shape == array.shape


def test_a_folder_on_a_local_disk_is_not_refreshed(tmp_path: Path) -> None:
    # Only a shared filesystem's client may show a stale listing; a local folder would
    # only get a new time stamp (and a map's numbers file would wait for it to settle).
    from parsl_flows.files import filesystem_type, refresh_folder

    assert filesystem_type(tmp_path) is not None
    before = os.stat(tmp_path).st_mtime_ns
    refresh_folder(tmp_path)
    assert os.stat(tmp_path).st_mtime_ns == before and not os.listdir(tmp_path)
