"""Exceptions the library records or raises, and the exit codes they stand for."""

from __future__ import annotations

__all__ = ["EXIT_CODES", "InfrastructureError", "OutOfMemoryError"]

#: Exit codes, as in aiida-dynamic-workflows.
EXIT_CODES = {
    0: "ok",
    401: "user code raised an exception",
    402: "infrastructure failure (worker lost, walltime, out of memory)",
    403: "missing output",
    410: "restarts exhausted with elements still failed",
    450: "a step of the workflow failed",
}


class InfrastructureError(Exception):
    """An element did not finish for a reason outside the user's code (exit code 402).

    ``cause`` is a short phrase such as ``"worker lost"``; ``detail`` is what Parsl said.
    """

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (InfrastructureError, (self.cause, self.detail))


class OutOfMemoryError(InfrastructureError, MemoryError):
    """An element used more memory than its step's ``resources={"memory": ...}`` give it.

    Kept as the element's exception (exit code 402, ``cause`` ``"out of memory"``): on a
    worker, a ``MemoryError`` raised under the element's memory limit; on Slurm, a worker
    pool that Slurm killed for exceeding its block job's ``--mem``.  A ``MemoryError``, so
    ``except MemoryError`` catches it, and an :class:`InfrastructureError`, so it counts
    with the failures that are not the user's code.  ``limit_mb`` is the memory the
    element had (MB), ``job`` the batch job it ran in (Slurm), when known.
    """

    def __init__(self, message: str, limit_mb: int | None = None, job: str = "") -> None:
        super().__init__("out of memory", message)
        self.args = (message,)  # str() is the message alone
        self.limit_mb = limit_mb
        self.job = job

    def __str__(self) -> str:
        return self.detail

    def __reduce__(self) -> tuple[type, tuple[str, int | None, str]]:  # type: ignore[override]
        return (OutOfMemoryError, (self.detail, self.limit_mb, self.job))
