"""Content keys for reuse: a step's code plus its inputs, per call and per map element.

A key says "this computation again": a plain step's key combines the hash of its code
with the keys of its inputs; a map element's key combines the code with the keys of its
own mapped values and of the broadcast inputs.  Outputs of steps are keyed by the step
(or element) that made them, so nothing produced is ever re-read to be hashed.  A value
that cannot be hashed gives no key, and the step simply runs again.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import weakref
from collections.abc import Callable, Iterable
from types import CodeType, MethodType, ModuleType
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
    globals, defaults and closure cells it reads (and, for a method, of its object).
    (Pickle bytes of code are not stable: a plan read back from the store pickles
    differently from the one first defined.)

    The same function has the same key wherever it comes from: its module, a fresh
    process that imports it, or a plan unpickled from the store (a function of a notebook
    or script travels by value and comes back with only the globals its code loads).

    >>> def f(data):
    ...     import hashlib  # a name of this module's globals too: not one f reads
    ...     return hashlib.sha1(data).hexdigest()
    >>> copy = cloudpickle.loads(cloudpickle.dumps(f))  # as a stored plan comes back
    >>> code_key(copy) == code_key(f)
    True
    """
    try:
        return _digest(_code_parts(func, {})), ""
    except Exception as e:
        return None, f"its code cannot be hashed ({type(e).__name__}: {e})"


def _code_parts(func: Any, seen: dict[int, Any]) -> bytes:
    func = getattr(func, "callable", func)  # a Step: its function
    if isinstance(func, functools.partial):
        return _digest(
            b"<partial>",
            _code_parts(func.func, seen),
            _values_bytes(func.args, seen),
            _values_bytes(func.keywords, seen),
        )
    code = getattr(func, "__code__", None)
    if code is None:
        call: Any = type(func).__call__ if callable(func) and not isinstance(func, type) else None
        if hasattr(call, "__code__"):  # an object whose class defines __call__
            return _code_parts(MethodType(call, func), seen)
        # a class, a builtin: known by name
        return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', func)}".encode()
    # Functions, not code objects: the closures one factory or decorator makes share
    # their code, and each needs its own key.  ``seen`` holds them, so no id is reused.
    if id(func) in seen:
        return b"<recursion>"
    seen[id(func)] = func
    parts = [_code_bytes(code)]
    globs = getattr(func, "__globals__", {})
    for name in sorted(_global_names(code)):
        if name not in globs:
            continue
        value = globs[name]
        parts.append(name.encode())
        parts.append(_reference_bytes(value, seen))
    for values in (func.__defaults__, func.__kwdefaults__):
        parts.append(_values_bytes(values, seen))
    for cell in func.__closure__ or ():
        parts.append(_reference_bytes(cell.cell_contents, seen))
    owner = getattr(func, "__self__", None)  # a bound method: what it is bound to
    if owner is not None:
        parts.append(_owner_bytes(owner, seen))
    return _digest(*parts)


def _is_code(value: Any) -> bool:
    value = getattr(value, "callable", value)
    return isinstance(value, functools.partial) or (callable(value) and hasattr(value, "__code__"))


def _reference_bytes(value: Any, seen: dict[int, Any]) -> bytes:
    if isinstance(value, ModuleType):
        return value.__name__.encode()
    if _is_code(value):
        return _code_parts(value, seen)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}".encode()
    try:
        return _digest(_canonical_pickle(value))
    except Exception:
        return f"<unhashable {type(value).__name__}>".encode()


def _values_bytes(values: tuple[Any, ...] | dict[str, Any] | None, seen: dict[int, Any]) -> bytes:
    """Defaults, or a partial's arguments: as one value, unless there is code among them,
    which is keyed by what it is (a function pickled by name would not follow its code,
    one pickled by value would follow where it is written)."""
    items = list(values.items()) if isinstance(values, dict) else list(enumerate(values or ()))
    if not any(_is_code(v) for _, v in items):
        return _reference_bytes(values, seen)
    return _digest(*(p for k, v in items for p in (repr(k).encode(), _reference_bytes(v, seen))))


def _owner_bytes(owner: Any, seen: dict[int, Any]) -> bytes:
    """The object a method is bound to: its class by name, its attributes by value."""
    state = getattr(owner, "__dict__", None)
    if isinstance(owner, type | ModuleType) or not isinstance(state, dict):
        return _reference_bytes(owner, seen)
    cls = type(owner)
    return _digest(
        f"{cls.__module__}.{cls.__qualname__}".encode(),
        *(p for k in sorted(state) for p in (str(k).encode(), _reference_bytes(state[k], seen))),
    )


# What a function reads from its globals: names the code loads, stores or deletes as
# globals (LOAD_NAME: in a class body).  Not every name in co_names: those include
# attributes (``x.data``) and modules imported in the body (``import numpy as np`` names
# ``numpy``), which would make the key depend on which globals happen to be around: a
# function pickled by value comes back with only the globals it loads.
_GLOBAL_OPS = frozenset(
    dis.opmap[name]
    for name in (
        "LOAD_GLOBAL",
        "STORE_GLOBAL",
        "DELETE_GLOBAL",
        "LOAD_NAME",
        "LOAD_FROM_DICT_OR_GLOBALS",  # Python 3.12: a class body's names, in PEP 695 scopes
    )
    if name in dis.opmap
)
_GLOBAL_NAMES: weakref.WeakKeyDictionary[CodeType, frozenset[str]] = weakref.WeakKeyDictionary()


def _global_names(code: CodeType) -> frozenset[str]:
    names = _GLOBAL_NAMES.get(code)
    if names is None:
        found = {i.argval for i in dis.get_instructions(code) if i.opcode in _GLOBAL_OPS}
        for const in code.co_consts:
            if isinstance(const, CodeType):  # nested functions, comprehensions, classes
                found |= _global_names(const)
        names = _GLOBAL_NAMES[code] = frozenset(found)
    return names


def _code_bytes(code: CodeType) -> bytes:
    consts = [_const_bytes(c) for c in code.co_consts]
    return _digest(
        code.co_code,
        *consts,
        repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)).encode(),
        repr((code.co_argcount, code.co_kwonlyargcount, code.co_name)).encode(),
    )


def _const_bytes(const: Any) -> bytes:
    if isinstance(const, CodeType):
        return _code_bytes(const)
    if isinstance(const, frozenset) and not _numbers_only(const):
        # ``x in {"a", "b"}``: the order of a set of strings changes with each process
        return f"frozenset({sorted(repr(c) for c in const)})".encode()
    return repr(const).encode()


_NUMBERS = frozenset({int, float, complex, bool, type(None)})


def _numbers_only(values: set[Any] | frozenset[Any]) -> bool:
    """Whether a set holds only numbers, whose hashes (so the set's order) are the same
    in every process; those of strings and bytes are salted per process."""
    return all(type(v) in _NUMBERS for v in values)


def _canonical_pickle(value: Any) -> bytes:
    """Cloudpickle's bytes of ``value``, its sets of strings in one order in every process."""
    return cloudpickle.dumps(_sets_in_order(value, set()))


def _sets_in_order(value: Any, active: set[int]) -> Any:
    """``value`` with each set in it that holds more than numbers replaced by its items,
    sorted (by their pickles); ``value`` itself (the same bytes as ever) when it holds none.

    Pickle writes a set in its order, which for strings changes from process to process.
    (Sets are written by the pickler itself: a ``reducer_override`` never sees them.)
    """
    kind = type(value)
    if kind in (set, frozenset):
        if _numbers_only(value):
            return value
        return (f"<{kind.__name__}>", *sorted(_canonical_pickle(v) for v in value))
    if kind not in (list, tuple, dict) or id(value) in active:
        return value
    active.add(id(value))
    try:
        old = list(value.items()) if kind is dict else list(value)
        new = [_sets_in_order(v, active) for v in old]  # a dict's items are pairs
    finally:
        active.discard(id(value))
    if all(a is b for a, b in zip(new, old, strict=True)):
        return value
    return dict(new) if kind is dict else kind(new)


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
