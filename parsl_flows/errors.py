"""Exceptions the library records or raises, and the exit codes they stand for."""

from __future__ import annotations

__all__ = ["EXIT_CODES", "InfrastructureError"]

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
