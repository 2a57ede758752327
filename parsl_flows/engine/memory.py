"""Memory across a step's attempts: how much each attempt has, and who runs again.

The driver's side of ``resources={"memory": ...}`` and ``retry_resources``.  Attempt
``k`` of a step runs with the memory ``retry_resources`` gives it (the step's own
memory without them); on Slurm that is an executor of its own, whose blocks ask for it
(``runner.executor_for``), and on every environment it travels in each task
(``TaskSpec.memory_mb``) to the worker, which holds each element to it
(``memory_limit``).

Which elements that ran out of memory run again (the README's "When things break"):

- An element that raised :class:`~parsl_flows.errors.OutOfMemoryError` on its worker
  (over its limit) would fail again as it was: without ``retry_resources`` it is not
  retried, whatever ``max_restarts`` and ``retry_on`` say.
- An element lost with its block when Slurm killed the block for memory may only have
  been beside the culprit: without ``retry_resources`` it runs once more, alone, as any
  element lost to infrastructure does; lost to a memory kill again, it fails as
  ``OutOfMemoryError`` and is not retried again.
- With ``retry_resources``, an element out of memory either way runs again at once with
  the next attempt's memory while the step's ``max_restarts`` allows: those attempts
  count against it, as a failure of the user's code does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..nodes import Call
from ..step import Resources
from .task_spec import TaskResult

__all__ = ["MemoryRetries", "OutOfMemorySort"]

_OUT_OF_MEMORY = "OutOfMemoryError"


@dataclass
class OutOfMemorySort:
    """What to do with the elements of one task lost to infrastructure (402)."""

    lost: np.ndarray  # not out of memory (or a first memory kill): as any infrastructure loss
    again: np.ndarray  # out of memory: run again with the next attempt's memory
    alone: np.ndarray  # of ``again``, those lost with a killed block: they run alone
    out_of_memory: int  # how many ran out of memory, whatever happens to them next


class MemoryRetries:
    """The memory of each attempt of ``node``, and the out-of-memory retries of its
    ``total`` elements."""

    def __init__(self, node: Call, total: int, log: Callable[[str], None]) -> None:
        self.step = node.step
        self.max_restarts = node.max_restarts
        self.grows = bool(node.step.retry_resources)
        self.log = log
        #: How often each element was lost with a block Slurm killed for memory.
        self.kills = np.zeros(total, dtype=np.int32)
        self._said = False  # that max_restarts=1 leaves retry_resources nothing to do

    def memory_mb(self, attempt: int) -> int | None:
        """The memory each element of attempt ``attempt`` (1-based) may use, in MB."""
        return self.step.retry_resources.memory_mb(self.step.resources.memory_mb, attempt)

    def resources(self, attempt: int) -> Resources:
        """The step's resources, with the memory of attempt ``attempt``."""
        base = self.step.resources
        memory = self.memory_mb(attempt)
        return base if memory == base.memory_mb else dataclasses.replace(base, memory_mb=memory)

    def sort(self, tr: TaskResult, infra: np.ndarray, user_tries: np.ndarray) -> OutOfMemorySort:
        """Sort the elements ``infra`` of ``tr`` (code 402) as the rule in this module's
        docstring says; an out-of-memory retry counts in ``user_tries``."""
        lost: list[int] = []
        again: list[int] = []
        alone: list[int] = []
        out = 0
        for n in infra.tolist():
            message, retryable = tr.failures.get(n, ("", True))
            if not message.startswith(_OUT_OF_MEMORY):
                lost.append(n)
                continue
            out += 1
            # the worker says an element over its limit is not retryable as it was; an
            # element lost with a killed block may have been beside the culprit
            killed = retryable
            self.kills[n] += killed
            if self.grows:
                user_tries[n] += 1
                if user_tries[n] < self.max_restarts:
                    again.append(n)
                    if killed:
                        alone.append(n)
                elif self.max_restarts == 1 and not self._said:
                    self._said = True
                    self.log(
                        f"element {n} ran out of memory; retry_resources would give it more, "
                        "but max_restarts=1 allows no other attempt (raise max_restarts)"
                    )
            elif killed and self.kills[n] < 2:
                lost.append(n)
        ints = np.int64
        return OutOfMemorySort(
            np.array(lost, ints), np.array(again, ints), np.array(alone, ints), out
        )
