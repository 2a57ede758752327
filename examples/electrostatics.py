"""The electrostatics workflow of the examples, as a module the command line can run.

    python -m parsl_flows run examples/electrostatics.py:flow \\
        --inputs examples/electrostatics.json

``flow`` is the failure-handling story of ``03-failures.md``: a geometry, a mesh and the
materials, then an electrostatics map over two voltage sweeps and a charge map over its
output, then the average charge.  Three steps are broken on purpose, each switched by an
input: the mesher raises when ``mesh_error`` is true, the electrostatics raise for voltages
outside ``V_limits`` (persistent failures: those elements stay masked), and the charge
extraction fails at random with probability ``failure_probability`` (transient failures,
which ``with_restarts`` retries).  ``total_flow`` is the same workflow without the breakage.

The ``time.sleep`` calls stand for real work; ``WORK`` keeps the demo to a few seconds.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np

from parsl_flows import FileBasedObjectArray, step
from parsl_flows.workflow import concurrently, map_, new_workflow

WORK = 0.02  # seconds of pretend work per step call (per element in maps)


@dataclass(frozen=True)
class Geometry:
    x: float
    y: float


@dataclass(frozen=True)
class Mesh:
    geometry: Geometry
    mesh_size: float


@dataclass(frozen=True)
class Materials:
    geometry: Geometry
    materials: list[str]


@dataclass(frozen=True)
class Electrostatics:
    mesh: Mesh
    materials: Materials
    voltages: list[float]


# -- the model -----------------------------------------------------------------------------


@step(returns="geo")
def make_geometry(x: float, y: float) -> Geometry:
    time.sleep(WORK)
    return Geometry(x, y)


@step(returns=("mesh", "coarse_mesh"))
def make_mesh(geo: Geometry, mesh_size: float, coarse_mesh_size: float) -> tuple[Mesh, Mesh]:
    time.sleep(WORK)
    return Mesh(geo, mesh_size), Mesh(geo, coarse_mesh_size)


@step(returns="materials")
def make_materials(geo: Geometry) -> Materials:
    time.sleep(WORK)
    return Materials(geo, ["a", "b", "c"])


@step(returns="electrostatics")
def run_electrostatics(
    mesh: Mesh, materials: Materials, V_left: float, V_right: float
) -> Electrostatics:
    time.sleep(WORK)
    return Electrostatics(mesh, materials, [V_left, V_right])


@step(returns="charge")
def get_charge(electrostatics: Electrostatics) -> float:
    # Not really the charge: a number derived from the electrostatics.
    return sum(electrostatics.voltages)


@step(returns="average_charge")
def average_charge(charge: FileBasedObjectArray) -> float:
    # A masked array: np.mean leaves out the elements that failed.
    return float(np.mean(charge.to_array()))


model_flow = (
    new_workflow(name="model_flow")
    .then(make_geometry)
    .then(concurrently(make_mesh, make_materials))  # these two run side by side
)

electrostatics_flow = (
    new_workflow(name="electrostatics_flow")
    .then(map_(run_electrostatics, "V_left[a], V_right[b] -> electrostatics[a, b]"))
    .then(map_(get_charge, "electrostatics[i, j] -> charge[i, j]"))
    .then(average_charge)
)

total_flow = (
    new_workflow(name="total_electrostatics")
    .join(model_flow)
    .join(electrostatics_flow)
    .returning("electrostatics", average_charge="avg_electrostatic_charge")
)


# -- the same model, broken on purpose ---------------------------------------------------------

# Inside a step, call the raw functions (.callable), not the steps.
original_make_mesh = make_mesh.callable
original_electrostatics = run_electrostatics.callable
original_get_charge = get_charge.callable


@step(returns=("mesh", "coarse_mesh"))
def modified_make_mesh(
    geo: Geometry, mesh_size: float, coarse_mesh_size: float, mesh_error: bool
) -> tuple[Mesh, Mesh]:
    if mesh_error:
        raise ValueError("Meshing step failed")
    return original_make_mesh(geo, mesh_size, coarse_mesh_size)


@step(returns="electrostatics")
def modified_electrostatics(
    geo: Geometry,
    mesh: Mesh,
    materials: Materials,
    V_left: float,
    V_right: float,
    V_limits: tuple[float, float],
) -> Electrostatics:
    a, b = V_limits
    if not (a < V_left < b and a < V_right < b):
        raise ValueError(f"Voltages ({V_left}, {V_right}) out of acceptable range {V_limits}")
    return original_electrostatics(mesh, materials, V_left, V_right)


@step(returns="charge")
def modified_get_charge(electrostatics: Electrostatics, failure_probability: float) -> float:
    if random.random() < failure_probability:
        raise ValueError("Randomly failed!")
    return original_get_charge(electrostatics)


new_flow = total_flow.rename("total_flow_with_failures").replace_steps(
    {
        make_mesh: modified_make_mesh,
        run_electrostatics: modified_electrostatics,
        get_charge: modified_get_charge,
    }
)

#: The command line's demo: failures of both kinds, and up to 5 attempts for the charges.
flow = new_flow.rename("electrostatics").with_restarts({modified_get_charge: 5})
