"""@step(attrs=...): the attributes a step gives its outputs' variables, checked early."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from parsl_flows import step
from parsl_flows.attributes import check_attrs, netcdf_attrs
from parsl_flows.status import StepStatus


def charge(electrostatics: float) -> float:
    return electrostatics


def test_attributes_are_kept_per_output_as_plain_values() -> None:
    s = step(
        charge,
        returns="charge",
        attrs={"charge": {"units": "C", "valid_range": np.array([0.0, 1.0]), "n": np.int32(3)}},
    )
    assert s.attrs == {"charge": {"units": "C", "valid_range": [0.0, 1.0], "n": 3}}
    assert type(s.attrs["charge"]["n"]) is int  # JSON can hold it (status.json)
    assert step(charge, returns="charge").attrs == {}


@pytest.mark.parametrize(
    ("attrs", "error", "says"),
    [
        ({"chrage": {"units": "C"}}, ValueError, "'chrage', which is not one of its outputs"),
        ("C", TypeError, "must be a dict from output name to that output's attributes"),
        ({"charge": "C"}, TypeError, r"attrs\['charge'\] must be a dict of attributes"),
        ({"charge": {"units": 1}}, TypeError, "must be a string, such as 'C'"),
        ({"charge": {"ok": True}}, TypeError, "netCDF has no booleans"),
        ({"charge": {"ok": {"a": 1}}}, TypeError, "a string, a number or a list of numbers"),
        ({"charge": {"ok": []}}, TypeError, "a string, a number or a list of numbers"),
        ({"charge": {"_FillValue": 0.0}}, ValueError, "must begin with a letter"),
        ({"charge": {"long name": "x"}}, ValueError, "must begin with a letter"),
        ({"charge": {"coordinates": "x"}}, ValueError, "sets 'coordinates' itself"),
        ({"charge": {"step": "x"}}, ValueError, "sets 'step' itself"),
    ],
)
def test_wrong_attributes_fail_when_the_step_is_made(attrs, error, says) -> None:
    with pytest.raises(error, match=says) as caught:
        step(returns="charge", attrs=attrs)(charge)
    assert "'charge'" in str(caught.value)  # names the step (and the fix)


def test_a_step_pickled_before_attrs_existed_has_none() -> None:
    s = step(charge, returns="charge")
    del s.__dict__["attrs"]  # as a stored plan's step, pickled by an older version
    old = pickle.loads(pickle.dumps(s))
    assert dict(old.attrs) == {}


def test_a_status_written_before_attrs_existed_has_none(tmp_path: Path) -> None:
    StepStatus("square", 0, "map", ["y"], attrs={"y": {"units": "m"}}).save(tmp_path)
    assert StepStatus.load(tmp_path).attrs == {"y": {"units": "m"}}
    text = (tmp_path / "status.json").read_text()
    (tmp_path / "status.json").write_text(text.replace('"attrs"', '"not_known"'))
    assert StepStatus.load(tmp_path).attrs == {}


def test_attributes_of_an_input_keep_what_netcdf_can_hold() -> None:
    given = {"units": "V", "long_name": "left", "history": {"a": 1}, "flag": True, "_x": 1}
    assert netcdf_attrs(given, "input 'V_left'") == {"units": "V", "long_name": "left"}
    assert netcdf_attrs(None, "input 'x'") == {}
    assert check_attrs(None, ("y",), "f") == {}
