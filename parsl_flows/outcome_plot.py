"""A picture of a map step's outcome: where in the sweep elements worked, failed, never ran.

The numbers of a step's record ("64/200 done, 136 failed") say *how many*; a scientist
then asks *where*: along one edge of the grid, in one corner, at one value of a third
parameter.  :func:`outcome_categories` labels every element of a map step with one of

- ``"ok"``: computed by this run;
- ``"reused"``: taken from an earlier run (a restart), not computed;
- ``"failed: <ExceptionType>"``: one category per type of exception raised (an
  infrastructure failure is ``"failed: InfrastructureError"``);
- ``"not run"``: never computed: a mapped input was masked (an upstream element failed),
  it was never submitted (a run stopped early), or its task was lost before it started;

laid on the step's dimensions with the swept values as coordinates (those of
``step_run.dataset()``), and :func:`plot_outcome` (``step_run.plot()``) draws it: a heat map
for a 2-D map, a strip for a 1-D one, and beyond that one heat map per value of the other
axes.  The categories need only xarray; the drawing needs matplotlib, an optional extra
(``pip install "parsl_flows[plot]"``), loaded when a picture is asked for.

Reused elements are told apart by where their results are: a restart links the earlier
run's task files as ``reused-<run>-...`` files, and the folder's ``index.npz`` places them
there (see :mod:`parsl_flows.element_folders`).  Elements of runs written one file per
element (before task files), and elements reused *from* such runs, are linked as files of
their own: nothing on disk says they were reused, so they show as ``"ok"``.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .dataset import step_dataset
from .element_folders import NONE, locate
from .status import StepStatus

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "FAILED",
    "NOT_RUN",
    "OK",
    "REUSED",
    "exception_type",
    "outcome_categories",
    "plot_outcome",
]

OK, REUSED, NOT_RUN = "ok", "reused", "not run"
#: The prefix of a failure's category; the exception's type follows.
FAILED = "failed: "
#: Colours: success green, reuse blue (a success too, from elsewhere), failures warm,
#: never run a light grey that reads as "nothing here".
_COLOURS = {OK: "#4daf4a", REUSED: "#377eb8", NOT_RUN: "#d9d9d9"}
_FAILURE_COLOURS = (
    "#e41a1c", "#ff7f00", "#984ea3", "#a65628", "#f781bf", "#b2182b", "#fdbf6f", "#6a3d9a",
)  # fmt: skip
#: Failure types beyond this many share one "failed: other" colour, so the legend stays
#: readable and no two types get colours too close to tell apart.
MAX_FAILURE_TYPES = len(_FAILURE_COLOURS) - 1
#: Tick labels per axis drawn by position (the values are not evenly spaced numbers).
_MAX_TICKS = 12
#: Up to this many cells, white lines part them; with more, the lines would hide them.
_EDGES_UP_TO = 2500


def _dir(step: Any) -> Path:
    return Path(step) if isinstance(step, str | os.PathLike) else Path(step.path)


def exception_type(error: str) -> str:
    """The exception's type in a ``<step>_error`` text (``"ValueError: ..."``).

    >>> exception_type("ValueError: Voltages (0.0, -0.5) out of acceptable range")
    'ValueError'
    >>> exception_type("KeyError: 'x'"), exception_type("ZeroDivisionError: ")
    ('KeyError', 'ZeroDivisionError')
    """
    head = error.split(":", 1)[0].strip()
    return head[:40] or "error"


def outcome_categories(step: Any) -> xr.DataArray:
    """Each element's outcome (see the module) on the step's dimensions and coordinates.

    ``step`` is a ``StepRun`` (``run.step("name")``) or a step's directory.  The result is
    a string ``DataArray`` named ``outcome``, labelled as ``step.dataset()`` is (select
    with ``.sel(V_left=0.3)``); ``attrs["categories"]`` lists the categories present, in
    the order pictures show them: ok, reused, failures by type name, not run.

    A plain call, or a map with no elements (skipped before it started), is a
    ``ValueError``: there is nothing to lay out.

    >>> outcome = outcome_categories(run.step("modified_electrostatics"))  # doctest: +SKIP
    >>> (outcome == "failed: ValueError").sum()  # doctest: +SKIP
    """
    step_dir = _dir(step)
    rec = StepStatus.load(step_dir)
    if rec.kind != "map":
        raise ValueError(
            f"step {rec.name!r} is a plain call, not a map: it has no elements to lay out "
            f"over coordinates (its outcome: {rec.outcome}, exit code {rec.exit_code}); "
            f"outcome pictures are for map steps"
        )
    if rec.shape is None or not rec.mapspec:
        why = f": {rec.message}" if rec.message else ""
        raise ValueError(f"map {rec.name!r} has no elements yet ({rec.state}{why})")
    shape = tuple(int(s) for s in rec.shape)
    size = int(np.prod(shape, dtype=np.int64))
    ds = step_dataset(step_dir, outputs=[])  # the coordinates and errors, no values read
    error = ds[f"{rec.name}_error"]
    present = np.ones(size, dtype=bool)
    reused = np.zeros(size, dtype=bool)
    for k, out in enumerate(rec.outputs):  # an element is whole: in every output or none
        loc = locate(step_dir / "return_values" / out, size)
        files = loc.file[:size]
        present &= files != NONE
        if k == 0:
            from_earlier = np.array([n.startswith("reused-") for n in loc.names] + [False])
            reused = np.where(files >= 0, from_earlier[np.maximum(files, 0)], False)
    texts = np.asarray(error.values, dtype=object).reshape(-1)
    labels = np.full(size, NOT_RUN, dtype=object)
    labels[present] = OK
    labels[present & reused] = REUSED
    failed = np.flatnonzero(~present & (texts != ""))
    labels[failed] = [FAILED + exception_type(str(texts[n])) for n in failed.tolist()]
    found = set(labels.tolist())
    failures = sorted(c for c in found if c.startswith(FAILED))
    order = [c for c in (OK, REUSED) if c in found] + failures
    order += [NOT_RUN] if NOT_RUN in found else []
    return xr.DataArray(
        labels.reshape(shape),
        dims=error.dims,
        coords=ds.coords,
        name="outcome",
        attrs={
            "step": rec.name,
            "run_id": ds.attrs.get("run_id", ""),
            "categories": order,
            "long_name": f"outcome of {rec.name}",
        },
    )


# -- drawing ---------------------------------------------------------------------------------


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError(
            'drawing outcomes needs matplotlib, an optional extra: pip install "parsl_flows[plot]"'
        ) from e


@functools.cache
def _figure_class() -> type[Figure]:
    """A Figure that Jupyter shows as the cell's result, once.

    The figure is not one of pyplot's (no GUI window pops up, no global state, and the
    notebook backend does not show it a second time at the end of the cell); it shows
    itself as a PNG wherever IPython asks for one.
    """
    from matplotlib.figure import Figure

    class OutcomeFigure(Figure):
        def _repr_png_(self) -> bytes:
            import io

            buffer = io.BytesIO()
            self.savefig(buffer, format="png", bbox_inches="tight")
            return buffer.getvalue()

    return OutcomeFigure


def _colours(categories: Sequence[str]) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """The categories drawn (failure types past the palette merged into one), which drawn
    category each category is, and each drawn category's colour."""
    failures = [c for c in categories if c.startswith(FAILED)]
    drawn_as = {c: c for c in categories}
    if len(failures) > MAX_FAILURE_TYPES + 1:
        other = f"{FAILED}other ({len(failures) - MAX_FAILURE_TYPES} types)"
        for c in failures[MAX_FAILURE_TYPES:]:
            drawn_as[c] = other
    drawn = list(dict.fromkeys(drawn_as[c] for c in categories))
    palette = iter(_FAILURE_COLOURS)
    colour = {c: _COLOURS.get(c) or next(palette) for c in drawn}
    return drawn, drawn_as, colour


def _axis_coordinate(labelled: xr.DataArray, dim: str) -> tuple[str | None, np.ndarray]:
    """The coordinate that labels ``dim`` (the first swept input along it), and its values."""
    for name, coord in labelled.coords.items():
        if coord.dims == (dim,):
            return str(name), np.asarray(coord.values)
    return None, np.arange(labelled.sizes[dim])


def _evenly_spaced(values: np.ndarray) -> bool:
    """Numbers a value axis shows well: evenly spaced, so no cell hides behind another."""
    if values.dtype.kind not in "iuf" or values.size < 2:
        return False
    steps = np.diff(values.astype(float))
    return bool(np.all(np.isfinite(steps)) and steps[0] != 0 and np.allclose(steps, steps[0]))


def _label(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.3g}"
    return str(value)


def _panel(ax: Axes, codes: xr.DataArray, colours: list[str], strip: bool) -> None:
    """One heat map of category codes (``colours[k]`` for code ``k``), swept values on
    the axes.

    Evenly spaced numbers become value axes (the cells centred on their values); any
    other coordinate (text, uneven or unsorted numbers, a single value) is drawn by
    position with its values as tick labels.  Either way cells are evenly spaced, as
    xarray's ``imshow`` needs, and every element gets a cell of one size.
    """
    from matplotlib.colors import ListedColormap

    drawn = codes
    axis_of: dict[str, str] = {}
    centres: dict[str, np.ndarray] = {}
    by_position: dict[str, tuple[str, np.ndarray]] = {}
    for dim in map(str, codes.dims):
        name, values = _axis_coordinate(codes, dim)
        if name is not None and _evenly_spaced(values):
            axis_of[dim], centres[dim] = name, values.astype(float)
        else:
            place = f"{dim} (position)"
            centres[dim] = np.arange(codes.sizes[dim], dtype=float)
            drawn = drawn.assign_coords({place: (dim, centres[dim])})
            axis_of[dim] = place
            by_position[place] = (name or dim, values)
    ydim, xdim = map(str, codes.dims)
    drawn.plot.imshow(
        ax=ax,
        x=axis_of[xdim],
        y=axis_of[ydim],
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=len(colours) - 0.5,
        add_colorbar=False,
    )
    for place, (label, values) in by_position.items():
        every = max(1, math.ceil(len(values) / _MAX_TICKS))
        ticks = np.arange(0, len(values), every)
        texts = [_label(values[t]) for t in ticks]
        if place == axis_of[xdim]:
            ax.set_xticks(ticks, texts, rotation=45 if max(map(len, texts)) > 4 else 0)
            ax.set_xlabel(label)
        else:
            ax.set_yticks(ticks, texts)
            ax.set_ylabel(label)
    if codes.size <= _EDGES_UP_TO:  # white lines between cells, while cells are big
        for dim, set_ticks in ((xdim, ax.set_xticks), (ydim, ax.set_yticks)):
            c = centres[dim]
            if len(c) > 1:
                set_ticks((c[:-1] + c[1:]) / 2, minor=True)
        ax.grid(which="minor", color="white", linewidth=1.0)
        ax.tick_params(which="minor", length=0)
        ax.set_axisbelow(False)
    if strip:
        ax.set_yticks([])
        ax.set_ylabel("")


def _facet_title(outcome: xr.DataArray, where: dict[str, int]) -> str:
    parts = []
    for dim, i in where.items():
        name, values = _axis_coordinate(outcome, dim)
        parts.append(f"{name or dim} = {_label(values[i])}")
    return ", ".join(parts)


def plot_outcome(
    step: Any,
    *,
    ax: Axes | None = None,
    path: str | os.PathLike[str] | None = None,
    max_panels: int = 16,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Draw a map step's outcome over its coordinates (see the module); the Figure.

    A 1-D map is a strip, a 2-D map a heat map (its first dimension up, its second
    across), and a map of more dimensions one heat map of its last two per value of the
    others, at most ``max_panels`` of them (the title says when some are left out; select
    with ``outcome_categories(step).sel(...)`` to see others).  The legend names each
    category with its count of elements.

    ``ax``: draw into these axes (1-D and 2-D maps; e.g. from ``plt.subplots()``), and
    return their figure.  Otherwise the figure is a new one of its own, not pyplot's: a
    notebook shows it once, as the cell's result; ``fig.savefig`` saves it.
    ``path``: also save the picture there (``.png``, ``.svg``, ``.pdf``, ...).

    Needs matplotlib (``pip install "parsl_flows[plot]"``); a plain step, or a map that
    never started, is a ``ValueError``.
    """
    _require_matplotlib()
    from matplotlib.patches import Patch

    outcome = outcome_categories(step)
    extra = [str(d) for d in outcome.dims[:-2]]
    if extra and ax is not None:
        raise ValueError(
            f"a map of {outcome.ndim} dimensions is drawn as one panel per value of "
            f"{', '.join(extra)}, in a figure of its own: call plot() without ax=, or draw "
            f"one panel of outcome_categories(step).isel(...) yourself"
        )
    drawn, drawn_as, colour = _colours(outcome.attrs["categories"])
    code = {c: drawn.index(drawn_as[c]) for c in drawn_as}
    flat = outcome.values.reshape(-1)
    numbers = np.fromiter((code[c] for c in flat), np.int64, flat.size)
    codes = outcome.copy(data=numbers.reshape(outcome.shape))
    if outcome.ndim == 1:
        codes = codes.expand_dims("strip")
    counts = np.bincount(numbers, minlength=len(drawn))
    handles = [
        Patch(facecolor=colour[c], edgecolor="0.6", label=f"{c} ({counts[k]})")
        for k, c in enumerate(drawn)
    ]
    title = f"{outcome.attrs['step']}: outcome of {flat.size} elements"
    if ax is None:
        fig, axes, panels = _new_figure(outcome, extra, max_panels, figsize)
    else:
        fig, axes, panels = _root(ax), [ax], [{}]
    for panel_ax, where in zip(axes, panels, strict=False):
        _panel(panel_ax, codes.isel(where), [colour[c] for c in drawn], outcome.ndim == 1)
        panel_ax.set_title(_facet_title(outcome, where) if extra else title)
    for unused in axes[len(panels) :]:
        unused.set_visible(False)
    if extra:
        total = math.prod(outcome.sizes[d] for d in extra)
        shown = f" (the first {len(panels)} of {total} panels)" if len(panels) < total else ""
        fig.suptitle(title + shown)
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
    else:
        axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=150, bbox_inches="tight")
    return fig


def _root(ax: Axes) -> Figure:
    """The figure ``ax`` is in (through any subfigures): the one to save."""
    from matplotlib.figure import Figure

    fig: Any = ax.get_figure()
    while not isinstance(fig, Figure):
        fig = fig.figure
    return fig


def _new_figure(
    outcome: xr.DataArray,
    extra: list[str],
    max_panels: int,
    figsize: tuple[float, float] | None,
) -> tuple[Figure, list[Axes], list[dict[str, int]]]:
    """A figure of its own, its axes, and which values of the extra axes each panel shows."""
    ranges = [range(outcome.sizes[d]) for d in extra]
    panels = [
        dict(zip(extra, where, strict=True))
        for where in itertools.islice(itertools.product(*ranges), max(1, max_panels))
    ]
    n = len(panels) if extra else 1
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    if figsize is None:
        if outcome.ndim == 1:
            figsize = (min(14.0, max(6.0, 0.2 * outcome.size + 3)), 2.0)
        elif outcome.ndim == 2:
            figsize = (8.0, 5.0)
        else:
            figsize = (3.6 * ncols + 2.4, 3.0 * nrows + 0.8)
    fig = _figure_class()(figsize=figsize, layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(grid.reshape(-1)), panels
