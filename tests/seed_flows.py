"""The seed notebook's steps and flows for the tests: ``examples/electrostatics.py``.

The example module is the seed notebook's code; the tests run it without its pretend
work (``WORK = 0``) and add the two restart flows the notebook builds at its end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import electrostatics as _example
from electrostatics import (  # noqa: F401
    Electrostatics,
    Geometry,
    Materials,
    Mesh,
    average_charge,
    electrostatics_flow,
    get_charge,
    make_geometry,
    make_materials,
    make_mesh,
    model_flow,
    modified_electrostatics,
    modified_get_charge,
    modified_make_mesh,
    new_flow,
    run_electrostatics,
    total_flow,
)

from parsl_flows.workflow import first, map_

_example.WORK = 0.0  # steps read it when they run; pickled by value, they carry the 0

electrostatics_flow_with_restarts = (
    first(map_(run_electrostatics, "V_left[i], V_right[j] -> electrostatics[i, j]"))
    .then(map_(get_charge, "electrostatics[i, j] -> charge[i, j]", max_restarts=5))
    .then(average_charge)
)

total_flow_with_restarts = new_flow.rename(name="flow_with_restarts").with_restarts(
    {modified_get_charge: 5}
)


def seed_inputs(**changes):
    """The seed notebook's inputs (``mesh_error=True`` as in its first run)."""
    inputs = dict(
        mesh_size=0.015,
        V_left=np.linspace(0, 1, 10),
        V_right=np.linspace(-0.5, 0.5, 20),
        x=0.15,
        y=0.25,
        coarse_mesh_size=0.05,
        V_limits=[-0.4, 0.4],
        failure_probability=0.2,
        mesh_error=True,
    )
    inputs.update(changes)
    return inputs
