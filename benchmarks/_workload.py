"""The work of the map benchmarks (``map_throughput.py``, ``restart_cost.py``), importable.

The seed's shape: ``e[a, b] = f(V_left[a], V_right[b])`` over an outer product, then
``c[a, b] = g(e[a, b])``, then the mean of ``c``.  ``f`` and ``g`` cost about a microsecond
each and return a float, or a :class:`Value` (a small frozen dataclass holding the float)
for the "object" variant.

This module is imported by name, not run: the benchmarks put its folder on ``PYTHONPATH``
(:func:`make_importable`) so that their subprocesses and the Parsl workers import it too.
``Value`` then pickles by reference, as a class of an installed package would, whichever
process writes it; bare Parsl apps made of these functions travel by reference as well.
The parsl_flows steps stay in the benchmark scripts (``__main__``), which parsl_flows ships
by value; they call into this module.

Element files are named, written and read by the parsl_flows store's own functions
(``parsl_flows.files``), exactly as its workers do: ``__<k>__.pickle`` for the element of
linear (C order) index ``k``, plain pickle for floats and cloudpickle otherwise, to a
temporary name in the same folder, then ``os.replace``.  So every system pays the same
per-element file cost, and the differences are the scheduling's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from parsl_flows import element_folders, files

HERE = Path(__file__).resolve().parent
SPIN = 12  # rounds of spin: about 1 µs per call of f or g on a 2020s x86 core


@dataclass(frozen=True)
class Value:
    """The "object" variant's element: one float in a frozen dataclass."""

    x: float


Element = float | Value


def make_importable() -> None:
    """Put this folder on ``PYTHONPATH``: child processes and Parsl workers inherit it."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(HERE) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *paths])


# -- the computation -----------------------------------------------------------------------


def spin(x: float, rounds: int = SPIN) -> float:
    """CPU work without allocation: ``rounds`` multiply-adds."""
    for _ in range(rounds):
        x = x * 0.9990234375 + 0.0009765625
    return x


def as_float(v: Any) -> float:
    return v.x if isinstance(v, Value) else float(v)


def f(x: float, y: float, boxed: bool) -> Element:
    v = spin(x * y + x)
    return Value(v) if boxed else v


def g(e: Element, boxed: bool) -> Element:
    v = spin(as_float(e) + 1.0)
    return Value(v) if boxed else v


def mean_of(values: Iterable[Any]) -> float:
    """The mean, summed exactly (``math.fsum``): the same whatever order the values come in."""
    xs = [as_float(v) for v in values]
    return math.fsum(xs) / len(xs)


def grid_shape(n: int) -> tuple[int, int]:
    """``(A, B)`` with ``A * B == n``: A the largest divisor of n that is <= sqrt(n).

    100000 -> (250, 400), 10000 -> (100, 100), 2000 -> (40, 50); a prime n gives (1, n).
    """
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a, n // a


def voltages(n: int) -> tuple[list[float], list[float]]:
    """``V_left`` (A values in [0, 1]) and ``V_right`` (B values in [-0.5, 0.5])."""
    a, b = grid_shape(n)
    left = [i / max(1, a - 1) for i in range(a)]
    right = [j / max(1, b - 1) - 0.5 for j in range(b)]
    return left, right


# -- element files -------------------------------------------------------------------------


def write_element(folder: str, k: int, value: Any) -> None:
    """Element ``k`` into ``folder`` exactly as a parsl_flows worker writes it."""
    files.write_element(folder, k, files.dumps(value))


def read_element(folder: str, k: int) -> Any:
    """Element ``k`` of ``folder``, its own file, as parsl_flows reads an element file."""
    return files._read_batch(folder, [k])[0]


def e_element(x: float, y: float, boxed: bool, folder: str, k: int) -> str:
    """Element ``k`` of the first map, written into ``folder``; returns ``folder``."""
    write_element(folder, k, f(x, y, boxed))
    return folder


def c_element(e_folder: str, boxed: bool, folder: str, k: int) -> str:
    """Element ``k`` of the second map, from the first map's file; returns ``folder``."""
    write_element(folder, k, g(read_element(e_folder, k), boxed))
    return folder


def e_range(
    v_left: list[float], v_right: list[float], boxed: bool, folder: str, start: int, stop: int
) -> str:
    """Elements ``start:stop`` (C order) of the first map into ``folder``; returns ``folder``."""
    n_right = len(v_right)
    for k in range(start, stop):
        e_element(v_left[k // n_right], v_right[k % n_right], boxed, folder, k)
    return folder


def c_range(e_folder: str, boxed: bool, folder: str, start: int, stop: int) -> str:
    """Elements ``start:stop`` of the second map, read from ``e_folder``; returns ``folder``."""
    for k in range(start, stop):
        c_element(e_folder, boxed, folder, k)
    return folder


def mean_of_files(folder: str, n: int) -> float:
    """The mean of the ``n`` element files in ``folder``, read as ``to_array()`` reads them."""
    return mean_of(element_folders.load_elements(folder, range(n)))


def chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into ``parts`` contiguous ``(start, stop)`` pieces of near-equal size."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in pairwise(bounds) if hi > lo]


# -- running one measurement in a fresh process -----------------------------------------------


def fresh_folder(root: Path | str | None, prefix: str) -> Path:
    """A new folder under ``root`` (made if needed), or a fresh temporary one."""
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root)).resolve()


def run_child(cmd: list[str], what: str) -> dict[str, Any]:
    """Run ``cmd`` (a benchmark's ``--only`` mode) and return its last ``RESULT {json}`` line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{what} failed (exit status {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


class FirstFiles(threading.Thread):
    """When (``time.time()``) the first element file of some steps of a new run appeared.

    ``steps`` are globs of step folder names (``"00-*"``: the first step; ``"*-g_step"``).
    Polls every 5 ms, each step's folder until it has one file, in the measured process.
    """

    def __init__(self, store: Path, steps: list[str]) -> None:
        super().__init__(daemon=True)
        self.store, self.steps = store, steps
        self.known = set((store / "runs").glob("*"))
        self.found: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and len(self.found) < len(self.steps):
            for run_dir in set((self.store / "runs").glob("*")) - self.known:
                for step in self.steps:
                    if step in self.found:
                        continue
                    for folder in (run_dir / "steps").glob(f"{step}/return_values/*"):
                        with os.scandir(folder) as entries:
                            if any(e.name.endswith(".pickle") for e in entries):
                                self.found[step] = time.time()
            time.sleep(0.005)

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.join()
        return self.found
