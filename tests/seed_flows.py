"""The seed notebook's steps and flows, as its text defines them (sleeps shortened).

Shared by the plan tests and the engine tests so both check the same workflow.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np

import parsl_flows as flows
from parsl_flows import step
from parsl_flows.workflow import concurrently, first, map_, new_workflow

SLEEP = 0.0


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


@step(returns="geo")
def make_geometry(x: float, y: float) -> Geometry:
    time.sleep(SLEEP)
    return Geometry(x, y)


@step(returns=("mesh", "coarse_mesh"))
def make_mesh(geo: Geometry, mesh_size: float, coarse_mesh_size: float) -> tuple[Mesh, Mesh]:
    time.sleep(SLEEP)
    return Mesh(geo, mesh_size), Mesh(geo, coarse_mesh_size)


@step(returns="materials")
def make_materials(geo: Geometry) -> Materials:
    time.sleep(SLEEP)
    return Materials(geo, ["a", "b", "c"])


@step(returns="electrostatics")
def run_electrostatics(
    mesh: Mesh, materials: Materials, V_left: float, V_right: float
) -> Electrostatics:
    time.sleep(SLEEP)
    return Electrostatics(mesh, materials, [V_left, V_right])


@step(returns="charge")
def get_charge(electrostatics: Electrostatics) -> float:
    return sum(electrostatics.voltages)


@step(returns="average_charge")
def average_charge(charge) -> float:
    return np.mean(charge.to_array())


model_flow = (
    new_workflow(name="model_flow")
    .then(make_geometry)
    .then(concurrently(make_mesh, make_materials))
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

original_make_mesh = make_mesh.callable
original_electrostatics = run_electrostatics.callable
original_get_charge = get_charge.callable


@flows.step(returns=("mesh", "coarse_mesh"))
def modified_make_mesh(geo, mesh_size, coarse_mesh_size, mesh_error):
    if mesh_error:
        raise ValueError("Meshing step failed")
    return original_make_mesh(geo, mesh_size, coarse_mesh_size)


@flows.step(returns="electrostatics")
def modified_electrostatics(geo, mesh, materials, V_left, V_right, V_limits: tuple):
    a, b = V_limits
    if not (a < V_left < b and a < V_right < b):
        raise ValueError(f"Voltages ({V_left}, {V_right}) out of acceptable range {V_limits}")
    return original_electrostatics(mesh, materials, V_left, V_right)


@flows.step(returns="charge")
def modified_get_charge(electrostatics, failure_probability):
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

electrostatics_flow_with_restarts = (
    first(map_(run_electrostatics, "V_left[i], V_right[j] -> electrostatics[i, j]"))
    .then(map_(get_charge, "electrostatics[i, j] -> charge[i, j]", max_restarts=5))
    .then(average_charge)
)

total_flow_with_restarts = new_flow.rename(name="flow_with_restarts").with_restarts(
    {modified_get_charge: 5}
)


def seed_inputs(**changes):
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
