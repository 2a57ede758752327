"""How a step's outcome reads: its exit code from its elements', and its log's last lines."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from ..mapspec import MapSpec
from ..status import StepStatus
from .task_spec import INFRASTRUCTURE, MISSING_OUTPUT, OK, USER_ERROR

__all__ = ["exit_code_of", "log_call_outcome", "log_map_outcome"]

#: A map's log names this many failed elements, then says how many more there are.
_MAX_LOGGED_FAILURES = 10


def exit_code_of(codes: Iterable[int]) -> int:
    """A step's exit code from its elements': 401 if any raised, else 403, else 402, else 0."""
    seen = set(codes)
    for code in (USER_ERROR, MISSING_OUTPUT, INFRASTRUCTURE):
        if code in seen:
            return code
    return OK


def log_call_outcome(log: Callable[[str], None], st: StepStatus, code: int, message: str) -> None:
    """Say how a plain call ended; a failed one's message becomes the step's."""
    if st.exit_code == OK:
        log(f"finished: outputs {', '.join(st.outputs)} written")
        return
    what = {
        USER_ERROR: "User code raised an Exception",
        MISSING_OUTPUT: "User code did not return every declared output",
        INFRASTRUCTURE: "The task was lost to an infrastructure failure",
    }.get(code, "failed")
    st.message = message or what
    log(f"{what} (exit code {st.exit_code}): {st.message}\nreturned the 'exception' output")


def log_map_outcome(
    log: Callable[[str], None],
    st: StepStatus,
    shape: tuple[int, ...],
    codes: dict[int, int],
    messages: dict[int, str],
) -> None:
    """Count a map's outcomes, group its failures by type and name the first few."""
    log(
        f"{st.n_done} elements succeeded ({st.n_reused} of them taken from the store), "
        f"{st.n_failed} failed in user code, {st.n_infra} lost to infrastructure failures"
    )
    failed = sorted(n for n, c in codes.items() if c != OK)
    if not failed:
        return
    kinds = Counter(messages[n].split(":", 1)[0] for n in failed)
    log("failures by type: " + ", ".join(f"{c} x {k}" for k, c in kinds.most_common()))
    for n in failed[:_MAX_LOGGED_FAILURES]:
        log(f"  element {n} {MapSpec.output_key(n, shape)}: {messages[n]}")
    if len(failed) > _MAX_LOGGED_FAILURES:
        more = len(failed) - _MAX_LOGGED_FAILURES
        log(f"  ... and {more} more (see the exception output)")
