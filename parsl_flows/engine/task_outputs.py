"""What a worker task sends back of its elements' outputs, beside their task files.

Part of the worker side (:mod:`parsl_flows.engine.worker`).  For each output of a map,
while every value is a plain number, the values themselves, sent back to the driver with
the task's codes (8 bytes an element): the driver writes the map's ``dataset.nc`` and its
numbers file (``parsl_flows/numbers_file.py``) from them.  Only elements that succeeded
count, in the order they ran.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from ..numbers_file import kind_of

__all__ = ["NUMBER_TYPES", "TaskOutputs", "number_arrays"]

#: The types of the values sent back: numbers that numpy holds exactly as the file does.
NUMBER_TYPES = frozenset(
    {float, int, bool, complex, np.float64, np.float32, np.int64, np.int32, np.bool_}
)


def number_arrays(numbers: dict[str, list[Any] | None]) -> dict[str, np.ndarray]:
    """Each output's numbers as an array; an output without numbers is left out."""
    arrays = {}
    for out, values in numbers.items():
        if values:  # none at all says nothing of the dtype
            with contextlib.suppress(OverflowError):  # an int past int64: read from its file
                arrays[out] = np.asarray(values)
    return arrays


def _one_kind(values: list[Any] | None) -> str:
    types = set(map(type, values or ()))
    return kind_of(values[0]) if values and len(types) == 1 else ""


class TaskOutputs:
    """The plain numbers of one task's elements that succeeded (see module)."""

    def __init__(self, outputs: tuple[str, ...] | list[str]) -> None:
        self.numbers: dict[str, list[Any] | None] = {out: [] for out in outputs}

    def add(self, n: int, values: dict[str, Any]) -> None:
        """Element ``n`` succeeded with ``values``."""
        for out, numbers in self.numbers.items():
            if numbers is not None:
                value = values[out]
                if type(value) in NUMBER_TYPES:
                    numbers.append(value)
                else:
                    self.numbers[out] = None

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """The numbers sent back and their kinds, per output."""
        values = number_arrays(self.numbers)
        return values, {out: _one_kind(self.numbers[out]) for out in values}
