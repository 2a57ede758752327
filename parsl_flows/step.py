"""Steps: plain Python functions with named outputs and resource needs.

A step is the unit a workflow is made of.  It stays callable as the plain function
(so it can be tested and used interactively), and ``.callable`` is the raw function,
which is what other steps should call inside their own code.

>>> @step(returns="geo")
... def make_geometry(x: float, y: float) -> tuple[float, float]:
...     return (x, y)
>>> make_geometry.parameters, make_geometry.returns
(('x', 'y'), ('geo',))
>>> make_geometry(1.0, 2.0)
(1.0, 2.0)
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, overload

from .attributes import check_attrs

__all__ = ["Resources", "RetryResources", "Step", "step"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", re.IGNORECASE)
_WALLTIME = re.compile(r"(?:(\d+)-)?(\d{1,3}):([0-5]\d):([0-5]\d)")
_MEMORY_FACTORS = {"": 1 / 2**20, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}


@dataclass(frozen=True)
class Resources:
    """What one call of a step needs: cores, memory (MB) and walltime (seconds).

    Built from the ``resources=`` dict of :func:`step`, which takes ``cores`` (int > 0),
    ``memory`` (``"500MB"``, ``"4GB"``) and ``walltime`` (``"01:00:00"`` or ``"1-00:00:00"``).
    """

    cores: int | None = None
    memory_mb: int | None = None
    walltime_s: int | None = None

    @classmethod
    def from_dict(cls, resources: Mapping[str, Any] | None, owner: str) -> Resources:
        if resources is None:
            return cls()
        if not isinstance(resources, Mapping):
            raise TypeError(
                f"resources of step {owner!r} must be a dict such as "
                f"{{'cores': 2, 'memory': '4GB'}}, not {resources!r}"
            )
        unknown = sorted(set(resources) - {"cores", "memory", "walltime"})
        if unknown:
            raise ValueError(
                f"step {owner!r}: unknown resource(s) {', '.join(map(repr, unknown))}; "
                "use 'cores' (int > 0), 'memory' (e.g. '4GB') and 'walltime' (e.g. '01:00:00')"
            )
        cores = resources.get("cores")
        if cores is not None and (
            isinstance(cores, bool) or not isinstance(cores, int) or cores <= 0
        ):
            raise ValueError(f"step {owner!r}: 'cores' must be an int > 0, not {cores!r}")
        memory = resources.get("memory")
        memory_mb = None if memory is None else parse_memory(memory, owner)
        walltime = resources.get("walltime")
        walltime_s = None if walltime is None else parse_walltime(walltime, owner)
        return cls(cores, memory_mb, walltime_s)

    def as_dict(self) -> dict[str, Any]:
        """The resources as the user would write them (only the ones that are set)."""
        out: dict[str, Any] = {}
        if self.cores is not None:
            out["cores"] = self.cores
        if self.memory_mb is not None:
            out["memory"] = f"{self.memory_mb}MB"
        if self.walltime_s is not None:
            out["walltime"] = format_walltime(self.walltime_s)
        return out

    def label(self) -> str:
        """A short name for this resource class, e.g. ``"4c-8192mb-3600s"``."""
        parts = []
        if self.cores is not None:
            parts.append(f"{self.cores}c")
        if self.memory_mb is not None:
            parts.append(f"{self.memory_mb}mb")
        if self.walltime_s is not None:
            parts.append(f"{self.walltime_s}s")
        return "-".join(parts)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.cores, self.memory_mb, self.walltime_s))


@dataclass(frozen=True)
class RetryResources:
    """How a step's memory grows with its attempts, as Nextflow's ``task.attempt`` does.

    Built from ``retry_resources=`` of :func:`step`: ``{"memory": 2}`` multiplies the
    step's ``resources`` memory by 2 on each attempt (attempt ``k`` gets
    ``memory * 2 ** (k - 1)``); ``{"memory": lambda attempt: ...}`` gives the memory of
    each attempt (1-based, the first included) as ``"8GB"`` or MB.  Only a step that
    asks for it has elements that ran out of memory retried (see the README).

    >>> RetryResources.from_dict({"memory": 2}, Resources(memory_mb=1024), "f").memory_mb(1024, 3)
    4096
    """

    memory_factor: float | None = None
    memory_of_attempt: Callable[[int], Any] | None = None

    @classmethod
    def from_dict(
        cls, retry: Mapping[str, Any] | None, resources: Resources, owner: str
    ) -> RetryResources:
        if retry is None:
            return cls()
        how = (
            "retry_resources={'memory': 2} (the memory times 2 on each attempt) or "
            "{'memory': lambda attempt: f'{4 * attempt}GB'}"
        )
        if not isinstance(retry, Mapping):
            raise TypeError(f"retry_resources of step {owner!r} must be a dict such as {how}")
        unknown = sorted(set(retry) - {"memory"})
        if unknown:
            raise ValueError(
                f"step {owner!r}: retry_resources cannot grow {', '.join(map(repr, unknown))}; "
                f"only 'memory' grows with attempts: {how}"
            )
        memory = retry.get("memory")
        if callable(memory):
            try:  # the first attempt's memory, checked now rather than after hours of running
                parse_memory(memory(1), owner)
            except Exception as e:
                raise ValueError(
                    f"step {owner!r}: retry_resources['memory'] must return memory such as "
                    f"'8GB' or MB as a number for an attempt number (1, 2, ...), but for "
                    f"attempt 1 it gave: {type(e).__name__}: {e}"
                ) from None
            return cls(memory_of_attempt=memory)
        if isinstance(memory, bool) or not isinstance(memory, int | float) or memory <= 0:
            raise ValueError(
                f"step {owner!r}: retry_resources['memory'] must be a factor > 0 or a "
                f"function of the attempt number, not {memory!r}: {how}"
            )
        if resources.memory_mb is None:
            raise ValueError(
                f"step {owner!r}: retry_resources={{'memory': {memory!r}}} multiplies the "
                "step's memory, but its resources give none; add resources={'memory': '4GB'}"
            )
        return cls(memory_factor=float(memory))

    def memory_mb(self, base_mb: int | None, attempt: int) -> int | None:
        """The memory (MB) of attempt ``attempt`` (1-based) of a step asking ``base_mb``."""
        if self.memory_of_attempt is not None:
            memory = self.memory_of_attempt(attempt)
            try:
                return parse_memory(memory)
            except ValueError:
                raise ValueError(
                    f"retry_resources['memory'] gave {memory!r} for attempt {attempt}; it must "
                    "return memory such as '8GB' or MB as a number"
                ) from None
        if self.memory_factor is None or base_mb is None:
            return base_mb
        return max(1, math.ceil(base_mb * self.memory_factor ** (attempt - 1)))

    def __bool__(self) -> bool:
        return self.memory_factor is not None or self.memory_of_attempt is not None

    def as_dict(self) -> dict[str, Any]:
        if self.memory_of_attempt is not None:
            return {"memory": self.memory_of_attempt}
        return {} if self.memory_factor is None else {"memory": self.memory_factor}


def parse_memory(memory: Any, owner: str = "?") -> int:
    """``"4GB"`` -> 4096 (MB).  A bare number is taken as MB."""
    if isinstance(memory, int | float) and not isinstance(memory, bool) and memory > 0:
        return max(1, math.ceil(memory))
    m = _MEMORY.fullmatch(memory) if isinstance(memory, str) else None
    if not m or float(m.group(1)) <= 0:
        raise ValueError(
            f"step {owner!r}: 'memory' must look like '500MB' or '4GB', not {memory!r}"
        )
    unit = m.group(2).upper()
    if not unit and not memory.strip().upper().endswith("B"):
        unit = "M"  # "500" means 500 MB, as a bare number does
    return max(1, int(float(m.group(1)) * _MEMORY_FACTORS[unit]))


def parse_walltime(walltime: Any, owner: str = "?") -> int:
    """``"01:30:00"`` -> 5400 (seconds); ``"1-00:00:00"`` is a day."""
    m = _WALLTIME.fullmatch(walltime) if isinstance(walltime, str) else None
    if not m:
        raise ValueError(
            f"step {owner!r}: 'walltime' must look like 'HH:MM:SS' or 'D-HH:MM:SS', "
            f"not {walltime!r}"
        )
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"step {owner!r}: 'walltime' must be positive, not {walltime!r}")
    return total


def format_walltime(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


class Step:
    """A function marked as a workflow step; build one with :func:`step`.

    Attributes: ``name``, ``parameters`` (names, in signature order), ``returns`` (output
    names), ``resources`` (:class:`Resources`), ``retry_resources``
    (:class:`RetryResources`: how memory grows with attempts), ``attrs`` (per output, the
    attributes of its variable in datasets: :func:`check_attrs`), ``callable`` (the raw
    function), and ``defaults`` (parameters that have default values).
    """

    #: Steps pickled before ``retry_resources`` existed (stored plans) have none.
    retry_resources: RetryResources = RetryResources()
    #: Nor had those pickled before ``attrs`` any attributes (never changed in place).
    attrs: Mapping[str, Mapping[str, Any]] = MappingProxyType({})

    def __init__(
        self,
        func: Callable[..., Any],
        returns: str | tuple[str, ...] = "_return_value",
        resources: Mapping[str, Any] | None = None,
        retry_resources: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if isinstance(func, Step):
            func = func.callable
        if not callable(func):
            raise TypeError(f"step() needs a function, not {func!r}")
        self.callable: Callable[..., Any] = func
        self.name: str = getattr(func, "__name__", type(func).__name__)
        self.returns = _check_returns(returns, self.name)
        self.parameters, self.defaults = _check_signature(func, self.name)
        self.resources = Resources.from_dict(resources, self.name)
        self.retry_resources = RetryResources.from_dict(retry_resources, self.resources, self.name)
        self.attrs = check_attrs(attrs, self.returns, self.name)
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.callable(*args, **kwargs)

    def __repr__(self) -> str:
        res = f", resources={self.resources.as_dict()}" if self.resources else ""
        if self.retry_resources:
            res += f", retry_resources={self.retry_resources.as_dict()}"
        return f"step({self.name}({', '.join(self.parameters)}) -> {', '.join(self.returns)}{res})"

    def output_values(self, result: Any) -> dict[str, Any]:
        """Split what the function returned into its named outputs.

        A step with several returns must return a tuple of that length; anything else is
        a missing-output error (exit code 403).
        """
        if len(self.returns) == 1:
            return {self.returns[0]: result}
        if not isinstance(result, tuple) or len(result) != len(self.returns):
            try:
                shown = reprlib.repr(result)  # bounded: a huge array must not flood the log
            except Exception:  # a broken __repr__ must not hide the real problem
                shown = f"<{type(result).__name__} object>"
            if isinstance(result, tuple):
                got = f"a tuple of {len(result)}: {shown}"
            else:
                hint = f"return {', '.join(self.returns)}"
                got = f"{type(result).__name__} {shown} (end the step with '{hint}')"
            raise MissingOutputError(
                f"step {self.name!r} declares returns={self.returns} and must return a tuple "
                f"of {len(self.returns)} values, but it returned {got}"
            )
        return dict(zip(self.returns, result, strict=True))


class MissingOutputError(Exception):
    """A step returned fewer or other outputs than it declares (exit code 403)."""


def _check_returns(returns: Any, owner: str) -> tuple[str, ...]:
    names = (returns,) if isinstance(returns, str) else returns
    if not isinstance(names, tuple | list) or not names:
        raise TypeError(
            f"step {owner!r}: returns must be a name or a tuple of names, not {returns!r}"
        )
    for n in names:
        if not isinstance(n, str) or not _IDENT.fullmatch(n):
            raise ValueError(
                f"step {owner!r}: output name {n!r} is not a valid identifier; outputs are "
                "referred to by name, so use names such as 'mesh'"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"step {owner!r}: returns {tuple(names)} names an output twice")
    return tuple(names)


def _check_signature(
    func: Callable[..., Any], owner: str
) -> tuple[tuple[str, ...], frozenset[str]]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError) as e:
        raise TypeError(f"step {owner!r}: cannot read the function's signature ({e})") from None
    names: list[str] = []
    defaults: set[str] = set()
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(
                f"step {owner!r} takes {p}: workflows pass inputs by name, so a step must "
                "list every parameter it reads explicitly (no *args or **kwargs)"
            )
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(
                f"step {owner!r}: parameter {p.name!r} is positional-only, but workflows pass "
                "every input by name; remove the '/' from the signature"
            )
        names.append(p.name)
        if p.default is not p.empty:
            defaults.add(p.name)
    return tuple(names), frozenset(defaults)


@overload
def step(
    func: Callable[..., Any],
    *,
    returns: str | tuple[str, ...] = ...,
    resources: Mapping[str, Any] | None = ...,
    retry_resources: Mapping[str, Any] | None = ...,
    attrs: Mapping[str, Mapping[str, Any]] | None = ...,
) -> Step: ...


@overload
def step(
    func: None = None,
    *,
    returns: str | tuple[str, ...] = ...,
    resources: Mapping[str, Any] | None = ...,
    retry_resources: Mapping[str, Any] | None = ...,
    attrs: Mapping[str, Mapping[str, Any]] | None = ...,
) -> Callable[[Callable[..., Any]], Step]: ...


def step(
    func: Callable[..., Any] | None = None,
    *,
    returns: str | tuple[str, ...] = "_return_value",
    resources: Mapping[str, Any] | None = None,
    retry_resources: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Step | Callable[[Callable[..., Any]], Step]:
    """Mark a function as a workflow step.

    Use as ``@step``, ``@step(returns="geo")`` or ``step(f, returns=("a", "b"))``.
    ``returns`` names the outputs; a tuple means the function returns a tuple of that
    many values.  ``resources`` (``cores``, ``memory``, ``walltime``) tells the engine
    where each call must run, and holds each call and element to its memory and walltime.
    ``retry_resources={"memory": 2}`` (or a function of the attempt number) gives each
    attempt more memory, and retries elements that ran out of it (see
    :class:`RetryResources`).  ``attrs={"charge": {"units": "C", "long_name": "..."}}``
    gives, per output, the attributes of its variable in a map's dataset and
    ``dataset.nc`` (CF attributes: ``units`` as UDUNITS writes them, ``long_name``,
    ``standard_name``, ...; see :func:`check_attrs`).
    """
    if func is None:
        return lambda f: Step(
            f,
            returns=returns,
            resources=resources,
            retry_resources=retry_resources,
            attrs=attrs,
        )
    return Step(
        func, returns=returns, resources=resources, retry_resources=retry_resources, attrs=attrs
    )
