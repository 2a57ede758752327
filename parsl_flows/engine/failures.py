"""How a failed element is kept: its exception, pickled once, in the step's store.

Part of the worker side (:mod:`parsl_flows.engine.worker`): an element that raises is
stored as ``exception/__<n>__.pickle`` with its traceback as text, its outputs removed
(an element is whole or absent), and the driver gets a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import traceback
from collections.abc import Iterable
from typing import Any

import cloudpickle

from ..store import remove_element, write_element

__all__ = [
    "UnpicklableError",
    "describe",
    "exception_bytes",
    "store_failure",
    "traceback_text",
]


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def exception_bytes(exc: BaseException) -> bytes:
    """The pickle of ``exc`` with its traceback as text, else of a stand-in keeping its type
    and text.

    The traceback travels as text (``remote_traceback``), not as traceback objects: Parsl
    installs tblib's pickling of tracebacks in every process that imports it, and loading
    those compiles code for each frame, which made a failure cost four times as much.
    Pickled once and checked by loading it back; Python's own exception types take plain
    pickle (the same bytes, several times faster than cloudpickle): a map where one element
    in ten fails pays for it on every failure.
    """
    tb = traceback_text(exc)
    with contextlib.suppress(AttributeError):  # some exception types forbid new attributes
        exc.remote_traceback = tb  # type: ignore[attr-defined]
    chain = _chain(exc)
    tracebacks = [e.__traceback__ for e in chain]
    try:
        for e in chain:
            e.__traceback__ = None
        if type(exc).__module__ == "builtins":
            data = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
        else:
            data = cloudpickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:
        return cloudpickle.dumps(UnpicklableError(type(exc).__name__, str(exc), tb))
    finally:
        for e, kept in zip(chain, tracebacks, strict=True):
            e.__traceback__ = kept


class _PlainStack(traceback.StackSummary):
    """Frames formatted as before Python 3.11: file, line and source, without the ``^^^``
    markers under the failing expression, which Python finds by compiling each frame's
    source line (half the cost of a failed element, 40 µs a frame)."""

    def format_frame_summary(self, frame_summary: traceback.FrameSummary, **_: Any) -> str:
        f = frame_summary
        row = f'  File "{f.filename}", line {f.lineno}, in {f.name}\n'
        return row + f"    {f.line.strip()}\n" if f.line else row


def traceback_text(exc: BaseException) -> str:
    """The text Python prints for ``exc`` (its causes and contexts too), minus the markers.

    Built from the frames' file names and line numbers alone: Python's own
    ``TracebackException`` also finds each frame's column positions, by walking the
    frame's whole code, which was most of what a failed element cost the worker.  An
    exception group takes that slower way, which knows how to print its members.
    """
    parts: list[str] = []
    for e, header in _printed_chain(exc):
        if isinstance(e, BaseExceptionGroup):
            return _full_traceback_text(exc)
        parts.append(header)
        if e.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts += _PlainStack.extract(traceback.walk_tb(e.__traceback__)).format()
        parts += traceback.format_exception_only(type(e), e)
    return "".join(parts)


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _printed_chain(exc: BaseException) -> list[tuple[BaseException, str]]:
    """``exc`` and what it was raised from or during, oldest first, as Python follows them
    (a suppressed context is left out, each exception once); with each, the line Python
    prints between the older exception and it."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None:
        seen.add(id(e))
        older: BaseException | None = None
        header = ""
        if e.__cause__ is not None:
            older, header = e.__cause__, _CAUSE
        elif e.__context__ is not None and not e.__suppress_context__:
            older, header = e.__context__, _CONTEXT
        if older is not None and id(older) in seen:
            older, header = None, ""
        chain.append((e, header))
        e = older
    return chain[::-1]


def _full_traceback_text(exc: BaseException) -> str:
    te = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    todo: list[traceback.TracebackException | None] = [te]
    while todo:
        t = todo.pop()
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        plain = _PlainStack()  # not from_list(), which makes a plain StackSummary
        plain.extend(t.stack)
        t.stack = plain
        todo += [t.__cause__, t.__context__, *(getattr(t, "exceptions", None) or [])]
    return "".join(te.format())


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during, each once."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is not None and not any(e is s for s in seen):
            seen.append(e)
            todo += [e.__cause__, e.__context__]
    return seen


class UnpicklableError(Exception):
    """Stands in for a user exception that could not be pickled."""

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (UnpicklableError, (self.type_name, self.message, self.remote_traceback))


def store_failure(outputs: Iterable[str], folder: str, n: int, e: BaseException) -> str:
    """Remove element ``n``'s outputs, keep ``e`` as its exception; the message for the driver.

    On the worker's path, as cheap as writing a result: the ``exception`` folder is made
    by the first failure that finds it missing, not checked by each.
    """
    message = describe(e)
    try:
        for out in outputs:  # an element is whole or absent, never half-written
            remove_element(f"{folder}/return_values/{out}", n)
        exc_dir = f"{folder}/exception"
        data = exception_bytes(e)
        try:
            write_element(exc_dir, n, data)
        except FileNotFoundError:
            os.makedirs(exc_dir, exist_ok=True)
            write_element(exc_dir, n, data)
    except OSError as store_error:
        message += f" (and its exception could not be stored: {store_error})"
    return message[:500]
