"""dataset.nc follows the CF conventions: the checkers say so of real runs (issue 21).

The seed story, run for real: persistent failures (voltages outside ``V_limits``), random
ones retried within the run (``max_restarts=5``), then a restart that reuses what worked;
the charge step gives its output ``units`` and a ``long_name`` (``@step(attrs=...)``),
and the voltages swept over are ``xarray.DataArray``s with attributes of their own.
Every ``dataset.nc`` of both runs, the run's and each map's, is checked by:

- the IOOS compliance checker (``compliance-checker``), suite ``cf:1.10``, strict: the
  version the file declares (``Conventions = "CF-1.10"``);
- CEDA's CF checker (``cfchecker``, ``cfchecks``), which knows CF up to 1.8 only
  (4.1.0, the newest release): it checks a copy whose ``Conventions`` says CF-1.8 (it
  calls a file of a version it does not know "not CF data").  It reads the CF tables
  from the small copies in ``tests/data/cf`` (it would download them otherwise).

Both must find nothing at all: no error, no warning, nor (compliance checker) any
suggestion.  Where the user says nothing (the seed story as it is), the file passes the
CF-1.10 checker as well; cfchecker then asks for the ``units`` of the swept values, which
nobody gave (and which the library does not make up).

Skipped only where a checker is not installed: ``pip install -e '.[dev]'`` installs both,
and cfchecker needs the udunits2 C library (Debian: ``libudunits2-0``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import seed_flows as seed
import xarray as xr

import parsl_flows as flows
from parsl_flows import step

pytestmark = pytest.mark.slow

TABLES = Path(__file__).parent / "data" / "cf"

needs_compliance_checker = pytest.mark.skipif(
    importlib.util.find_spec("compliance_checker") is None,
    reason="the IOOS compliance checker is not installed: pip install -e '.[dev]'",
)
needs_cfchecker = pytest.mark.skipif(
    importlib.util.find_spec("cfchecker") is None,
    reason="cfchecker is not installed: pip install -e '.[dev]' (it needs libudunits2-0)",
)

CHARGE_ATTRS = {"units": "C", "long_name": "charge on the plates"}


@step(returns="charge", attrs={"charge": CHARGE_ATTRS})
def charge_in_coulomb(electrostatics, failure_probability):
    return seed.modified_get_charge.callable(electrostatics, failure_probability)


def voltages(values: np.ndarray, side: str) -> xr.DataArray:
    return xr.DataArray(
        values,
        dims=f"V_{side}",
        attrs={"units": "V", "long_name": f"voltage on the {side} plate", "tag": {"not": 1}},
    )


def story(env, store: Path, *, described: bool) -> tuple[flows.Run, flows.Run]:
    """The seed story's run and its restart; ``described``: with the user's attributes."""
    inputs = seed.seed_inputs(mesh_error=False)
    flow = seed.new_flow
    if described:
        inputs["V_left"] = voltages(inputs["V_left"], "left")
        inputs["V_right"] = voltages(inputs["V_right"], "right")
        flow = flow.replace_steps({seed.modified_get_charge: charge_in_coulomb})
        flow = flow.with_restarts({charge_in_coulomb: 5})
    else:
        flow = flow.with_restarts({seed.modified_get_charge: 5})
    first = flows.run(flows.workflow.build(flow.on(env), **inputs), store=store)
    again = flows.run(first.get_builder_restart(), store=store)
    for r in (first, again):
        assert r.step("modified_electrostatics").exit_code == 401, flows.report.log(r)
    return first, again


def files_of(*runs: flows.Run) -> list[Path]:
    out = []
    for r in runs:
        out.append(r.path / "dataset.nc")
        out += [s.path / "dataset.nc" for s in r.steps if s.is_map]
    assert all(p.exists() for p in out), out
    return out


@pytest.fixture(scope="module")
def described(thread_env, tmp_path_factory) -> tuple[flows.Run, flows.Run]:
    return story(thread_env, tmp_path_factory.mktemp("cf-described"), described=True)


@pytest.fixture(scope="module")
def plain(thread_env, tmp_path_factory) -> tuple[flows.Run, flows.Run]:
    return story(thread_env, tmp_path_factory.mktemp("cf-plain"), described=False)


# -- the checkers --------------------------------------------------------------------------

COMPLIANCE_CHECKER = textwrap.dedent(
    """
    import sys
    from compliance_checker.runner import CheckSuite, ComplianceChecker
    CheckSuite.load_all_available_checkers()
    ComplianceChecker.run_checker(
        sys.argv[1], ["cf:1.10"], 0, "strict", output_filename=sys.argv[2], output_format="json"
    )
    """
)


def compliance_checker(path: Path, tmp_path: Path) -> dict[str, list[str]]:
    """What the IOOS compliance checker's ``cf:1.10`` suite says of ``path``, by priority."""
    report = tmp_path / f"{path.parent.name}-{path.stem}.json"
    subprocess.run(
        [sys.executable, "-c", COMPLIANCE_CHECKER, str(path), str(report)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    got = json.loads(report.read_text())["cf:1.10"]
    assert got["cc_spec_version"] == "1.10"
    return {
        level: [f"{r['name']}: {m}" for r in got[f"{level}_priorities"] for m in r["msgs"]]
        for level in ("high", "medium", "low")
    }


def cfchecker(path: Path, tmp_path: Path) -> tuple[int, int, list[str], str]:
    """cfchecker 4.1's errors, warnings and their lines for ``path``, checked as CF-1.8."""
    copy = tmp_path / f"{path.parent.name}-{path.name}"
    shutil.copyfile(path, copy)
    with netCDF4.Dataset(copy, "a") as nc:
        assert nc.getncattr("Conventions") == "CF-1.10"
        nc.setncattr("Conventions", "CF-1.8")
    out = subprocess.run(
        [
            *(sys.executable, "-m", "cfchecker.cfchecks", "-v", "1.8"),
            *("-s", str(TABLES / "cf-standard-name-table.xml")),
            *("-a", str(TABLES / "area-type-table.xml")),
            *("-r", str(TABLES / "standardized-region-list.xml")),
            str(copy),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert "Checking against CF Version CF-1.8" in out, out
    counts = re.findall(r"^(?:ERRORS detected|WARNINGS given): (\d+)$", out, re.MULTILINE)
    assert len(counts) == 2, out
    findings, variable = [], "(global)"
    for line in out.splitlines():
        if line.startswith("Checking variable: "):
            variable = line.removeprefix("Checking variable: ")
        elif line.startswith(("ERROR:", "WARN:", "FATAL:")):
            findings.append(f"{variable}: {line}")
    return int(counts[0]), int(counts[1]), findings, out


# -- the tests -----------------------------------------------------------------------------


@needs_compliance_checker
def test_every_dataset_nc_passes_the_cf_1_10_checker(described, plain, tmp_path) -> None:
    for path in files_of(*described, *plain):
        said = compliance_checker(path, tmp_path)
        assert said == {"high": [], "medium": [], "low": []}, (path, said)


@needs_cfchecker
def test_every_dataset_nc_passes_cfchecker(described, tmp_path) -> None:
    for path in files_of(*described):
        errors, warnings, findings, out = cfchecker(path, tmp_path)
        assert (errors, warnings) == (0, 0), (path, findings, out)


@needs_cfchecker
def test_without_units_cfchecker_asks_only_for_the_units_of_the_swept_values(
    plain, tmp_path
) -> None:
    for path in files_of(*plain):
        errors, _, findings, out = cfchecker(path, tmp_path)
        assert errors == 0, (path, findings, out)
        assert sorted(findings) == [
            "V_left: WARN: (3.1): units attribute should be present",
            "V_right: WARN: (3.1): units attribute should be present",
        ], (path, out)


def test_the_file_says_what_the_user_said_and_reads_back_as_the_dataset(described) -> None:
    run = described[1]
    ds = run.dataset()
    path = run.path / "dataset.nc"
    with xr.open_dataset(path) as back:
        assert back.attrs["Conventions"] == "CF-1.10"
        assert {"title", "history", "source"} <= set(back.attrs)
        assert back.charge.attrs.items() >= CHARGE_ATTRS.items()  # the step's attributes
        assert back.V_left.attrs["units"] == "V"
        assert back.V_left.attrs["long_name"] == "voltage on the left plate"
        assert "tag" not in back.V_left.attrs  # a dict: no netCDF attribute, left out
        mask = back.electrostatics_mask
        assert mask.dtype == bool and mask.attrs["flag_meanings"] == "present missing"
        assert mask.attrs["flag_values"].tolist() == [0, 1]
        assert back.charge.attrs["ancillary_variables"].split() == [
            "charge_mask",
            "charge_in_coulomb_error",
            "charge_in_coulomb_attempts",
        ]
        for name in back.variables:  # everything says what it is
            assert back[name].attrs.get("long_name"), name
        # The file is the dataset, written down: the same values, and the same attributes
        # (less what xarray keeps as encoding; plus where the pickled outputs are).
        assert int((back.modified_electrostatics_error != "").sum()) == 136
        for name in back.variables:
            np.testing.assert_array_equal(back[name].values, ds[name].values, err_msg=name)
            for key, value in back[name].attrs.items():
                if key == "values_in":
                    continue
                np.testing.assert_array_equal(value, ds[name].attrs[key], err_msg=f"{name}.{key}")


def test_where_nobody_says_the_units_there_are_none(plain) -> None:
    with xr.open_dataset(plain[1].path / "dataset.nc") as back:
        assert back.V_left.attrs == {"long_name": "V_left", "input": "V_left"}
        assert back.charge.attrs["long_name"] == "charge" and "units" not in back.charge.attrs


@pytest.mark.skipif(shutil.which("ncdump") is None, reason="ncdump (netcdf-bin) not installed")
def test_ncdump_reads_the_whole_file(described) -> None:
    path = described[1].path / "dataset.nc"
    dump = subprocess.run(["ncdump", str(path)], capture_output=True, text=True, check=True)
    # Errors are characters with a length dimension, not netCDF strings.
    assert re.search(r"char modified_electrostatics_error\(a, b, string\d+\) ;", dump.stdout)
    assert "out of acceptable range" in dump.stdout
    assert 'charge:units = "C" ;' in dump.stdout
    assert "electrostatics_mask:flag_values = 0b, 1b ;" in dump.stdout


def test_maps_of_the_restart_take_their_values_from_the_files_unchanged(described) -> None:
    # The run's dataset.nc is built from its maps' own files (texts read back in blocks):
    # the same dataset as from the element files.
    from parsl_flows.dataset import netcdf, run_dataset

    run = described[1]
    netcdf._WRITTEN.clear()
    from_files = run_dataset(run)
    for step_run in run.steps:
        if step_run.is_map:
            (step_run.path / "dataset.nc").rename(step_run.path / "kept.nc")
    try:
        xr.testing.assert_identical(from_files, run_dataset(run))
    finally:
        for step_run in run.steps:
            if step_run.is_map:
                (step_run.path / "kept.nc").rename(step_run.path / "dataset.nc")
