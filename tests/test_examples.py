"""Execute the example notebooks (jupytext markdown) top to bottom in a real kernel."""

from __future__ import annotations

import os
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.md"))

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARSL_FLOWS_STORE", str(tmp_path / "store"))
    notebook = jupytext.read(path)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    nbformat.write(notebook, tmp_path / f"{path.stem}.ipynb")
    assert (tmp_path / "store" / "runs").is_dir()
    assert os.listdir(tmp_path / "store" / "runs")
