"""Content keys for reuse: a step's code plus its inputs, per call and per map element.

A key says "this computation again": a plain step's key combines the hash of its code
with the keys of its inputs; a map element's key combines the code with the keys of its
own mapped values and of the broadcast inputs.  Outputs of steps are keyed by the step
(or element) that made them, so nothing produced is ever re-read to be hashed.  A value
that cannot be hashed gives no key, and the step simply runs again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from types import CodeType, ModuleType
from typing import Any

import cloudpickle
import numpy as np

from ..mapspec import ArraySpec, MapSpec
from ..workflow import Call, Map, as_mapped_array
from .task_spec import Source

__all__ = ["KEY_DTYPE", "code_key", "combine", "element_keys_of_value", "value_key"]

KEY_DTYPE = "S16"  # 128-bit keys, stored as fixed-width bytes in keys.npy


def _digest(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.digest()


def combine(*parts: bytes | str) -> bytes:
    """One key from several (order matters)."""
    return _digest(*(p.encode() if isinstance(p, str) else p for p in parts))


def code_key(func: Any) -> tuple[bytes | None, str]:
    """A key for a step's code, that stays the same when the code does.

    Built from the bytecode, constants and names of the function and, recursively, of
    the functions and steps it calls through its globals, plus the values of the other
    globals, defaults and closure cells it reads.  (Pickle bytes are not stable: a plan
    read back from the store pickles differently from the one first defined.)
    """
    try:
        return _digest(_code_parts(func, set())), ""
    except Exception as e:
        return None, f"its code cannot be hashed ({type(e).__name__}: {e})"


def _code_parts(func: Any, seen: set[int]) -> bytes:
    func = getattr(func, "callable", func)  # a Step: its function
    code = getattr(func, "__code__", None)
    if code is None:  # a class, a builtin: known by name
        return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', func)}".encode()
    if id(code) in seen:
        return b"<recursion>"
    seen.add(id(code))
    parts = [_code_bytes(code)]
    globs = getattr(func, "__globals__", {})
    for name in sorted(_names(code)):
        if name not in globs:
            continue
        value = globs[name]
        parts.append(name.encode())
        parts.append(_reference_bytes(value, seen))
    for value in (func.__defaults__, func.__kwdefaults__):
        parts.append(_reference_bytes(value, seen))
    for cell in func.__closure__ or ():
        parts.append(_reference_bytes(cell.cell_contents, seen))
    return _digest(*parts)


def _reference_bytes(value: Any, seen: set[int]) -> bytes:
    if isinstance(value, ModuleType):
        return value.__name__.encode()
    if callable(getattr(value, "callable", value)) and hasattr(
        getattr(value, "callable", value), "__code__"
    ):
        return _code_parts(value, seen)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}".encode()
    key, _ = value_key(value)
    return key or f"<unhashable {type(value).__name__}>".encode()


def _names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _names(const)
    return names


def _code_bytes(code: CodeType) -> bytes:
    consts = [
        _code_bytes(c) if isinstance(c, CodeType) else repr(c).encode() for c in code.co_consts
    ]
    return _digest(
        code.co_code,
        *consts,
        repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)).encode(),
        repr((code.co_argcount, code.co_kwonlyargcount, code.co_name)).encode(),
    )


def value_key(value: Any) -> tuple[bytes | None, str]:
    """A key for a value, from its pickle; ``(None, why)`` when it cannot be pickled."""
    try:
        return _digest(cloudpickle.dumps(value)), ""
    except Exception as e:
        return None, f"cannot hash a {type(value).__name__} ({type(e).__name__}: {e})"


def element_keys_of_value(arr: np.ndarray, rank: int) -> np.ndarray | None:
    """A key per element over the first ``rank`` axes of a mapped input array.

    Elements of a plain numeric array are their own keys (dtype and bytes, when that
    fits in a key): no per-element hashing in the driver for the common sweep of numbers.
    """
    shape = arr.shape[:rank]
    tag = arr.dtype.str.encode()
    item = arr.dtype.itemsize * int(np.prod(arr.shape[rank:], dtype=np.int64))
    count = int(np.prod(shape, dtype=np.int64))
    if arr.dtype.kind in "biufcmM" and len(tag) + item <= 16:
        table = np.zeros((count, 16), dtype=np.uint8)
        table[:, : len(tag)] = np.frombuffer(tag, dtype=np.uint8)
        if item and count:
            raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8).reshape(count, item)
            table[:, len(tag) : len(tag) + item] = raw
        return table.view(KEY_DTYPE).reshape(shape)
    keys = np.empty(count, dtype=KEY_DTYPE)
    for n, key in enumerate(np.ndindex(*shape)):
        k, _ = value_key(arr[key])
        if k is None:
            return None
        keys[n] = k
    return keys.reshape(shape)


MISSING_KEY = b"\0" * 16  # stands for a masked element inside a reduction or a whole array


class KeyBook:
    """The keys of every named value of one run, filled in as steps finish.

    ``value`` holds a key per plain value (an input, a plain step's output); ``array``
    holds a key per element of each map output (``MISSING_KEY`` where masked).  ``None``
    anywhere means "cannot be keyed": the steps that depend on it are not reused.
    """

    def __init__(self) -> None:
        self.value: dict[str, bytes | None] = {}
        self.array: dict[str, np.ndarray | None] = {}
        self.why: dict[str, str] = {}

    def whole(self, name: str) -> bytes | None:
        """The key of a value as one piece (a whole map output included)."""
        if name in self.value:
            return self.value[name]
        keys = self.array.get(name)
        return None if keys is None else combine(name, keys.tobytes(), repr(keys.shape))

    def elements(self, name: str, mapped: np.ndarray | None, rank: int) -> np.ndarray | None:
        """A key per element over ``rank`` axes of a mapped input.

        Map outputs use their producer's element keys; plain outputs their own key and
        the element's position; workflow inputs are hashed element by element.
        """
        if name in self.array:
            return self.array[name]
        if mapped is None or self.value.get(name) is None:
            return None
        return element_keys_of_value(mapped, rank)

    def step_key(self, code: bytes | None, params: list[str]) -> bytes | None:
        parts: list[bytes | str] = []
        for p in sorted(params):
            k = self.whole(p)
            if k is None:
                return None
            parts += [p, k]
        return None if code is None else combine(code, *parts)

    def node_keys(
        self,
        node: Call,
        params: dict[str, Source],
        shape: tuple[int, ...],
        load: Callable[[Source], Any],
    ) -> tuple[np.ndarray | None, str]:
        """The key of every element of ``node`` (0-d for a plain call), or ``(None, why)``.

        ``load`` reads a value-kind source (inputs are hashed element by element).
        """
        code, why = code_key(node.step.callable)
        mapped = node.mapspec.input_names if isinstance(node, Map) else ()
        broadcast = [p for p in params if p not in mapped]
        base = self.step_key(code, broadcast)
        if base is None:
            unkeyed = [p for p in broadcast if self.whole(p) is None]
            return None, why or f"input(s) {', '.join(unkeyed)} cannot be hashed"
        if not isinstance(node, Map):
            return np.array(base, dtype=KEY_DTYPE), ""
        per_input = []
        for arr in node.mapspec.inputs:
            src = params[arr.name]
            value = None if src.kind == "array" else as_mapped_array(load(src), arr.rank)
            ekeys = self.elements(arr.name, value, arr.rank)
            if ekeys is None:
                return None, f"the elements of {arr.name!r} cannot be hashed"
            per_input.append((arr, ekeys))
        return _combine_on_grid(node.mapspec, base, per_input, shape), ""

    def note_map_outputs(
        self, outputs: Iterable[str], present: dict[str, np.ndarray], keys: np.ndarray | None
    ) -> None:
        """Element keys of a finished map's outputs, missing elements (``present`` False,
        flat) marked missing."""
        for out in outputs:
            if keys is None:
                self.array[out] = None
                continue
            marked = keys.reshape(-1).copy()
            marked[~present[out]] = MISSING_KEY
            self.array[out] = marked.reshape(keys.shape)


def _combine_on_grid(
    spec: MapSpec,
    base: bytes,
    per_input: list[tuple[ArraySpec, np.ndarray]],
    shape: tuple[int, ...],
) -> np.ndarray:
    """Each output element's key: ``base`` and the keys of what it reads, hashed together.

    The input keys are laid onto the output grid with numpy (a ``:`` axis contributes all
    its keys), so the driver's only per-element work is one hash of a byte row.
    """
    n = int(np.prod(shape, dtype=np.int64))
    columns = []
    for arr, ekeys in per_input:
        whole = [k for k, a in enumerate(arr.axes) if a is None]
        named = [k for k, a in enumerate(arr.axes) if a is not None]
        by_bytes = np.ascontiguousarray(ekeys).view(np.uint8).reshape((*ekeys.shape, 16))
        by_bytes = by_bytes.transpose(named + whole + [by_bytes.ndim - 1])
        laid = spec.on_output_grid(arr.name, by_bytes, shape)
        row = int(np.prod(laid.shape[len(shape) :], dtype=np.int64))  # -1 fails when n == 0
        columns.append(np.ascontiguousarray(laid).reshape(n, row))
    rows = np.concatenate(columns, axis=1) if columns else np.zeros((n, 0), np.uint8)
    width = rows.shape[1]
    data = memoryview(rows.tobytes())
    prefix = combine(base, *(a.name for a, _ in per_input))
    blake2b = hashlib.blake2b
    # About 1 µs an element, most of it this loop: slices of a memoryview copy nothing.
    digests = b"".join(
        [
            blake2b(data[i : i + width], digest_size=16, key=prefix).digest()
            for i in range(0, n * width, width)
        ]
        if width
        else [blake2b(b"", digest_size=16, key=prefix).digest()] * n
    )
    return np.frombuffer(digests, dtype=KEY_DTYPE).copy().reshape(shape)
