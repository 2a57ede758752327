"""The attributes a step gives its outputs' variables: ``@step(attrs=...)``.

A map's dataset, and its ``dataset.nc``, describe each output by CF attributes
(``units``, ``long_name``, ``standard_name``, ...: the CF conventions, section 3).  The
user knows them; ``@step(returns="charge", attrs={"charge": {"units": "C"}})`` says them,
and the attributes of an ``xarray.DataArray`` given as a swept input go to its coordinate
(:func:`netcdf_attrs`).  Checked when the step is made, so a typo fails at once, not when
the file is written after hours of work.

>>> check_attrs({"charge": {"units": "C"}}, ("charge",), "get_charge")
{'charge': {'units': 'C'}}
>>> check_attrs({"chrage": {"units": "C"}}, ("charge",), "get_charge")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: step 'get_charge': attrs gives attributes of 'chrage', which is not one of its ...
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["check_attrs", "netcdf_attrs"]

logger = logging.getLogger(__name__)

#: An attribute name as the CF conventions want it (section 2.3).
_ATTR_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Attributes of a map output's variable that parsl_flows or xarray write themselves.
_RESERVED_ATTRS = {
    "step": "the step's name",
    "mapspec": "the step's mapspec",
    "exit_code": "the step's exit code",
    "coordinates": "the variable's coordinates (xarray writes it)",
    "ancillary_variables": "the output's mask, errors and attempts",
    "dtype": "xarray's note of a boolean variable",
    "missing_value": "xarray's encoding",
    "scale_factor": "xarray's encoding",
    "add_offset": "xarray's encoding",
}
#: Attributes whose value is text, with an example.
_TEXT_ATTRS = {
    "units": "'C' or 'm s-1'",
    "long_name": "'charge'",
    "standard_name": "'air_temperature'",
}


def check_attrs(
    attrs: Mapping[str, Any] | None, returns: tuple[str, ...], owner: str
) -> dict[str, dict[str, Any]]:
    """``attrs=`` of :func:`step`, checked: per output name, netCDF attributes of its
    variable in datasets and ``dataset.nc`` (``units``, ``long_name``, ``standard_name``,
    ...), as plain JSON values (they are kept in the step's ``status.json``).

    >>> check_attrs({"charge": {"units": "C", "valid_range": (0, 1)}}, ("charge",), "f")
    {'charge': {'units': 'C', 'valid_range': [0, 1]}}
    """
    if attrs is None:
        return {}
    example = f"attrs={{{returns[0]!r}: {{'units': 'C', 'long_name': 'charge on the plate'}}}}"
    if not isinstance(attrs, Mapping):
        raise TypeError(
            f"attrs of step {owner!r} must be a dict from output name to that output's "
            f"attributes, such as {example}, not {attrs!r}"
        )
    out: dict[str, dict[str, Any]] = {}
    for output, given in attrs.items():
        if output not in returns:
            raise ValueError(
                f"step {owner!r}: attrs gives attributes of {output!r}, which is not one of "
                f"its outputs {returns}; key them by output name: {example}"
            )
        if not isinstance(given, Mapping):
            raise TypeError(
                f"step {owner!r}: attrs[{output!r}] must be a dict of attributes, such as "
                f"{{'units': 'C', 'long_name': '...'}}, not {given!r}"
            )
        out[output] = {
            name: _attr_value(f"step {owner!r}: attrs[{output!r}]", name, value)
            for name, value in given.items()
        }
    return out


def _attr_value(owner: str, name: Any, value: Any) -> Any:
    """One attribute's value as netCDF (and JSON) can hold it, or a clear error."""
    where = f"{owner}[{name!r}]"
    if not isinstance(name, str) or not _ATTR_NAME.fullmatch(name):
        raise ValueError(
            f"{where}: an attribute name must begin with a letter and be made of letters, "
            "digits and underscores (the CF conventions' rule), such as 'units' or 'long_name'"
        )
    if name in _RESERVED_ATTRS:
        raise ValueError(
            f"{where}: parsl_flows sets {name!r} itself ({_RESERVED_ATTRS[name]}); leave it out"
        )
    if isinstance(value, str):
        return value
    if name in _TEXT_ATTRS:
        raise TypeError(f"{where} must be a string, such as {_TEXT_ATTRS[name]}, not {value!r}")
    if hasattr(value, "tolist") and not isinstance(value, bool):  # numpy scalars, 1-D arrays
        value = value.tolist()
    if isinstance(value, tuple | list) and value and all(_is_number(v) for v in value):
        return list(value)
    if _is_number(value):
        return value
    raise TypeError(
        f"{where} is {value!r}: an attribute holds a string, a number or a list of numbers "
        "(netCDF has no booleans: use 0 and 1 or a string)"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def netcdf_attrs(given: Any, owner: str) -> dict[str, Any]:
    """The attributes in ``given`` (an ``xarray.DataArray``'s ``attrs``) that a netCDF file
    can hold as :func:`check_attrs` wants them; the others are left out (and logged).
    ``owner`` names them in the log (``"input 'V_left'"``).

    >>> netcdf_attrs({"units": "V", "history": {"by": "me"}, "valid_max": 2.0}, "input 'V'")
    {'units': 'V', 'valid_max': 2.0}
    """
    if not isinstance(given, Mapping):
        return {}
    out: dict[str, Any] = {}
    for name, value in given.items():
        try:
            out[name] = _attr_value(owner, name, value)
        except (TypeError, ValueError) as e:
            logger.info("%s: attribute %r left out of datasets: %s", owner, name, e)
    return out
