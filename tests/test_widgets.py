"""The notebook's live progress: rows of ipywidgets bars, and ``report.watch`` in a kernel.

The rows are built here, outside a kernel (ipywidgets then has no front end to talk to,
and keeps its state all the same); ``watch`` runs in a real kernel, driven by nbclient.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from parsl_flows.status import StepStatus
from parsl_flows.widgets import StepBars, StepRow


def a_map(**counts: int) -> StepStatus:
    state = "finished" if "exit_code" in counts else "running"
    return StepStatus("square", 0, "map", ["y"], state=state, shape=[10], **counts)


def test_a_map_row_shows_counts_rate_and_time_left() -> None:
    row = StepRow("square")
    row.update(a_map(n_submitted=10), "0/10 done, 10 remaining", now=100.0)
    assert (row.bar.value, row.bar.max, row.bar.bar_style) == (0, 10, "info")
    assert row.detail.value == "running · 0/10 done, 10 remaining"  # no rate from one look

    row.update(a_map(n_submitted=10, n_done=4, n_failed=1), "4/10 done", now=102.5)
    assert row.bar.value == 5  # failed elements have ended too
    assert row.detail.value == "running · 4/10 done · 2.0/s · about 2 s left"

    row.update(a_map(n_submitted=10, n_done=8, n_failed=2, exit_code=401), "8/10", now=104.0)
    assert (row.bar.value, row.bar.bar_style) == (10, "warning")  # partial
    assert row.detail.value == "partial · exit 401 · 8/10"  # no pace once it ended


def test_reused_elements_are_not_counted_as_speed() -> None:
    row = StepRow("square")
    row.update(a_map(n_submitted=10, n_reused=90, n_done=90), "", now=0.0)
    row.update(a_map(n_submitted=10, n_reused=90, n_done=94), "", now=2.0)
    assert (row.bar.value, row.bar.max) == (94, 100)
    assert "2.0/s · about 3 s left" in row.detail.value


def test_a_plain_step_fills_its_bar_when_it_ends() -> None:
    row = StepRow("make_mesh")
    call = StepStatus("make_mesh", 1, "call", ["mesh"], state="running")
    row.update(call, "", now=0.0)
    assert (row.bar.value, row.bar.max) == (0, 1)
    call.state, call.exit_code = "failed", 401
    row.update(call, "ValueError: <no mesh>", now=1.0)
    assert (row.bar.value, row.bar.bar_style) == (1, "danger")
    assert row.detail.value == "failed · exit 401 · ValueError: &lt;no mesh&gt;"


def test_bars_end_as_the_final_table_with_fallbacks_for_other_front_ends() -> None:
    bars = StepBars("<p>total</p>")
    bars.update(a_map(n_submitted=10), "", now=0.0)
    bars.update(StepStatus("mean", 1, "call", ["m"]), "", now=0.0)
    assert list(bars.rows) == ["square", "mean"]
    assert len(bars.widget.children) == 3  # the title and a row per step
    bar = bars.rows["square"].bar

    bars.finish("<table>final</table>")
    (table,) = bars.widget.children
    assert table.value == "<table>final</table>"
    assert not bars.rows and bar.comm is None  # the rows' widgets are closed
    data = bars.bundle("<table>final</table>", "final as text")
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == bars.widget.model_id
    assert data["text/html"] == "<table>final</table>"
    assert data["text/plain"] == "final as text"


WATCH_CELL = """
import time

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.workflow import map_, new_workflow


@step(returns="y")
def slow_double(x):
    time.sleep(0.2)
    return 2 * x


env = flows.engine.execution_environment(None, "threads")
flow = new_workflow("watched").then(map_(slow_double, "x[i] -> y[i]"))
run = flows.submit(flows.workflow.build(flow.on(env), x=list(range(12))))
flows.report.watch(run)
"""


@pytest.mark.slow
def test_without_ipywidgets_watch_redraws_the_html_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARSL_FLOWS_STORE", str(tmp_path / "store"))
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell('import sys\nsys.modules["ipywidgets"] = None  # not here'),
            nbformat.v4.new_code_cell(WATCH_CELL),
        ]
    )
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    (output,) = notebook.cells[1].outputs
    assert "application/vnd.jupyter.widget-view+json" not in output.data
    assert 'class="parsl-flows-progress"' in output.data["text/html"]
    assert "finished (exit code 0)" in output.data["text/html"]
    assert "12/12 done" in output.data["text/plain"]
    assert "widgets" not in notebook.metadata
