"""The CF conventions of a map's dataset: what each variable says about itself.

Part of :mod:`parsl_flows.dataset`.  A ``dataset.nc`` follows the CF conventions
(``Conventions = "CF-1.10"``), so that climate and ocean tools (ncview, Panoply,
cf-python, CDO) read it, and the same attributes are on the in-memory dataset
(``run.dataset()``): the file is that dataset, written down.

- every variable has a ``long_name``; ``units`` where they are known: those the user
  gives (``@step(attrs=...)``, the ``attrs`` of an ``xarray.DataArray`` swept over), and
  the library's own (seconds, bytes, counts);
- ``<output>_mask`` is a flag variable (CF section 3.5, ``standard_name = "status_flag"``):
  ``flag_values = 0, 1``, ``flag_meanings = "present missing"``; each output names its
  mask, errors and attempts in ``ancillary_variables``;
- texts (the errors, hosts, jobs, text coordinates) are fixed-width character arrays
  with a string-length dimension, which xarray reads back as text (``netcdf.py``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..attributes import netcdf_attrs

#: The version of the CF conventions ``dataset.nc`` follows.
CONVENTIONS = "CF-1.10"


@functools.cache
def _version() -> str:
    """The library's version, for the files' ``source`` and ``history``."""
    try:
        return importlib.metadata.version("parsl_flows")
    except importlib.metadata.PackageNotFoundError:  # a copy of the source, not installed
        return "(version unknown)"


#: A mask's flags: False (0) where the element is there, True (1) where it is missing.
MASK_FLAGS: dict[str, Any] = {
    "standard_name": "status_flag",
    "flag_values": np.array([0, 1], dtype=np.int8),  # a mask is written as bytes
    "flag_meanings": "present missing",
}


def output_attrs(
    name: str, step: str, common: Mapping[str, Any], given: Mapping[str, Any] | None
) -> dict[str, Any]:
    """An output's variable: ``long_name`` its name unless the user ``given`` one."""
    return {
        **common,
        "long_name": name,
        **(given or {}),
        "ancillary_variables": f"{name}_mask {step}_error {step}_attempts",
    }


def mask_attrs(name: str, common: Mapping[str, Any]) -> dict[str, Any]:
    return {**common, "long_name": f"{name} is missing", **MASK_FLAGS}


def coordinate_attrs(name: str, value: Any, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """A coordinate of swept values: the attributes of the ``xarray.DataArray`` swept
    over (or the ones the step that made it gave), else only its name as ``long_name``;
    no ``units`` where nobody said them."""
    own = netcdf_attrs(getattr(value, "attrs", None), f"input {name!r}")
    return {"long_name": name, **own, **(given or {}), "input": name}


def position_attrs(dim: str) -> dict[str, Any]:
    """A dimension without swept values: its positions 0, 1, ... (a count: units 1)."""
    return {"long_name": f"position along {dim}", "units": "1"}


def global_attrs(title: str, created: float | None, **rest: Any) -> dict[str, Any]:
    """A dataset's own attributes: the conventions, a title, where it came from, and
    ``rest`` (those that are None left out: netCDF cannot hold them)."""
    when = "" if created is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    run_id = rest.get("run_id")
    made = f"computed by parsl_flows {_version()}" + (f" in run {run_id}" if run_id else "")
    return {
        "Conventions": CONVENTIONS,
        "title": title,
        "source": f"parsl_flows {_version()}",
        "history": f"{when}: {made}" if when else made,
        **{k: v for k, v in rest.items() if v is not None},
    }
