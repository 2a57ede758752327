"""A picture of the failures (issue 20, part 6): each element's outcome over the sweep.

The runs are real (the local HighThroughputExecutor): a 1-D map whose element 3 raises,
a 2-D map over it that raises two types of exception and cannot run where its input is
masked, and a restart that reuses what it can.  The categories are checked as data first,
then the pictures drawn from them (matplotlib's Agg backend: no display).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from helpers import assert_usage_error, cli, extract_tarball

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.outcome_plot import (
    MAX_FAILURE_TYPES,
    _colours,
    outcome_categories,
    plot_outcome,
)
from parsl_flows.workflow import map_, new_workflow

matplotlib.use("Agg")

pytestmark = pytest.mark.slow

TIMEOUT = 300
PNG = b"\x89PNG\r\n\x1a\n"


@step(returns="a")
def square(x: int) -> int:
    if x == 3:
        raise ArithmeticError("three is right out")
    return x * x


@step(returns="b")
def divide(a: int, w: float) -> float:
    if a > 10:
        raise ValueError(f"a = {a} is too big")
    return a / w  # ZeroDivisionError where w == 0


@step(returns="n")
def count(b) -> int:  # a plain step: the whole map output
    return int((~np.ma.getmaskarray(b.to_array())).sum())


@step(returns="c")
def cube(p: float, q: str, r: int) -> float:
    if r == 2 and q == "b":
        raise KeyError(q)
    if p > 0.5 and r == 0:
        raise RuntimeError("too hot")
    return p * r


GRID = (
    new_workflow("grid")
    .then(map_(square, "x[i] -> a[i]"))
    .then(map_(divide, "a[i], w[j] -> b[i, j]"))
    .then(count)
)
X = [0, 1, 2, 3, 4]
W = [1.0, 0.0, 2.0, 4.0]
W_AGAIN = [1.0, 0.0, 2.0, 5.0]  # the last column changes: computed again, the rest reused

OK, RE, NR = "ok", "reused", "not run"
VE, ZE = "failed: ValueError", "failed: ZeroDivisionError"
FIRST = [  # x = 0..4 down, w across; x = 3 failed upstream, x = 4 gives a = 16 > 10
    [OK, ZE, OK, OK],
    [OK, ZE, OK, OK],
    [OK, ZE, OK, OK],
    [NR, NR, NR, NR],
    [VE, VE, VE, VE],
]
AGAIN = [  # what worked and did not change is reused; failures and w = 5 computed again
    [RE, ZE, RE, OK],
    [RE, ZE, RE, OK],
    [RE, ZE, RE, OK],
    [NR, NR, NR, NR],
    [VE, VE, VE, VE],
]


@pytest.fixture(scope="module")
def runs(local_env, tmp_path_factory: pytest.TempPathFactory) -> tuple[flows.Run, flows.Run]:
    """The grid run, and its restart with one value of ``w`` changed."""
    store = tmp_path_factory.mktemp("outcomes") / "store"
    first = flows.submit(flows.workflow.build(GRID.on(local_env), x=X, w=W), store=store)
    first.wait(TIMEOUT)
    assert first.exit_code == 450, flows.report.log(first)
    builder = first.get_builder_restart()
    builder.kwargs.w = W_AGAIN
    again = flows.submit(builder, store=store).wait(TIMEOUT)
    assert again.exit_code == 450, flows.report.log(again)
    return first, again


@pytest.fixture(scope="module")
def cube_run(local_env, tmp_path_factory: pytest.TempPathFactory) -> flows.Run:
    store = tmp_path_factory.mktemp("cube") / "store"
    flow = new_workflow("cube").then(map_(cube, "p[i], q[j], r[k] -> c[i, j, k]"))
    inputs = dict(p=[0.25, 0.75], q=["a", "b", "c"], r=[0, 1, 2, 3])
    run = flows.submit(flows.workflow.build(flow.on(local_env), **inputs), store=store)
    return run.wait(TIMEOUT)


# -- the categories, as data ---------------------------------------------------------------


def test_each_element_is_ok_failed_by_type_or_not_run(runs) -> None:
    first, _ = runs
    outcome = outcome_categories(first.step("divide"))
    assert outcome.values.tolist() == FIRST
    assert outcome.attrs["categories"] == [OK, VE, ZE, NR]  # the order pictures use
    assert outcome.attrs["step"] == "divide" and outcome.attrs["run_id"] == first.id


def test_a_restart_shows_what_it_reused_and_what_it_computed_again(runs) -> None:
    _, again = runs
    assert again.step("divide").record.n_reused == 6
    outcome = outcome_categories(again.step("divide"))
    assert outcome.values.tolist() == AGAIN
    assert outcome.attrs["categories"] == [OK, RE, VE, ZE, NR]
    upstream = outcome_categories(again.step("square"))  # 1-D: 4 reused, 3 raised again
    assert upstream.values.tolist() == [RE, RE, RE, "failed: ArithmeticError", RE]


def test_the_categories_lie_on_the_steps_dataset_coordinates(runs) -> None:
    _, again = runs
    outcome = outcome_categories(again.step("divide"))
    ds = again.step("divide").dataset()
    assert outcome.dims == ds.divide_error.dims == ds.b.dims
    for name in ("x", "w"):
        assert outcome[name].dims == ds[name].dims
        assert outcome[name].values.tolist() == ds[name].values.tolist()
    assert outcome.sel(x=4, w=2.0).item() == VE
    assert outcome.sel(x=1, w=5.0).item() == OK
    # The same elements the dataset masks, and the errors it holds.
    failed_or_not_run = np.isin(outcome.values, [VE, ZE, NR])
    assert (failed_or_not_run == ds.b_mask.values).all()
    assert ((outcome.values == NR) == ((ds.divide_error.values == "") & ds.b_mask.values)).all()


def test_a_plain_step_or_a_map_without_elements_has_no_picture(runs, local_env, tmp_path) -> None:
    first, _ = runs
    with pytest.raises(ValueError, match="'count' is a plain call, not a map"):
        outcome_categories(first.step("count"))
    with pytest.raises(ValueError, match="plain call, not a map"):
        first.step("count").plot()
    # A map skipped because its input never came: nothing to lay out.
    flow = new_workflow("skipped").then(square).then(map_(divide, "a[i], w[j] -> b[i, j]"))
    run = flows.submit(
        flows.workflow.build(flow.on(local_env), x=3, w=W), store=tmp_path / "store"
    ).wait(TIMEOUT)
    assert run.step("divide").status == "skipped"
    with pytest.raises(ValueError, match="'divide' has no elements yet"):
        run.step("divide").plot()


def test_runs_written_one_file_per_element_read_too(tmp_path: Path) -> None:
    # Written before task files (tests/data, see tests/legacy_flow.py): no reuse to tell
    # apart, but every other category is there.
    extract_tarball(Path(__file__).parent / "data" / "legacy-store-v1.tar.gz", tmp_path)
    run = flows.load_run(tmp_path / "store" / "runs" / "20261205-173041-legacy-a66ed5")
    square_outcome = outcome_categories(run.step("square")).values.tolist()
    assert square_outcome == ["failed: ValueError" if x in (3, 8) else OK for x in range(12)]
    after = outcome_categories(run.step("shift_and_name")).values.tolist()
    assert after == [NR if x in (3, 8) else OK for x in range(12)]
    fig = run.step("square").plot(path=tmp_path / "legacy.png")
    assert (tmp_path / "legacy.png").read_bytes()[:8] == PNG
    assert _legend_texts(fig) == ["ok (10)", "failed: ValueError (2)"]


def test_many_failure_types_share_one_colour_past_the_palette() -> None:
    types = [f"failed: E{k:02d}" for k in range(MAX_FAILURE_TYPES + 3)]
    drawn, drawn_as, colour = _colours([OK, *types, NR])
    other = "failed: other (3 types)"
    assert drawn == [OK, *types[:MAX_FAILURE_TYPES], other, NR]
    assert {drawn_as[t] for t in types[MAX_FAILURE_TYPES:]} == {other}
    assert len(set(colour.values())) == len(drawn)  # no two drawn categories alike
    # A few types keep their own colours, all different.
    drawn, _, colour = _colours([OK, VE, ZE, NR])
    assert drawn == [OK, VE, ZE, NR] and len(set(colour.values())) == 4


# -- the pictures ------------------------------------------------------------------------------


def _legend_texts(fig) -> list[str]:
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    assert len(legends) == 1
    return [t.get_text() for t in legends[0].get_texts()]


def _drawn_counts(ax, n: int = 0) -> list[int]:
    """How many cells of each colour code (0, 1, ..., at least ``n``) the axes' image holds."""
    (image,) = ax.images
    codes = np.asarray(image.get_array()).astype(int).reshape(-1)
    return np.bincount(codes, minlength=n).tolist()


def test_a_2d_map_is_a_heat_map_with_a_legend_naming_each_category(runs) -> None:
    _, again = runs
    fig = again.step("divide").plot()
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert _legend_texts(fig) == [
        "ok (3)",
        "reused (6)",
        "failed: ValueError (4)",
        "failed: ZeroDivisionError (3)",
        "not run (4)",
    ]
    assert _drawn_counts(ax) == [3, 6, 4, 3, 4]  # the cells, by legend entry
    # x is evenly spaced: a value axis; w (1, 0, 2, 5) is not: drawn by position, labelled.
    assert ax.get_ylabel() == "x" and ax.get_xlabel() == "w"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "0", "2", "5"]
    assert "divide" in ax.get_title()


def test_ax_draws_into_given_axes_and_path_saves(runs, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    first, _ = runs
    fig, ax = plt.subplots()
    try:
        got = first.step("divide").plot(ax=ax, path=tmp_path / "outcome.svg")
        assert got is fig and ax.images
        assert b"<svg" in (tmp_path / "outcome.svg").read_bytes()[:500]
    finally:
        plt.close(fig)
    fig = plot_outcome(first.step("divide").path, path=str(tmp_path / "outcome.png"))
    assert (tmp_path / "outcome.png").read_bytes()[:8] == PNG
    assert fig._repr_png_()[:8] == PNG  # how a notebook shows it, once


def test_a_1d_map_is_a_strip(runs) -> None:
    first, _ = runs
    fig = first.step("square").plot()
    (ax,) = fig.axes
    assert _legend_texts(fig) == ["ok (4)", "failed: ArithmeticError (1)"]
    assert _drawn_counts(ax) == [4, 1]
    assert ax.get_xlabel() == "x" and list(ax.get_yticks()) == []
    width, height = fig.get_size_inches()
    assert width > 2 * height


def test_a_3d_map_is_one_panel_per_value_of_its_first_axis(cube_run, tmp_path: Path) -> None:
    outcome = outcome_categories(cube_run.step("cube"))
    assert outcome.dims == ("i", "j", "k") and outcome.shape == (2, 3, 4)
    assert int((outcome == "failed: KeyError").sum()) == 2  # q = "b", r = 2, each p
    assert int((outcome == "failed: RuntimeError").sum()) == 3  # p = 0.75, r = 0
    fig = cube_run.step("cube").plot(path=tmp_path / "cube.png")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["p = 0.25", "p = 0.75"]
    assert _legend_texts(fig) == ["ok (19)", "failed: KeyError (2)", "failed: RuntimeError (3)"]
    assert [ax.get_xlabel() for ax in panels] == ["r", "r"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["a", "b", "c"]
    assert (np.array(_drawn_counts(panels[0], 3)) + _drawn_counts(panels[1], 3)).tolist() == [
        19,
        2,
        3,
    ]
    assert (tmp_path / "cube.png").read_bytes()[:8] == PNG
    # Capped: the title says what is left out.
    fig = cube_run.step("cube").plot(max_panels=1)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 1
    assert "first 1 of 2 panels" in fig.get_suptitle()
    # Panels need a figure of their own.
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        with pytest.raises(ValueError, match="one panel per value of i"):
            cube_run.step("cube").plot(ax=ax)
    finally:
        plt.close(fig)


def test_without_matplotlib_the_error_says_what_to_install(
    runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = runs
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    with pytest.raises(ImportError, match=r'pip install "parsl_flows\[plot\]"'):
        first.step("divide").plot()
    assert outcome_categories(first.step("divide")).values.tolist() == FIRST  # data still


# -- the command line --------------------------------------------------------------------------


def test_graph_run_step_writes_the_picture(runs, tmp_path: Path) -> None:
    _, again = runs
    done = cli("graph", str(again.path), "divide", "-o", "outcome.png", cwd=tmp_path, check=0)
    assert "wrote outcome.png" in done.stdout
    data = (tmp_path / "outcome.png").read_bytes()
    assert data[:8] == PNG and len(data) > 10_000
    # A step by position, and the default file name.
    cli("graph", str(again.path), "0", cwd=tmp_path, check=0)
    assert (tmp_path / f"{again.id}-square.png").read_bytes()[:8] == PNG


def test_graph_with_a_wrong_step_lists_the_steps(runs, tmp_path: Path) -> None:
    _, again = runs
    wrong = cli("graph", str(again.path), "nope", "-o", "x.png", cwd=tmp_path)
    assert_usage_error(wrong, "no step 'nope'", "square", "divide", "count")
    plain = cli("graph", str(again.path), "count", "-o", "x.png", cwd=tmp_path)
    assert_usage_error(plain, "'count' is a plain call, not a map")
    assert not (tmp_path / "x.png").exists()
