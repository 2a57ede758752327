"""Results written per task (``element_folders``, ``engine/task_writer``), on real files and
the local HighThroughputExecutor: a file per task and output, an index the driver keeps,
a journal that saves a dying worker's finished elements, and readers that need neither
the index nor this library.
"""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import file_of, stored_elements

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.element_folders import INDEX_NAME, locate, read_task_file
from parsl_flows.engine.task_writer import TaskWriter, journal_path, read_journal
from parsl_flows.errors import InfrastructureError
from parsl_flows.numbers_file import forget_numbers
from parsl_flows.store import dumps
from parsl_flows.workflow import build, map_, new_workflow


@step(returns=("y", "label"))
def counted(x: int, calls: str) -> tuple[int, str]:
    Path(calls, f"{x}-{uuid.uuid4().hex[:8]}").touch()
    return 2 * x, f"<{x}>"


def calls_of(calls: Path) -> list[int]:
    return sorted(int(name.split("-")[0]) for name in os.listdir(calls))


def test_a_map_writes_a_file_per_task_and_output_and_an_index(local_env, store, tmp_path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    flow = new_workflow("few").then(map_(counted, "x[i] -> y[i], label[i]"))
    n = 400
    r = flows.run(build(flow.on(local_env), x=list(range(n)), calls=str(calls)), store=store)
    assert r.exit_code == 0, r.log()
    s = r.step("counted")
    for out in ("y", "label"):
        names = os.listdir(s.path / "return_values" / out)
        tasks = [name for name in names if name.startswith("task-")]
        assert set(names) - set(tasks) == {INDEX_NAME}
        assert len(tasks) < n / 10, len(tasks)  # cheap elements: many a task
    # Element n by hand, as the README says: numpy and pickle, no parsl_flows.
    folder = s.path / "return_values" / "label"
    index = np.load(folder / INDEX_NAME)
    assert bool(index["complete"])
    for k in (0, 123, n - 1):
        f, slot = index["file_number"][k], index["slot"][k]
        with open(folder / str(index["names"][f]), "rb") as fh:
            assert pickle.loads(pickle.load(fh)["pickles"][slot]) == f"<{k}>"
    assert s.outputs.return_values.label.to_array().tolist() == [f"<{k}>" for k in range(n)]
    assert not (s.path / "journal").exists() or not os.listdir(s.path / "journal")


def test_readers_need_no_listing_when_the_index_is_complete(local_env, store, monkeypatch) -> None:
    flow = new_workflow("nolist").then(map_(counted, "x[i] -> y[i], label[i]"))
    r = flows.run(build(flow.on(local_env), x=list(range(50)), calls=str(store)), store=store)
    loaded = flows.load_run(r.path)
    real = os.listdir

    def no_listing_of_elements(path: object = ".") -> list[str]:
        assert "return_values" not in str(path), f"listed {path}"
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "listdir", no_listing_of_elements)
    label = loaded.step("counted").outputs.return_values.label
    assert label[17] == "<17>" and not label.mask.any()


def test_without_the_index_readers_list_the_task_files(local_env, store) -> None:
    flow = new_workflow("noindex").then(map_(counted, "x[i] -> y[i], label[i]"))
    r = flows.run(build(flow.on(local_env), x=list(range(30)), calls=str(store)), store=store)
    s = r.step("counted")
    for out in ("y", "label"):
        (s.path / "return_values" / out / INDEX_NAME).unlink()
        forget_numbers(s.path / "return_values" / out)
    fresh = flows.load_run(r.path).step("counted").outputs.return_values
    assert fresh.y.to_array().tolist() == [2 * x for x in range(30)]
    assert fresh.label[29] == "<29>"


@step(returns="y")
def fails_first_time(x: int, marks: str) -> int:
    mark = Path(marks, str(x))
    if x % 4 == 1 and not mark.exists():
        mark.touch()
        raise ValueError(f"first try of {x}")
    return 10 * x


def test_an_element_that_failed_then_succeeded_is_not_failed_even_without_the_index(
    local_env, store, tmp_path
) -> None:
    flow = new_workflow("retry").then(map_(fails_first_time, "x[i] -> y[i]", max_restarts=2))
    r = flows.run(build(flow.on(local_env), x=list(range(12)), marks=str(tmp_path)), store=store)
    assert r.exit_code == 0, r.log()
    s = r.called[0]
    assert s.attempts[0]["failed"] == 3 and s.attempts[1]["succeeded"] == 3
    assert not hasattr(s.outputs, "exception")  # every element succeeded in the end
    assert locate(s.path / "exception").present().tolist() == []  # the index forgot them
    (s.path / "exception" / INDEX_NAME).unlink()  # a driver killed before it wrote it
    assert locate(s.path / "exception").present().tolist() == []  # a value wins
    assert s.outputs.return_values.y.to_array().tolist() == [10 * x for x in range(12)]


@step(returns="y")
def dies_at_seven(x: int, calls: str) -> int:
    Path(calls, f"{x}-{uuid.uuid4().hex[:8]}").touch()
    if x == 7 and len([n for n in os.listdir(calls) if n.startswith("7-")]) == 1:
        os._exit(1)  # the worker really dies, once, mid-task
    return x + 100


def test_a_worker_that_dies_mid_task_costs_its_element_and_keeps_what_finished(
    local_env, store, tmp_path
) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    flow = new_workflow("dies").then(map_(dies_at_seven, "x[i] -> y[i]", chunksize=10))
    r = flows.run(build(flow.on(local_env), x=list(range(20)), calls=str(calls)), store=store)
    s = r.called[0]
    assert s.exit_code == 0, flows.report.log(s)  # the suspect ran again, alone, and passed
    y = s.outputs.return_values.y
    assert y.to_array().tolist() == [x + 100 for x in range(20)]
    ran = calls_of(calls)
    # 0..6 ran before the worker died in the same task: their journal kept them.
    assert [ran.count(x) for x in range(7)] == [1] * 7, ran
    assert ran.count(7) == 2  # the suspect: once when it killed its worker, once alone
    assert [ran.count(x) for x in range(8, 20)] == [1] * 12  # never started, then ran once
    assert s.attempts[0]["infrastructure"] == 1
    salvaged = [n for n in os.listdir(y.folder) if n.endswith("-salvaged.pickle")]
    assert len(salvaged) == 1 and read_task_file(y.folder / salvaged[0])[0].tolist() == list(
        range(7)
    )
    assert not os.listdir(s.path / "journal")  # read, then removed


@step(returns="y")
def dies_at_two(x: int) -> int:
    if x == 2:
        os._exit(1)
    return x


def test_an_element_that_always_kills_its_worker_is_its_only_loss(local_env, store) -> None:
    flow = new_workflow("killer").then(map_(dies_at_two, "x[i] -> y[i]", chunksize=5))
    r = flows.run(build(flow.on(local_env), x=list(range(10))), store=store)
    s = r.called[0]
    assert s.exit_code == 402
    assert s.outputs.return_values.y.mask.tolist() == [x == 2 for x in range(10)]
    exc = s.outputs.exception[2]
    assert isinstance(exc, InfrastructureError) and "lost" in exc.cause
    assert stored_elements(s.path / "exception") == [2]


def test_a_damaged_task_file_is_named_and_its_elements_computed_again(
    local_env, store, tmp_path
) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    flow = new_workflow("damaged").then(map_(counted, "x[i] -> y[i], label[i]", chunksize=4))
    run = flows.run(build(flow.on(local_env), x=list(range(12)), calls=str(calls)), store=store)
    s = run.called[0]
    damaged = file_of(s.path / "return_values" / "label", 5)
    held = read_task_file(damaged)[0].tolist()
    damaged.write_bytes(damaged.read_bytes()[:20])  # really truncated
    with pytest.raises(flows.store.DamagedFileError, match=damaged.name):
        s.outputs.return_values.label[5]
    # A restart reuses every element but those, and names the file and its elements.
    again = flows.run(run.get_builder_restart(), store=store)
    t = again.called[0]
    assert t.record.n_reused == 12 - len(held)
    assert damaged.name in flows.report.log(t) and "damaged" in flows.report.log(t)
    assert t.outputs.return_values.label.to_array().tolist() == [f"<{x}>" for x in range(12)]
    assert sorted(set(calls_of(calls)) - set(range(12))) == []
    assert [calls_of(calls).count(x) for x in held] == [2] * len(held)


def test_a_restart_reuses_whole_task_files_by_links(local_env, store, tmp_path) -> None:
    flow = new_workflow("reuse").then(map_(counted, "x[i] -> y[i], label[i]"))
    first = flows.run(
        build(flow.on(local_env), x=list(range(40)), calls=str(tmp_path)), store=store
    )
    builder = first.get_builder_restart()
    builder.kwargs.x = list(range(45))
    again = flows.run(builder, store=store)
    t = again.called[0]
    assert t.record.n_reused == 40
    labels = t.path / "return_values" / "label"
    reused = [n for n in os.listdir(labels) if n.startswith("reused-")]
    origin = first.called[0].path / "return_values" / "label"
    assert 1 <= len(reused) == len([n for n in os.listdir(origin) if n.startswith("task-")])
    assert os.stat(labels / reused[0]).st_nlink == 2  # a hard link, not a copy
    import shutil

    shutil.rmtree(first.path)  # the new run stands on its own
    fresh = flows.load_run(again.path).called[0].outputs.return_values
    assert fresh.label.to_array().tolist() == [f"<{x}>" for x in range(45)]


def test_a_journal_cut_mid_record_gives_the_records_before_the_cut(tmp_path) -> None:
    step_dir = tmp_path / "step"
    writer = TaskWriter(str(step_dir), "t-1", ("y",), 3)
    writer.add_ok(4, [dumps(40)])
    writer.add_failed(5, 401, ValueError("five"), True)
    writer.add_ok(6, [dumps(60)])
    path = journal_path(str(step_dir), "t-1")
    whole = read_journal(path)
    assert [(r[0], r[1]) for r in whole] == [(4, 0), (5, 401), (6, 0)]
    size = os.path.getsize(path)
    os.truncate(path, size - 3)  # the worker died in the middle of a write
    assert [r[0] for r in read_journal(path)] == [4, 5]
    assert writer.finish() == ""  # a task that ends: its files, and no journal
    assert not os.path.exists(path)
    assert read_task_file(step_dir / "return_values" / "y" / "task-t-1.pickle")[0].tolist() == [
        4,
        6,
    ]
