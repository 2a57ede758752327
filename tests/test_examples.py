"""Execute the example notebooks (jupytext markdown) top to bottom in a real kernel."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.md"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.slow


class _RecordingClient(NotebookClient):
    """A client that also keeps every widget state message the kernel sends, in order.

    The saved notebook holds only each widget's last state; these show how it got there.
    """

    widget_messages: list[tuple[str, dict[str, Any]]]

    def handle_comm_msg(self, outs: list[Any], msg: dict[str, Any], cell_index: int) -> None:
        data = msg["content"].get("data") or {}
        if "state" in data:
            self.widget_messages.append((msg["content"]["comm_id"], dict(data["state"])))
        super().handle_comm_msg(outs, msg, cell_index)


@dataclass
class Executed:
    notebook: Any
    directory: Path
    widget_messages: list[tuple[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def execute(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Executed]:
    """Execute a notebook once per test module (its own store), however many tests read it."""
    done: dict[Path, Executed] = {}

    def run(path: Path) -> Executed:
        if path not in done:
            directory = tmp_path_factory.mktemp(path.stem)
            notebook = jupytext.read(path)
            client = _RecordingClient(
                notebook,
                timeout=600,
                kernel_name="python3",
                resources={"metadata": {"path": directory}},
            )
            client.widget_messages = []
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("PARSL_FLOWS_STORE", str(directory / "store"))
                client.execute()
            nbformat.write(notebook, directory / f"{path.stem}.ipynb")
            done[path] = Executed(notebook, directory, client.widget_messages)
        return done[path]

    return run


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, execute: Callable[[Path], Executed]) -> None:
    tmp_path = execute(path).directory
    assert (tmp_path / "store" / "runs").is_dir()
    assert os.listdir(tmp_path / "store" / "runs")


def test_watch_shows_live_bars_then_leaves_the_final_table(
    execute: Callable[[Path], Executed],
) -> None:
    executed = execute(EXAMPLES / "02-workflows.md")
    (cell,) = [
        c
        for c in executed.notebook.cells
        if c.cell_type == "code" and "flows.report.watch(run)" in c.source
    ]
    (output,) = [o for o in cell.outputs if o.output_type == "display_data"]
    # A widget, with the final table for front ends that cannot show one.
    assert WIDGET_VIEW in output.data, output.data
    table = output.data["text/html"]
    assert 'class="parsl-flows-progress"' in table and "finished (exit code 0)" in table
    assert "run_electrostatics" in table and "200/200 done" in table
    assert "run_electrostatics  finished" in output.data["text/plain"]

    # The bars were live: a 200-element map's row said "running" while on display, then
    # changed to its outcome, and its bar ended full and green.
    states: dict[str, list[dict[str, Any]]] = {}
    for comm_id, state in executed.widget_messages:
        states.setdefault(comm_id, []).append(state)
    texts = {
        c: [s["value"] for s in ss if isinstance(s.get("value"), str)] for c, ss in states.items()
    }
    went_live = [
        t
        for t in texts.values()
        if any(v.startswith("running · ") and "/200 done" in v for v in t)
        and t[-1] == "ok · exit 0 · 200/200 done"
    ]
    assert went_live, texts
    bars = [ss for ss in states.values() if ss[0].get("_model_name") == "IntProgressModel"]
    full = [
        ss
        for ss in bars
        if [s["value"] for s in ss if "value" in s][-1] == 200
        and [s["bar_style"] for s in ss if "bar_style" in s][-1] == "success"
    ]
    assert full, bars
    # In the end the widget holds the final table alone.
    (box,) = [
        ss
        for c, ss in states.items()
        if ss[0].get("_model_name") == "VBoxModel" and c == output.data[WIDGET_VIEW]["model_id"]
    ]
    (last,) = [s["children"] for s in box if "children" in s][-1]
    final = texts[last.removeprefix("IPY_MODEL_")][-1]
    assert 'class="parsl-flows-progress"' in final and "finished (exit code 0)" in final


def test_the_failures_notebook_draws_where_the_failures_are(
    execute: Callable[[Path], Executed],
) -> None:
    executed = execute(EXAMPLES / "03-failures.md")
    # The cell that draws the seed story's electrostatics shows the picture once (the
    # figure is not pyplot's, so the notebook backend does not show it a second time)...
    (cell,) = [
        c
        for c in executed.notebook.cells
        if c.cell_type == "code" and 'plot(path="outcome.png")' in c.source
    ]
    shown = [o for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(shown) == 1, cell.outputs
    # ... and saves it: a whole PNG of a real size, in the colours of "ok" and of a failure.
    png = executed.directory / "outcome.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 600 and height >= 400 and len(data) > 10_000, (width, height, len(data))
    import matplotlib.image

    pixels = (matplotlib.image.imread(png)[..., :3] * 255).round().astype(int)
    colours = {tuple(p) for p in pixels.reshape(-1, 3).tolist()}
    assert (0x4D, 0xAF, 0x4A) in colours  # ok
    assert (0xE4, 0x1A, 0x1C) in colours  # failed: ValueError
