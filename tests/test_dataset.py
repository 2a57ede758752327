"""Map results as labelled data: xarray Datasets, dataset.nc files and input samples."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import seed_flows as seed
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import parsl_flows as flows
from parsl_flows import dataset, step
from parsl_flows.dataset import (
    array_to_xarray,
    input_samples,
    load_elements,
    run_dataset,
    step_dataset,
    write_run_dataset,
    write_step_dataset,
)
from parsl_flows.element_folders import locate, save_index
from parsl_flows.status import StepStatus
from parsl_flows.store import FileBasedObjectArray, element_path, write_pickle
from parsl_flows.workflow import concurrently, map_, new_workflow

#: The provenance variables of each map step, ``<step>_<name>`` (tests/test_provenance.py).
PROVENANCE = ("seconds", "host", "job", "attempt", "run", "peak_rss")

# -- arrays on their own (no run, no Parsl) ------------------------------------------------


def array_in(folder: Path, values: dict[int, object], shape: tuple[int, ...]):
    for n, v in values.items():
        write_pickle(element_path(folder, n), v)
    return FileBasedObjectArray(folder, shape)


def test_numbers_become_floats_with_nan_exactly_where_masked(tmp_path: Path) -> None:
    arr = array_in(tmp_path / "y", {0: 1.0, 1: 2, 3: np.float32(4.0)}, (2, 2))
    ds = arr.to_xarray()
    assert ds.y.dims == ("dim_0", "dim_1")
    assert ds.y.dtype == np.float64
    assert ds.y_mask.values.tolist() == [[False, False], [True, False]]
    np.testing.assert_array_equal(np.isnan(ds.y.values), ds.y_mask.values)
    assert ds.y.values[~ds.y_mask.values].tolist() == [1.0, 2.0, 4.0]


def test_numeric_arrays_of_one_shape_add_element_dimensions(tmp_path: Path) -> None:
    arr = array_in(tmp_path / "f", {0: np.ones((3, 4)), 2: np.zeros((3, 4))}, (3,))
    ds = array_to_xarray(arr)
    assert ds.f.dims == ("dim_0", "f_dim_0", "f_dim_1")
    assert ds.f.shape == (3, 3, 4) and ds.f.dtype == np.float64
    assert np.isnan(ds.f.values[1]).all() and ds.f.values[0].sum() == 12


def test_integers_and_booleans_keep_their_dtype_and_rely_on_the_mask(tmp_path: Path) -> None:
    ints = array_in(tmp_path / "n", {0: 3, 2: 5}, (3,)).to_xarray()
    assert ints.n.dtype == np.int64
    assert ints.n.values.tolist() == [3, 0, 5]
    assert ints.n.where(~ints.n_mask).values[1] != ints.n.where(~ints.n_mask).values[1]  # NaN
    bools = array_in(tmp_path / "ok", {0: True, 1: np.bool_(False)}, (2,)).to_xarray()
    assert bools.ok.dtype == bool and bools.ok.values.tolist() == [True, False]


@pytest.mark.parametrize(
    "values",
    [
        {0: 1.0, 1: "text"},  # a number and a string
        {0: np.ones(3), 1: np.ones(4)},  # arrays of different shapes
        {0: [1.0, 2.0], 1: [3.0, 4.0]},  # lists are objects, not arrays
        {0: 2**80},  # too big for any numeric dtype
    ],
)
def test_anything_else_stays_objects(tmp_path: Path, values: dict) -> None:
    ds = array_in(tmp_path / "o", values, (3,)).to_xarray()
    assert ds.o.dtype == object
    assert ds.o_mask.values.tolist() == [n not in values for n in range(3)]
    got = ds.o.values
    for n, v in values.items():
        assert np.array_equal(got[n], v)
    assert got[2] is None


def test_numeric_outputs_too_big_to_hold_stay_lazy_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset.reading, "MAX_NUMERIC_BYTES", 2 * 12 * 8)  # two (3, 4) float arrays
    ds = array_in(tmp_path / "f", {n: np.full((3, 4), n) for n in range(3)}, (3,)).to_xarray()
    assert ds.f.dtype == object and ds.f.dims == ("dim_0",)
    assert ds.f[2].item().tolist() == np.full((3, 4), 2).tolist()


def test_nothing_present_is_an_all_nan_float_array(tmp_path: Path) -> None:
    ds = FileBasedObjectArray(tmp_path / "none", (2, 3)).to_xarray()
    assert ds.none.dtype == np.float64 and np.isnan(ds.none.values).all()
    assert ds.none_mask.values.all()


LOADS: list[int] = []


def _loaded(value: int) -> Counted:
    LOADS.append(value)
    return Counted(value)


class Counted:
    """An object that records each time it is unpickled."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self):
        return (_loaded, (self.value,))


def test_object_outputs_are_read_only_when_asked_for(tmp_path: Path) -> None:
    arr = array_in(tmp_path / "obj", {n: Counted(n) for n in range(6) if n != 4}, (2, 3))
    LOADS.clear()
    ds = arr.to_xarray()
    assert LOADS == [0]  # the first element, to see that the output is not numbers
    repr(ds)
    assert ds.obj_mask.values.sum() == 1
    assert LOADS == [0]
    assert ds.obj[1, 2].item().value == 5
    assert LOADS == [0, 5]
    row = ds.obj[1].values
    assert [x.value if x is not None else None for x in row] == [3, None, 5]


def test_in_memory_arrays(tmp_path: Path) -> None:
    ds = array_to_xarray(np.ma.masked_array([[1, 2], [3, 4]], mask=[[0, 1], [0, 0]]), name="m")
    assert ds.m.dims == ("dim_0", "dim_1") and ds.m.dtype.kind == "i"
    assert ds.m_mask.values.tolist() == [[False, True], [False, False]]
    objs = np.empty(2, dtype=object)
    objs[0], objs[1] = np.ones(2), np.zeros(2)
    assert array_to_xarray(objs).array.shape == (2, 2)


def test_threads_read_the_same_as_one_thread(tmp_path: Path) -> None:
    for n in range(1500):
        if n % 7:
            write_pickle(element_path(tmp_path, n), n * 0.5)
    idx = list(range(1500))
    serial = load_elements(tmp_path, idx, threads=1)
    parallel = load_elements(tmp_path, idx, threads=4)
    assert [None if v is serial[0] else v for v in parallel] == [
        None if v is serial[0] else v for v in serial
    ]
    assert parallel[1] == 0.5 and parallel[1499] == 749.5


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.floats(allow_nan=False, width=64)), min_size=1, max_size=30)
)
def test_floats_round_trip_with_their_mask(values: list[float | None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        arr = array_in(
            Path(tmp) / "v", {n: v for n, v in enumerate(values) if v is not None}, (len(values),)
        )
        ds = arr.to_xarray()
        mask = [v is None for v in values]
        assert ds.v_mask.values.tolist() == mask
        expected = np.array([np.nan if v is None else v for v in values])
        np.testing.assert_array_equal(ds.v.values, expected)


def test_input_samples_needs_a_map_output_of_a_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a map output in a run"):
        input_samples(FileBasedObjectArray(tmp_path / "x", (2,)))
    with pytest.raises(TypeError, match="takes a map output"):
        input_samples(np.arange(3))  # type: ignore[arg-type]


# -- the seed notebook's run ---------------------------------------------------------------


def run(flow, env, store, **inputs):
    return flows.submit(flows.workflow.build(flow.on(env), **inputs), store=store).wait(300)


@pytest.fixture(scope="module")
def seed_run(local_env, tmp_path_factory):
    store = tmp_path_factory.mktemp("seed-dataset")
    r = run(seed.new_flow, local_env, store, **seed.seed_inputs(mesh_error=False))
    assert r.step("modified_get_charge").record.shape == [10, 20], flows.report.log(r)
    return r


@pytest.fixture(scope="module")
def seed_ds(seed_run) -> xr.Dataset:
    return run_dataset(seed_run)


def out_of_range() -> np.ndarray:
    inputs = seed.seed_inputs()
    vl, vr = np.meshgrid(inputs["V_left"], inputs["V_right"], indexing="ij")
    return ~((vl > -0.4) & (vl < 0.4) & (vr > -0.4) & (vr < 0.4))


@pytest.mark.slow
def test_seed_dataset_lies_on_the_swept_voltages(seed_ds) -> None:
    ds = seed_ds
    assert dict(ds.sizes) == {"a": 10, "b": 20}
    inputs = seed.seed_inputs()
    np.testing.assert_array_equal(ds.V_left.values, inputs["V_left"])
    np.testing.assert_array_equal(ds.V_right.values, inputs["V_right"])
    assert ds.V_left.dims == ("a",) and ds.V_right.dims == ("b",)
    assert ds.charge.dims == ("a", "b")  # charge[i, j] inherits electrostatics[a, b]
    assert ds.electrostatics.dims == ("a", "b")


@pytest.mark.slow
def test_seed_charge_is_float_with_nan_exactly_where_masked(seed_run, seed_ds) -> None:
    ds = seed_ds
    assert ds.charge.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(ds.charge.values), ds.charge_mask.values)
    charge = seed_run.step("modified_get_charge").outputs.return_values.charge
    np.testing.assert_array_equal(ds.charge_mask.values, charge.mask)
    present = ~charge.mask
    np.testing.assert_array_equal(ds.charge.values[present], charge.to_array()[present])
    assert ds.electrostatics.dtype == object
    assert isinstance(ds.electrostatics[3, 5].item(), seed.Electrostatics)


@pytest.mark.slow
def test_seed_errors_are_exactly_the_out_of_range_elements(seed_ds) -> None:
    err = seed_ds.modified_electrostatics_error.values
    bad = out_of_range()
    np.testing.assert_array_equal(err != "", bad)
    assert all("out of acceptable range" in e and e.startswith("ValueError: ") for e in err[bad])
    np.testing.assert_array_equal(seed_ds.electrostatics_mask.values, bad)
    # get_charge fails at random (failure_probability=0.2): an error wherever it was run
    # and gave no charge, and none where it never ran.
    charge_err = seed_ds.modified_get_charge_error.values
    failed = seed_ds.charge_mask.values & ~bad
    np.testing.assert_array_equal(charge_err != "", failed)
    assert all(e == "ValueError: Randomly failed!" for e in charge_err[failed])


@pytest.mark.slow
def test_seed_attempts(seed_ds) -> None:
    assert (seed_ds.modified_electrostatics_attempts.values == 1).all()
    np.testing.assert_array_equal(
        seed_ds.modified_get_charge_attempts.values, np.where(out_of_range(), 0, 1)
    )


@pytest.mark.slow
def test_mean_charge_in_one_line_equals_the_average_charge_step(seed_run, seed_ds) -> None:
    ds = seed_ds
    avg = seed_run.outputs.return_values.avg_electrostatic_charge.fetch_value()
    assert float(ds.charge.where(~ds.charge_mask).mean()) == pytest.approx(avg)


@pytest.mark.slow
def test_selecting_and_plotting(seed_ds) -> None:
    ds = seed_ds
    row = ds.sel(a=3)
    assert float(row.V_left) == pytest.approx(seed.seed_inputs()["V_left"][3])
    assert row.charge.dims == ("b",)
    by_value = ds.sel(V_left=0.33, method="nearest")
    assert float(by_value.V_left) == pytest.approx(1 / 3)
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    import matplotlib

    matplotlib.use("Agg")
    ds.charge.plot()


@pytest.mark.slow
def test_attributes_name_the_run_and_the_steps(seed_run, seed_ds) -> None:
    assert seed_ds.attrs["run_id"] == seed_run.id
    assert seed_ds.attrs["exit_code"] == 450
    assert seed_ds.charge.attrs["step"] == "modified_get_charge"
    assert seed_ds.charge.attrs["mapspec"] == "electrostatics[i, j] -> charge[i, j]"
    assert seed_ds.electrostatics.attrs["exit_code"] == 401
    ds = step_dataset(seed_run.step("modified_electrostatics"), seed_run)
    assert ds.attrs["step"] == "modified_electrostatics"
    assert ds.attrs["mapspec"] == "V_left[a], V_right[b] -> electrostatics[a, b]"
    assert ds.attrs["exit_code"] == 401 and ds.attrs["run_id"] == seed_run.id


@pytest.mark.slow
def test_a_step_dataset_and_to_xarray_match_the_run_dataset(seed_run, seed_ds) -> None:
    charge_step = seed_run.step("modified_get_charge")
    ds = step_dataset(charge_step)
    per_step = ("error", "attempts", *PROVENANCE)
    assert set(ds.data_vars) == {"charge", "charge_mask"} | {
        f"modified_get_charge_{v}" for v in per_step
    }
    xr.testing.assert_identical(
        ds.charge.reset_coords(drop=True), seed_ds.charge.reset_coords(drop=True)
    )
    np.testing.assert_array_equal(ds.V_right.values, seed_ds.V_right.values)
    from_array = charge_step.outputs.return_values.charge.to_xarray()
    assert set(from_array.data_vars) == set(ds.data_vars)
    assert from_array.charge.dims == ("a", "b")
    with pytest.raises(ValueError, match="plain call, not a map"):
        step_dataset(seed_run.step("make_geometry"))


@pytest.mark.slow
def test_input_samples_make_a_table(seed_run) -> None:
    charge = seed_run.step("modified_get_charge").outputs.return_values.charge
    samples = flows.input_samples(charge)
    assert len(samples) == 200
    df = pd.DataFrame(samples)
    inputs = seed.seed_inputs()
    vl, vr = np.meshgrid(inputs["V_left"], inputs["V_right"], indexing="ij")
    np.testing.assert_array_equal(df.V_left.to_numpy(), vl.ravel())
    np.testing.assert_array_equal(df.V_right.to_numpy(), vr.ravel())
    np.testing.assert_array_equal(df.charge_mask.to_numpy(), charge.mask.ravel())
    for shared in ("x", "y", "mesh_size", "coarse_mesh_size", "failure_probability"):
        assert (df[shared] == inputs[shared]).all()
    assert list(df.columns[:2]) == ["V_left", "V_right"]
    # the samples line up with the values
    values = charge.to_array().filled(np.nan).ravel()
    ok = ~df.charge_mask.to_numpy()
    np.testing.assert_allclose(values[ok], (df.V_left + df.V_right).to_numpy()[ok])


# -- dataset.nc ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_nc(seed_run) -> dict[str, Path]:
    return {
        name: write_step_dataset(seed_run.step(name), seed_run)
        for name in ("modified_electrostatics", "modified_get_charge")
    }


READ_WITHOUT_PARSL_FLOWS = """
import json, sys
sys.modules["parsl_flows"] = None  # importing it now fails: the file must not need it
import xarray as xr
with xr.open_dataset(sys.argv[1]) as ds:
    print(json.dumps({
        "dims": dict(ds.sizes),
        "vars": sorted(ds.data_vars),
        "coords": sorted(ds.coords),
        "attrs": {k: str(v) for k, v in ds.attrs.items()},
        "charge_nan": int(ds.charge.isnull().sum()) if "charge" in ds else None,
        "masked": int(ds.charge_mask.sum()) if "charge_mask" in ds else None,
        "mask_dtype": str(ds[sorted(v for v in ds.data_vars if v.endswith("_mask"))[0]].dtype),
        "V_left": ds.V_left.values.tolist(),
    }))
"""


def read_elsewhere(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", READ_WITHOUT_PARSL_FLOWS, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.slow
def test_dataset_nc_opens_without_parsl_flows(seed_run, seed_nc) -> None:
    charge_nc = seed_nc["modified_get_charge"]
    assert charge_nc == seed_run.step("modified_get_charge").path / "dataset.nc"
    got = read_elsewhere(charge_nc)
    assert got["dims"] == {"a": 10, "b": 20}
    assert got["vars"] == sorted(
        [
            "charge",
            "charge_mask",
            "modified_get_charge_attempts",
            "modified_get_charge_error",
            *(f"modified_get_charge_{p}" for p in PROVENANCE),
        ]
    )
    assert got["coords"] == ["V_left", "V_right"]
    assert got["charge_nan"] == got["masked"] > 0
    assert got["mask_dtype"] == "bool"
    assert got["V_left"] == pytest.approx(seed.seed_inputs()["V_left"].tolist())
    assert got["attrs"]["run_id"] == seed_run.id
    assert got["attrs"]["step"] == "modified_get_charge"
    assert got["attrs"]["exit_code"] == "401"


@pytest.mark.slow
def test_object_outputs_stay_in_pickles_and_the_file_says_where(seed_run, seed_nc) -> None:
    path = seed_nc["modified_electrostatics"]
    got = read_elsewhere(path)
    assert "electrostatics" not in got["vars"]
    assert "electrostatics_mask" in got["vars"]
    assert got["attrs"]["pickled_outputs"] == "electrostatics"
    with xr.open_dataset(path) as ds:
        where = ds.electrostatics_mask.attrs["values_in"]
        errors = ds.modified_electrostatics_error.values
        np.testing.assert_array_equal(errors != "", out_of_range())
    assert where == "return_values/electrostatics/index.npz"
    n = int(np.flatnonzero(~out_of_range().ravel())[0])
    import pickle

    index = np.load(path.parent / where)  # element n as the note says, by hand
    k, slot = index["file_number"][n], index["slot"][n]
    with open(path.parent / where.replace("index.npz", str(index["names"][k])), "rb") as f:
        assert pickle.loads(pickle.load(f)["pickles"][slot]) is not None


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ncdump") is None, reason="ncdump (netcdf-bin) not installed")
def test_ncdump_reads_the_header(seed_nc) -> None:
    out = subprocess.run(
        ["ncdump", "-h", str(seed_nc["modified_get_charge"])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "a = 10 ;" in out and "b = 20 ;" in out
    assert "double charge(a, b) ;" in out
    # Texts as fixed-width characters (CF's classic model), not netCDF strings.
    assert re.search(r"char modified_get_charge_error\(a, b, string\d+\) ;", out), out
    assert "string " not in out
    assert ':Conventions = "CF-1.10" ;' in out
    assert ':mapspec = "electrostatics[i, j] -> charge[i, j]" ;' in out


@pytest.mark.slow
def test_writing_replaces_the_file_and_leaves_no_temporary_files(seed_run, seed_nc) -> None:
    s = seed_run.step("modified_get_charge")
    first = seed_nc["modified_get_charge"].stat().st_mtime_ns
    write_step_dataset(s)
    assert seed_nc["modified_get_charge"].stat().st_mtime_ns >= first
    assert not [p for p in os.listdir(s.path) if p.endswith(".tmp")]


# -- shapes: zips, reductions, array elements, shared and separate dimensions --------------


@step(returns="grid")
def make_grid(n: int) -> np.ndarray:
    return np.arange(n * 3.0).reshape(n, 3)


@step(returns="field")
def make_field(k: int) -> np.ndarray:
    if k == 2:
        raise ValueError("no field for 2")
    return np.full((3, 4), float(k))


@step(returns="z")
def add(x: int, y: int) -> int:
    if x == 3:
        raise ArithmeticError("x is 3")
    return x + y


@step(returns="s")
def row_sum(grid: np.ndarray) -> float:
    return float(np.sum(grid))


@step(returns="x2")
def double(x: int) -> int:
    return 2 * x


@step(returns="o")
def ident(k2: str) -> str:
    return k2.upper()


@step(returns="fx")
def flaky(x: int, marker_dir: str) -> int:
    marker = Path(marker_dir) / str(x)
    if x % 2 == 0 and not marker.exists():
        marker.touch()
        raise RuntimeError("the first attempt fails")
    return x


@step(returns="pz")
def pair(z: int, x2: int) -> float:
    return z * 10.0 + x2


@step(returns="pzsum")
def total(pz) -> float:
    return float(np.nansum(pz))


shapes_flow = (
    new_workflow("shapes")
    .then(make_grid)
    .then(
        concurrently(
            map_(make_field, "k[i] -> field[i]"),
            map_(add, "x[j], y[j] -> z[j]"),
            map_(row_sum, "grid[r, :] -> s[r]"),
            map_(double, "x[q] -> x2[q]"),
            map_(ident, "k2[i] -> o[i]"),
            map_(flaky, "x[j] -> fx[j]", max_restarts=2),
        )
    )
    .then(map_(pair, "z[u], x2[v] -> pz[u, v]"))
    .then(map_(total, "pz[w, :] -> pzsum[w]"))
)

SHAPES_INPUTS = dict(
    n=4,
    k=[0, 1, 2, 3],
    x=np.arange(5),
    y=np.arange(5) * 100,
    k2=["a", "b", "c", "d", "e", "f"],
)


@pytest.fixture(scope="module")
def shapes_run(local_env, tmp_path_factory):
    markers = tmp_path_factory.mktemp("markers")
    store = tmp_path_factory.mktemp("shapes")
    r = run(shapes_flow, local_env, store, marker_dir=str(markers), **SHAPES_INPUTS)
    assert r.step("total").record.shape == [5], flows.report.log(r)
    return r


@pytest.fixture(scope="module")
def shapes_ds(shapes_run) -> xr.Dataset:
    return run_dataset(shapes_run)


@pytest.mark.slow
def test_a_map_of_2d_arrays_gives_a_float_variable_with_element_dims(shapes_run) -> None:
    ds = step_dataset(shapes_run.step("make_field"))
    assert ds.field.dims == ("i", "field_dim_0", "field_dim_1")
    assert ds.field.shape == (4, 3, 4) and ds.field.dtype == np.float64
    assert ds.field_mask.values.tolist() == [False, False, True, False]
    assert np.isnan(ds.field.values[2]).all()
    assert (ds.field.values[3] == 3.0).all()
    assert ds.make_field_error.values.tolist() == ["", "", "ValueError: no field for 2", ""]
    assert ds.k.dims == ("i",) and ds.k.values.tolist() == [0, 1, 2, 3]


@pytest.mark.slow
def test_zipped_inputs_are_both_coordinates_of_one_dimension(shapes_run) -> None:
    ds = step_dataset(shapes_run.step("add"))
    assert ds.z.dims == ("j",)
    assert ds.x.dims == ds.y.dims == ("j",)
    assert ds.y.values.tolist() == [0, 100, 200, 300, 400]
    assert ds.z.dtype == np.int64 and ds.z.values.tolist() == [0, 101, 202, 0, 404]
    assert ds.z_mask.values.tolist() == [False, False, False, True, False]
    assert ds.add_error.values[3] == "ArithmeticError: x is 3"


@pytest.mark.slow
def test_a_reduction_over_a_plain_step_output_has_positions(shapes_run) -> None:
    ds = step_dataset(shapes_run.step("row_sum"))
    assert ds.s.dims == ("r",)
    assert ds.r.values.tolist() == [0, 1, 2, 3]  # grid's rows: no values, positions
    assert ds.s.values.tolist() == [3.0, 12.0, 21.0, 30.0]


@pytest.mark.slow
def test_maps_over_the_same_input_share_its_dimension(shapes_ds) -> None:
    ds = shapes_ds
    assert ds.x2.dims == ("j",) and ds.z.dims == ("j",)  # x[q] and x[j]: one dimension
    assert ds.pz.dims == ("j", "v")  # pz[u, v] over z[j] and x2[j]: v cannot be j too
    assert ds.x_v.dims == ("v",) and ds.x_v.values.tolist() == list(range(5))
    assert ds.pzsum.dims == ("j",)  # pz[w, :] keeps pz's first dimension
    assert ds.o.dims == ("ident_i",)  # i is make_field's (4 long); k2 is 6 long
    assert ds.k2.values.tolist() == SHAPES_INPUTS["k2"]
    assert ds.o.dtype == object and ds.o.values.tolist() == ["A", "B", "C", "D", "E", "F"]
    assert dict(ds.sizes) == {
        "i": 4,
        "j": 5,
        "r": 4,
        "v": 5,
        "ident_i": 6,
        "field_dim_0": 3,
        "field_dim_1": 4,
    }
    # pz is missing where z is (x == 3): masks flow downstream, attempts say never run
    assert ds.pz_mask.values[3].all() and not ds.pz_mask.values[2].any()
    assert (ds.pair_attempts.values[3] == 0).all()


@pytest.mark.slow
def test_step_datasets_name_dimensions_as_the_run_dataset_does(shapes_run, shapes_ds) -> None:
    for s in shapes_run.steps:
        if s.is_map:
            ds = step_dataset(s)
            for out in s.record.outputs:
                assert ds[out].dims == shapes_ds[out].dims


@pytest.mark.slow
def test_the_run_dataset_writes_and_reads_back(shapes_run, shapes_ds) -> None:
    path = write_run_dataset(shapes_run)
    assert path == shapes_run.path / "dataset.nc"
    with xr.open_dataset(path) as back:
        assert back.field.dims == ("i", "field_dim_0", "field_dim_1")
        np.testing.assert_array_equal(back.field.values, shapes_ds.field.values)
        np.testing.assert_array_equal(back.z.values, shapes_ds.z.values)
        assert back.attrs["pickled_outputs"] == "o"
        assert back.o_mask.attrs["values_in"] == (
            f"steps/{shapes_run.step('ident').path.name}/return_values/o/index.npz"
        )
        assert back.k2.values.tolist() == SHAPES_INPUTS["k2"]


@pytest.mark.slow
def test_input_samples_follow_upstream_maps(shapes_run) -> None:
    samples = flows.input_samples(shapes_run.step("pair"))
    assert len(samples) == 25
    s = samples[2 * 5 + 4]  # u=2, v=4
    assert s["x"] == 2 and s["y"] == 200 and s["x[v]"] == 4
    assert s["pz_mask"] is False
    assert samples[3 * 5]["pz_mask"] is True
    rows = flows.input_samples(shapes_run.step("row_sum").outputs.return_values.s)
    assert rows[1]["grid"].tolist() == [3.0, 4.0, 5.0] and rows[1]["n"] == 4


@pytest.mark.slow
def test_attempts_count_restarts(shapes_ds) -> None:
    assert shapes_ds.flaky_attempts.values.tolist() == [2, 1, 2, 1, 2]
    assert shapes_ds.fx.values.tolist() == [0, 1, 2, 3, 4]
    assert (shapes_ds.flaky_error.values == "").all()  # every element succeeded in the end


@pytest.mark.slow
def test_the_engine_hook_writes_maps_only_and_never_raises(shapes_run, tmp_path) -> None:
    assert write_step_dataset(shapes_run.step("make_grid"), quiet=True) is None
    path = write_step_dataset(shapes_run.step("add").path, quiet=True)
    assert path is not None and path.name == "dataset.nc"
    broken = tmp_path / "00-broken"
    shutil.copytree(shapes_run.step("add").path, broken)
    (broken / "status.json").write_text("{not json")
    assert write_step_dataset(broken, quiet=True) is None
    with pytest.raises(ValueError):
        write_step_dataset(broken)


def _scaler(k: int) -> flows.Step:
    def scale(x: float) -> float:
        return float(x) * k

    scale.__name__ = f"scale{k}"
    return step(scale, returns=f"y{k}")


@pytest.mark.slow
def test_many_maps_finishing_together_write_their_netcdf_safely(local_env, tmp_path) -> None:
    # netCDF4's HDF5 is not thread-safe: maps that end at once used to crash the driver
    # (segfault or bus error) while their threads wrote dataset.nc side by side.
    maps = [map_(_scaler(k), f"x[i] -> y{k}[i]") for k in range(6)]
    flow = new_workflow("many").then(concurrently(*maps))
    for attempt in range(3):
        r = run(flow, local_env, tmp_path / f"s{attempt}", x=list(range(40)))
        assert r.exit_code == 0
        for k in range(6):
            with xr.open_dataset(r.step(f"scale{k}").path / "dataset.nc") as ds:
                assert ds[f"y{k}"].values.tolist() == [float(x * k) for x in range(40)]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["seed", "shapes"])
def test_the_run_dataset_takes_each_map_from_its_current_dataset_nc(
    which, seed_run, shapes_run, tmp_path
) -> None:
    # The run's dataset.nc is built when the run ends, from the maps' own files: reading
    # every element again cost seconds for 100,000 elements.  Both ways give one dataset.
    copy = tmp_path / "run"
    shutil.copytree((seed_run if which == "seed" else shapes_run).path, copy)
    assert list((copy / "steps").glob("*/dataset.nc"))  # the engine wrote them
    from_nc = run_dataset(copy)
    for nc in (copy / "steps").glob("*/dataset.nc"):
        nc.unlink()
    xr.testing.assert_identical(from_nc, run_dataset(copy))


@pytest.mark.slow
def test_a_step_dataset_nc_is_used_only_for_the_ending_it_was_written_for(
    shapes_run, tmp_path
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(shapes_run.path, copy)
    step_dir = copy / "steps" / shapes_run.step("add").path.name
    write_pickle(element_path(step_dir / "return_values" / "z", 1), -7.0)
    where = locate(step_dir / "return_values" / "z")  # element 1 now in a file of its own
    where.put_own(np.array([1]))
    save_index(where)
    assert run_dataset(copy).z.values[1] == 100 + 1  # dataset.nc is current: taken as is
    rec = flows.status.StepStatus.load(step_dir)
    rec.finished = (rec.finished or 0) + 1  # the step ended again (a restart or resume)
    rec.save(step_dir)
    assert run_dataset(copy).z.values[1] == -7.0
    (step_dir / "dataset.nc").write_bytes(b"not netCDF")  # damaged: the elements decide
    assert run_dataset(copy).z.values[1] == -7.0


@pytest.mark.slow
def test_the_run_dataset_takes_the_maps_just_written_as_from_their_files(
    seed_run, tmp_path: Path
) -> None:
    # The helper keeps the map datasets it wrote for the run's, written when the run
    # ends, instead of reading them back: the same dataset either way, and forgotten
    # once the run's is written.
    from parsl_flows.dataset import netcdf

    run_dir = tmp_path / "run"
    shutil.copytree(seed_run.path, run_dir)
    maps = [d for d in sorted((run_dir / "steps").iterdir()) if (d / "dataset.nc").exists()]
    assert len(maps) >= 2
    netcdf._WRITTEN.clear()
    for step_dir in maps:
        write_step_dataset(step_dir)
    assert sorted(netcdf._WRITTEN) == [d / "dataset.nc" for d in maps]
    used = 0
    for step_dir in maps:  # the arrays themselves: no file was read
        outputs, _ = netcdf.stored_values(step_dir, StepStatus.load(step_dir))
        written = netcdf._WRITTEN[step_dir / "dataset.nc"][1]
        assert all(o.data is written[name].values for name, o in outputs.items())
        used += len(outputs)
    assert used
    kept = run_dataset(run_dir)
    write_run_dataset(run_dir)
    assert netcdf._WRITTEN == {}
    xr.testing.assert_identical(kept, run_dataset(run_dir))


@pytest.mark.parametrize("failed", [0, 3, 400])
def test_errors_written_entry_by_entry_read_as_xarray_writes_them(
    tmp_path: Path, failed: int
) -> None:
    # Only the non-empty entries of a step's errors are written (each netCDF text entry
    # is stored apart: most of a big map's file); a file read back is the same as the
    # one xarray writes whole, whether few elements failed or many.
    from parsl_flows.dataset.netcdf import _write_netcdf

    errors = np.full((20, 50), "", dtype=object)
    for n in np.random.default_rng(failed).choice(errors.size, failed, replace=False):
        errors.flat[n] = f"ValueError: element {n} ünïcode"
    ds = xr.Dataset(
        {
            "y": (("a", "b"), np.arange(1000.0).reshape(20, 50), {"step": "f"}),
            "f_error": (("a", "b"), errors.astype(str), {"step": "f", "exit_code": 1}),
            "f_attempts": (("a", "b"), np.ones((20, 50), np.int64)),
        },
        coords={"V": ("a", np.linspace(0, 1, 20)), "W": ("b", np.arange(50))},
        attrs={"run_id": "r"},
    )
    ds.to_netcdf(tmp_path / "whole.nc", engine="netcdf4")
    _write_netcdf(ds, tmp_path / "ours.nc", {})
    with (
        xr.open_dataset(tmp_path / "whole.nc") as whole,
        xr.open_dataset(tmp_path / "ours.nc") as ours,
    ):
        for name in ds.data_vars:
            xr.testing.assert_identical(ours[name], whole[name])
        assert int((ours.f_error != "").sum()) == failed


@pytest.mark.parametrize("shape", [(1000,), (20, 50), (3, 4, 2000)])
def test_errors_are_characters_read_back_in_blocks(
    tmp_path: Path, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    # dataset.nc holds texts as fixed-width characters (CF's classic model), as wide as
    # the longest; the library reads them back a block of rows at a time (small blocks
    # here), decoding only the entries that are not empty, as xarray reads them.
    from parsl_flows.dataset import netcdf
    from parsl_flows.dataset.reading import MAX_ERROR_BYTES, _cut

    monkeypatch.setattr(netcdf, "_TEXT_CHUNK_BYTES", 1 << 16)  # (3, 4, 2000): parts of rows
    monkeypatch.setattr(netcdf, "_TEXT_BLOCK_BYTES", 1 << 18)
    errors = np.full(int(np.prod(shape)), "", dtype=object)
    for k, n in enumerate(np.random.default_rng(1).choice(errors.size, 40, replace=False)):
        errors[n] = f"ValueError: élément {n}" + "!" * k
    errors[7] = _cut("MemoryError: " + "ü" * 2000)  # cut to the limit, on a character
    assert len(errors[7].encode()) <= MAX_ERROR_BYTES and errors[7].endswith("ü…")
    dims = tuple(f"d{k}" for k in range(len(shape)))
    ds = xr.Dataset({"f_error": (dims, errors.reshape(shape), {"long_name": "e"})})
    netcdf._write_netcdf(ds, tmp_path / "e.nc", {})
    with xr.open_dataset(tmp_path / "e.nc") as back:
        assert back.f_error.encoding["dtype"] == np.dtype("S1")  # characters
        np.testing.assert_array_equal(back.f_error.values, ds.f_error.values)
    got = netcdf._read_texts(tmp_path / "e.nc", "f_error")
    assert got is not None and got.dtype == object
    np.testing.assert_array_equal(got, ds.f_error.values)


def test_errors_of_files_written_as_netcdf_strings_still_read(tmp_path: Path) -> None:
    # dataset.nc files written before errors were characters hold netCDF strings.
    from parsl_flows.dataset import netcdf

    errors = np.array(["", "ValueError: x", ""], dtype=object)
    xr.Dataset({"f_error": (("a",), errors)}).to_netcdf(tmp_path / "old.nc", engine="netcdf4")
    assert netcdf._read_texts(tmp_path / "old.nc", "f_error") is None  # xarray reads them
    with xr.open_dataset(tmp_path / "old.nc") as back:
        assert back.f_error.values.tolist() == errors.tolist()
