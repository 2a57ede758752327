"""The mapspec grammar: which elements of which arrays make one element of a map.

A mapspec such as ``"x[i, j], y[j, :, k] -> z[i, j, k]"`` says how a mapped step
walks its inputs.  A shared index zips, distinct indices form an outer product,
``:`` hands a whole axis to the function (a reduction), and the output indices
are exactly the union of the input indices.  This module is pure: it parses,
validates, prints, and does index arithmetic.  It never touches files or Parsl.

Grammar (whitespace allowed between tokens, but not between a name and its ``[``)::

    spec   := arrays "->" arrays
    arrays := array ("," array)*
    array  := NAME "[" index ("," index)* "]"
    index  := NAME | ":"

>>> spec = MapSpec.from_string("x[i, j], y[j, :, k] -> z[i, j, k]")
>>> spec.shape({"x": (5, 2), "y": (2, 4, 3)})
(5, 2, 3)
>>> spec.output_key(23, (5, 2, 3))
(3, 1, 2)
>>> spec.input_keys((3, 1, 2))["y"]
(1, slice(None, None, None), 2)
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ArraySpec", "MapSpec", "MapSpecError", "as_lengths"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MapSpecError(ValueError):
    """A mapspec that does not parse, does not validate, or does not fit its arrays."""


@dataclass(frozen=True)
class ArraySpec:
    """One array in a mapspec: ``y[j, :, k]`` is ``ArraySpec("y", ("j", None, "k"))``.

    ``None`` in ``axes`` stands for ``:``, an axis passed whole to the function.
    """

    name: str
    axes: tuple[str | None, ...]

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise MapSpecError(f"{self.name!r} is not a valid array name (an identifier)")
        if not self.axes:
            raise MapSpecError(f"array {self.name!r} has no indices")
        named = [a for a in self.axes if a is not None]
        for axis in named:
            if not _NAME.fullmatch(axis):
                raise MapSpecError(f"{axis!r} in {self.name!r} is not a valid index name")
        if len(set(named)) != len(named):
            raise MapSpecError(f"index repeated in '{self}': each index may appear once per array")

    @property
    def indices(self) -> tuple[str, ...]:
        """The named indices, in order, without the ``:`` axes."""
        return tuple(a for a in self.axes if a is not None)

    @property
    def rank(self) -> int:
        return len(self.axes)

    def __str__(self) -> str:
        return f"{self.name}[{', '.join(':' if a is None else a for a in self.axes)}]"


@dataclass(frozen=True)
class MapSpec:
    """A parsed, validated mapspec: input arrays, output arrays and their indices."""

    inputs: tuple[ArraySpec, ...]
    outputs: tuple[ArraySpec, ...]

    def __post_init__(self) -> None:
        text = str(self)
        if not self.inputs or not self.outputs:
            raise MapSpecError(f"mapspec '{text}' needs at least one input and one output")
        names = [a.name for a in self.inputs + self.outputs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise MapSpecError(f"mapspec '{text}' names {', '.join(repeated)} more than once")
        for out in self.outputs:
            if None in out.axes:
                raise MapSpecError(
                    f"mapspec '{text}': output '{out}' uses ':'; outputs take named indices only"
                )
        first = self.outputs[0]
        for out in self.outputs[1:]:
            if out.axes != first.axes:
                raise MapSpecError(
                    f"mapspec '{text}': outputs '{first}' and '{out}' must have the same indices"
                )
        union = {i for a in self.inputs for i in a.indices}
        if set(first.indices) != union:
            missing = sorted(union - set(first.indices))
            extra = sorted(set(first.indices) - union)
            parts = []
            if missing:
                parts.append(f"input indices {', '.join(missing)} do not appear in the output")
            if extra:
                parts.append(f"output indices {', '.join(extra)} appear in no input")
            raise MapSpecError(
                f"mapspec '{text}': {'; '.join(parts)}. The output indices must be exactly "
                "the union of the input indices."
            )

    # -- text ------------------------------------------------------------------------------

    @classmethod
    def from_string(cls, text: str) -> MapSpec:
        """Parse ``text``; any text outside the grammar is an error pointing at it."""
        if not isinstance(text, str):
            raise MapSpecError(f"a mapspec is a string like 'x[i] -> y[i]', not {text!r}")
        parser = _Parser(text)
        inputs = parser.arrays()
        parser.expect("->", "'->' between the inputs and the outputs")
        outputs = parser.arrays()
        parser.end()
        try:
            return cls(tuple(inputs), tuple(outputs))
        except MapSpecError as e:
            if text in str(e):
                raise
            raise MapSpecError(f"{e} (you wrote '{text}')") from None

    def __str__(self) -> str:
        ins = ", ".join(str(a) for a in self.inputs)
        outs = ", ".join(str(a) for a in self.outputs)
        return f"{ins} -> {outs}"

    # -- names -----------------------------------------------------------------------------

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.outputs)

    @property
    def output_indices(self) -> tuple[str, ...]:
        """The indices of the outputs, which name the dimensions of a map's result."""
        return self.outputs[0].indices

    def input(self, name: str) -> ArraySpec:
        for a in self.inputs:
            if a.name == name:
                return a
        raise KeyError(name)

    def rename(self, renames: Mapping[str, str]) -> MapSpec:
        """The same spec with some array names changed."""
        return MapSpec(
            tuple(ArraySpec(renames.get(a.name, a.name), a.axes) for a in self.inputs),
            tuple(ArraySpec(renames.get(a.name, a.name), a.axes) for a in self.outputs),
        )

    # -- shapes and index arithmetic -------------------------------------------------------

    def index_sizes(self, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
        """The size of every index, checked across the arrays that share it.

        ``input_shapes`` gives the shape of each input array; an array may have more
        dimensions than its spec names (its elements are then sub-arrays), never fewer.
        """
        sizes: dict[str, int] = {}
        seen_in: dict[str, str] = {}
        for arr in self.inputs:
            if arr.name not in input_shapes:
                raise MapSpecError(f"mapspec '{self}': no shape given for input {arr.name!r}")
            shape = tuple(input_shapes[arr.name])
            lengths = as_lengths(shape)
            if lengths is None:
                raise MapSpecError(
                    f"mapspec '{self}': the shape {shape} of {arr.name!r} must hold lengths "
                    "(ints >= 0)"
                )
            shape = lengths
            if len(shape) < arr.rank:
                raise MapSpecError(
                    f"mapspec '{self}': expecting an array of rank {arr.rank} for '{arr}', "
                    f"but got one of shape {shape}"
                )
            for axis, size in zip(arr.axes, shape, strict=False):
                if axis is None:
                    continue
                if axis in sizes and sizes[axis] != size:
                    raise MapSpecError(
                        f"mapspec '{self}': index {axis!r} has size {sizes[axis]} in "
                        f"{seen_in[axis]!r} but size {size} in {arr.name!r}; arrays that "
                        "share an index must have the same length along it"
                    )
                sizes[axis] = int(size)
                seen_in.setdefault(axis, arr.name)
        return sizes

    def shape(self, input_shapes: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
        """The output shape for inputs of the given shapes."""
        sizes = self.index_sizes(input_shapes)
        return tuple(sizes[i] for i in self.output_indices)

    @staticmethod
    def output_key(linear_index: int, shape: Sequence[int]) -> tuple[int, ...]:
        """The C-order key of element ``linear_index`` in an array of ``shape``."""
        return tuple(int(k) for k in np.unravel_index(linear_index, tuple(shape)))

    @staticmethod
    def linear_index(key: Sequence[int], shape: Sequence[int]) -> int:
        """The C-order position of ``key`` in an array of ``shape``."""
        return int(np.ravel_multi_index(tuple(key), tuple(shape)))

    def on_output_grid(self, name: str, values: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """``values`` of input ``name`` (over its named axes, in spec order) laid onto the
        output grid: element ``key`` of the result is what output element ``key`` reads.

        ``values`` has one axis per named index of the input (``:`` axes already reduced
        away); the result is a read-only broadcast view of shape ``shape``.

        >>> spec = MapSpec.from_string("x[j], y[i] -> z[i, j]")
        >>> spec.on_output_grid("x", np.array([10, 20, 30]), (2, 3)).tolist()
        [[10, 20, 30], [10, 20, 30]]
        """
        order = self.output_indices
        names = list(self.input(name).indices)
        perm = sorted(range(len(names)), key=lambda k: order.index(names[k]))
        laid = values.transpose(perm + list(range(len(names), values.ndim)))
        grid = [shape[order.index(i)] if i in names else 1 for i in order]
        laid = laid.reshape(grid + list(values.shape[len(names) :]))
        return np.broadcast_to(laid, tuple(shape) + values.shape[len(names) :])

    def input_keys(self, output_key: Sequence[int]) -> dict[str, tuple[int | slice, ...]]:
        """For each input, the key that selects what output element ``output_key`` gets."""
        by_index = dict(zip(self.output_indices, output_key, strict=True))
        return {
            arr.name: tuple(slice(None) if a is None else by_index[a] for a in arr.axes)
            for arr in self.inputs
        }


def as_lengths(shape: Any) -> tuple[int, ...] | None:
    """``shape`` with its lengths as ints, or None if one is no int >= 0 (e.g. 2.5 or -1).

    >>> as_lengths((2, 3)), as_lengths((2.5,)), as_lengths(5)
    ((2, 3), None, None)
    """
    try:
        lengths = tuple(operator.index(n) for n in shape)
    except TypeError:  # not iterable, or holds floats, strings, None
        return None
    return lengths if all(n >= 0 for n in lengths) else None


class _Parser:
    """A small recursive-descent parser that remembers where it is, for error messages."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str, pos: int | None = None) -> MapSpecError:
        at = self.pos if pos is None else pos
        found = self.text[at : at + 10]
        found_txt = f"found {found!r}" if found else "found the end of the text"
        return MapSpecError(
            f"invalid mapspec {self.text!r}: expected {what} at position {at}, {found_txt}\n"
            f"    {self.text}\n    {' ' * at}^"
        )

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, token: str) -> bool:
        self.skip_space()
        return self.text.startswith(token, self.pos)

    def expect(self, token: str, what: str) -> None:
        if not self.peek(token):
            raise self.fail(what)
        self.pos += len(token)

    def name(self, what: str) -> str:
        self.skip_space()
        m = _NAME.match(self.text, self.pos)
        if not m:
            raise self.fail(what)
        self.pos = m.end()
        return m.group()

    def array(self) -> ArraySpec:
        self.skip_space()
        start = self.pos
        name = self.name("an array name such as 'x'")
        if self.pos >= len(self.text) or self.text[self.pos] != "[":
            raise self.fail(f"'[' right after {name!r} (no space between a name and its indices)")
        self.pos += 1
        axes: list[str | None] = []
        while True:
            if self.peek(":"):
                self.pos += 1
                axes.append(None)
            else:
                axes.append(self.name("an index name or ':'"))
            if self.peek(","):
                self.pos += 1
                continue
            self.expect("]", "',' or ']'")
            break
        try:
            return ArraySpec(name, tuple(axes))
        except MapSpecError as e:
            raise MapSpecError(
                f"invalid mapspec '{self.text}': {e} (near position {start})"
            ) from None

    def arrays(self) -> list[ArraySpec]:
        arrays = [self.array()]
        while self.peek(","):
            self.pos += 1
            arrays.append(self.array())
        return arrays

    def end(self) -> None:
        self.skip_space()
        if self.pos != len(self.text):
            raise self.fail("the end of the mapspec (or ',' and another array)")
