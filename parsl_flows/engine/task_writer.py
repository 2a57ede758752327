"""Where a map task's elements go on the worker: kept, journaled, then written per task.

Part of the worker side (:mod:`parsl_flows.engine.worker`).  A task keeps its elements'
pickles in memory and, at its end, writes one file per output for the elements that
succeeded and one ``exception`` file for those that failed (``element_folders``), each
whole: a map of cheap elements costs a file per task, not per element.

A worker may die mid-task (a segfault, the out-of-memory killer, a node lost).  So a
task of several elements also appends a record per finished element to its journal,
``steps/NN-name/journal/<task>``: one ``write`` each, no file made or renamed per element
(what costs a round trip to a shared filesystem's metadata server).  The driver reads
the journal of a task whose worker died: the elements it records are kept, the first
element it lacks was running (the suspect, retried alone), the rest never started.
Values are journaled while a task's journal stays under :data:`JOURNAL_BYTES`; beyond,
records carry codes only, and those elements are computed again (no try counted).
A task that ends normally removes its journal after its files are written.

A record is an 8-byte little-endian length, then the pickle of ``(n, code, payload,
message, retryable, ended)``: ``payload`` is the list of the element's output pickles
(code 0), its exception's pickle (a failure), or None; ``ended`` says the worker ends
after this element (it ignored its walltime), so no element after it is a suspect.

Standard library and numpy only: imported on workers.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
from typing import Any

from ..element_folders import task_file_name, write_task_file
from .failures import exception_bytes

__all__ = [
    "JOURNAL_BYTES",
    "JournalRecord",
    "TaskWriter",
    "journal_path",
    "read_journal",
    "write_failures",
    "write_values",
]

#: A task's journal carries its elements' values while it holds at most this.
JOURNAL_BYTES = 8 << 20
_HEADER = struct.Struct("<Q")

#: ``(n, code, payload, message, retryable, ended)``, as the module says.
JournalRecord = tuple[int, int, Any, str, bool, bool]


def journal_path(step_dir: str, name: str) -> str:
    return os.path.join(step_dir, "journal", name)


def read_journal(path: str) -> list[JournalRecord]:
    """The whole records of a journal (a record cut by the worker's death is left out);
    [] when there is none."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    records: list[JournalRecord] = []
    at = 0
    while at + _HEADER.size <= len(data):
        (length,) = _HEADER.unpack_from(data, at)
        body = data[at + _HEADER.size : at + _HEADER.size + length]
        if len(body) < length:
            break
        try:
            records.append(pickle.loads(body))
        except Exception:  # cut or garbled: what follows cannot be trusted either
            break
        at += _HEADER.size + length
    return records


class TaskWriter:
    """The elements of one map task, until they are written as its files (see module)."""

    def __init__(self, step_dir: str, name: str, outputs: tuple[str, ...], count: int) -> None:
        self.step_dir, self.name, self.outputs = step_dir, name, outputs
        self.ok: list[int] = []
        self.values: list[list[bytes]] = [[] for _ in outputs]
        self.failed: list[int] = []
        self.exceptions: list[bytes] = []
        self.journal_fd: int | None = None
        self.journaled = 0
        if count > 1:
            path = journal_path(step_dir, name)
            try:
                self.journal_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self.journal_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def _journal(self, record: JournalRecord) -> None:
        if self.journal_fd is None:
            return
        body = pickle.dumps(record, pickle.HIGHEST_PROTOCOL)
        if self.journaled + len(body) > JOURNAL_BYTES and record[2] is not None:
            body = pickle.dumps((*record[:2], None, *record[3:]), pickle.HIGHEST_PROTOCOL)
        self.journaled += len(body)
        os.write(self.journal_fd, _HEADER.pack(len(body)) + body)

    def add_ok(self, n: int, pickles: list[bytes]) -> None:
        """Element ``n`` succeeded; ``pickles``: its outputs', in order."""
        self._journal((n, 0, pickles, "", True, False))
        self.ok.append(n)
        for kept, data in zip(self.values, pickles, strict=True):
            kept.append(data)

    def add_failed(self, n: int, code: int, exc: BaseException, retryable: bool) -> bytes:
        """Element ``n`` failed with ``exc``; its exception's pickle."""
        data = exception_bytes(exc)
        self.failed.append(n)
        self.exceptions.append(data)
        self._journal((n, code, data, "", retryable, False))
        return data

    def end_worker(self, n: int, code: int, exc: BaseException) -> None:
        """Record that element ``n`` failed and the worker ends now (see module)."""
        data = exception_bytes(exc)
        if self.journal_fd is not None:
            self._journal((n, code, data, str(exc)[:500], True, True))
            return
        folder = os.path.join(self.step_dir, "exception")
        os.makedirs(folder, exist_ok=True)
        write_task_file(folder, self.name, [n], [data])

    def finish(self) -> str:
        """Write the task's files and remove its journal; "" or why they could not be
        written (the store is full or read-only: its elements are then lost to it)."""
        error = ""
        try:
            if self.failed:
                folder = os.path.join(self.step_dir, "exception")
                write_task_file(folder, self.name, self.failed, self.exceptions)
            if self.ok:  # the last output last: its file says the task is in the store
                for out, pickles in zip(self.outputs, self.values, strict=True):
                    folder = os.path.join(self.step_dir, "return_values", out)
                    write_task_file(folder, self.name, self.ok, pickles)
        except OSError as e:
            error = f"cannot write the task's results to the store: {e}"
            for out in self.outputs:  # whole or absent: never some outputs only
                with contextlib.suppress(OSError):
                    os.unlink(
                        os.path.join(self.step_dir, "return_values", out, task_file_name(self.name))
                    )
        if self.journal_fd is not None:
            os.close(self.journal_fd)
            self.journal_fd = None
            with contextlib.suppress(OSError):
                os.unlink(journal_path(self.step_dir, self.name))
        return error


def write_failures(step_dir: str, name: str, indices: list[int], pickles: list[bytes]) -> None:
    """The driver's: keep exceptions of a task whose worker died (``name`` its own)."""
    folder = os.path.join(step_dir, "exception")
    os.makedirs(folder, exist_ok=True)
    write_task_file(folder, name, indices, pickles)


def write_values(step_dir: str, name: str, outputs: tuple[str, ...], kept: dict[int, Any]) -> None:
    """The driver's: keep the journaled values of a task whose worker died."""
    order = list(kept)  # in the order the elements ran
    for k, out in enumerate(outputs):
        folder = os.path.join(step_dir, "return_values", out)
        os.makedirs(folder, exist_ok=True)
        write_task_file(folder, name, order, [kept[n][k] for n in order])
