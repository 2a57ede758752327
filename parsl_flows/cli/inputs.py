"""What the command line is handed as inputs: a JSON or YAML file, and ``--set``.

Everything here runs before anything is submitted, and every problem is a
:class:`UsageError` whose message names the file, the input or the option at fault, so
the command line can print it as one line and exit 2 with no run directory created.
(The plan itself, ``FILE.py:NAME``, is found by :mod:`parsl_flows.cli.plans`.)

Inputs files are JSON (or YAML, when PyYAML is installed).  Text formats have no arrays,
so a few forms stand for them:

- ``[0.1, 0.2, 0.3]``: a list, which a map iterates over as it is;
- ``{"linspace": [0, 1, 10]}``, ``{"logspace": [-3, 0, 4]}``, ``{"arange": [0, 5]}``
  (arguments as a list, or as a dict of numpy's keyword arguments), and
  ``{"array": [[1, 2], [3, 4]]}``: numpy arrays;
- ``"data.npy"``, ``"data.nc"`` or ``"data.nc:variable"``: an array read from that file
  (relative paths are relative to the inputs file; for ``--set``, to the current directory).

>>> expand({"linspace": [0, 1, 3]}, Path("."), "V")
array([0. , 0.5, 1. ])
>>> parse_set("V_limits=[-0.4, 0.4]"), parse_set("label=first try")
(('V_limits', [-0.4, 0.4]), ('label', 'first try'))
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import UsageError

__all__ = ["UsageError", "expand", "load_inputs", "parse_set"]

_ARRAY_FORMS: dict[str, Callable[..., np.ndarray]] = {
    "linspace": np.linspace,
    "logspace": np.logspace,
    "geomspace": np.geomspace,
    "arange": np.arange,
    "array": np.asarray,
}

# What numpy raises for arguments it makes no array of: ZeroDivisionError for a step of 0,
# MemoryError for a size it cannot allocate, RecursionError for a list that holds itself.
_BAD_ARGUMENTS = (
    TypeError,
    ValueError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
    RecursionError,
)
#: Lists in lists (or mappings) deeper than this are refused; numpy has at most 64 axes.
_MAX_DEPTH = 100
_TOO_DEEP = f"lists or mappings nested too deeply (more than {_MAX_DEPTH} levels)"


def load_inputs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an inputs file (``.json``, ``.yaml`` or ``.yml``) into a dict of input values."""
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise UsageError(f"inputs file {file} must end in .json, .yaml or .yml")
    try:
        text = file.read_text(encoding="utf-8-sig")  # JSON and YAML files are UTF-8
    except OSError as e:
        raise UsageError(f"cannot read inputs file {file}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{file}: not UTF-8 text (byte {e.start} cannot be decoded); save it as UTF-8"
        ) from None
    if suffix == ".json":
        if _json_nesting(text) > _MAX_DEPTH:
            raise UsageError(f"{file}: not readable: {_TOO_DEEP}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{file}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
        except RecursionError:
            raise UsageError(f"{file}: not readable: {_TOO_DEEP}") from None
        except ValueError as e:  # an integer of more than 4300 digits
            raise UsageError(f"{file}: not readable: {_unreadable(e)}") from None
    else:
        data = _load_yaml(file, text)
    if not isinstance(data, dict):
        raise UsageError(
            f"inputs file {file} must hold a mapping of input names to values, "
            f"not a {type(data).__name__}"
        )
    base = file.resolve().parent
    return {str(name): expand(value, base, str(name)) for name, value in data.items()}


def _load_yaml(file: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise UsageError(
            f"reading {file} needs PyYAML: 'pip install pyyaml', or write the inputs as JSON"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f":{where.line + 1}:{where.column + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"{file}{at}: not valid YAML: {problem}") from None
    except RecursionError:
        raise UsageError(f"{file}: not readable: {_TOO_DEEP}") from None
    except (ValueError, TypeError, OverflowError) as e:  # a value such as 2020-02-30
        raise UsageError(f"{file}: not readable: {_unreadable(e)}") from None
    except Exception as e:  # PyYAML's constructors raise anything: '!!int ' is an IndexError
        raise UsageError(
            f"{file}: not readable: PyYAML failed with {type(e).__name__}: {e}; check the "
            "values with explicit tags such as !!int, !!float, !!bool or !!timestamp"
        ) from None


def _json_nesting(text: str) -> int:
    """How deep JSON ``text`` nests lists and objects, strings skipped (no recursion).

    Checked before parsing: how deep ``json`` itself may go depends on the process's
    recursion limit, which test runners and libraries change.
    """
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _unreadable(e: Exception) -> str:
    """Why a value cannot be read, e.g. an integer of more than 4300 digits."""
    message = str(e).split("; use sys.set_int_max_str_digits", 1)[0]
    if "integer string conversion" in message:
        message += "; write such a number in quotes, or as a float"
    return message


def parse_set(item: str) -> tuple[str, Any]:
    """``name=value`` from ``--set``: the value is read as JSON, or else taken as a string."""
    name, sep, text = item.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise UsageError(f"--set {_short(item)}: expected name=value, e.g. --set mesh_size=0.01")
    if _json_nesting(text) > _MAX_DEPTH:
        raise UsageError(f"--set {name}: the value has {_TOO_DEEP}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    except RecursionError:
        raise UsageError(f"--set {name}: the value has {_TOO_DEEP}") from None
    except ValueError as e:  # JSON, but an integer of more than 4300 digits
        raise UsageError(f"--set {name}: {_unreadable(e)}") from None
    return name, value


def expand(value: Any, base: Path, name: str) -> Any:
    """Turn the text forms of arrays in ``value`` into numpy arrays (see the module docs)."""
    try:
        return _expand(value, base, name, set())
    except RecursionError:
        raise UsageError(f"input {name!r} has {_TOO_DEEP}") from None


def _expand(value: Any, base: Path, name: str, inside: set[int]) -> Any:
    """:func:`expand`; ``inside`` holds the ids of the lists and dicts being expanded."""
    if isinstance(value, dict | list):
        if id(value) in inside:  # YAML's '&a [*a]' makes a list that holds itself
            raise UsageError(
                f"input {name!r} contains itself (a YAML alias inside its own anchor); "
                "write the value out instead"
            )
        if len(inside) >= _MAX_DEPTH:  # explicit: the recursion limit varies by process
            raise UsageError(f"input {name.split('[')[0].split('.')[0]!r} has {_TOO_DEEP}")
        inside.add(id(value))
        try:
            return _expand_container(value, base, name, inside)
        finally:
            inside.discard(id(value))
    if isinstance(value, str) and _array_file(value):
        return _load_array_file(value, base, name)
    return value


def _expand_container(
    value: dict[Any, Any] | list[Any], base: Path, name: str, inside: set[int]
) -> Any:
    if isinstance(value, list):
        return [_expand(v, base, f"{name}[{i}]", inside) for i, v in enumerate(value)]
    if len(value) == 1:
        ((form, args),) = value.items()
        if form in _ARRAY_FORMS:
            return _array_form(form, args, name)
    return {k: _expand(v, base, f"{name}.{k}", inside) for k, v in value.items()}


def _array_form(form: str, args: Any, name: str) -> np.ndarray:
    example = {"linspace": "[0, 1, 10]", "logspace": "[-3, 0, 4]", "geomspace": "[1, 1000, 4]"}
    hint = example.get(form, "[start, stop, step]")
    written = f'{{"{form}": {_short(args)}}}'
    try:
        if form == "array":
            result = np.asarray(args)
        elif isinstance(args, dict):
            result = _ARRAY_FORMS[form](**args)
        elif isinstance(args, list):
            result = _ARRAY_FORMS[form](*args)
        else:
            result = _ARRAY_FORMS[form](args)
    except _BAD_ARGUMENTS as e:
        raise UsageError(
            f"input {name!r}: {written} is not a valid {form} ({_one_line(e)}); write e.g. "
            f'{{"{form}": {hint}}}'
        ) from None
    if not isinstance(result, np.ndarray):  # e.g. retstep=True: (array, step)
        raise UsageError(
            f"input {name!r}: {written} gives a {type(result).__name__}, not an array; "
            f'write e.g. {{"{form}": {hint}}}'
        )
    return result


def _shown(path: Path) -> str:
    """``path`` as is, or quoted if it holds a newline or another unprintable character."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _one_line(e: BaseException) -> str:
    """An exception's message on one line, as the command line prints it."""
    return " ".join(str(e).split()) or type(e).__name__


def _short(value: Any, limit: int = 80) -> str:
    """``value`` as the user wrote it (JSON, else Python's repr), cut to ``limit`` characters."""
    try:
        text = value if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError, RecursionError):  # YAML dates and sets, or a list in itself
        text = repr(value)
    if isinstance(value, str):
        text = repr(text)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _array_file(text: str) -> bool:
    path = text.rsplit(":", 1)[0] if ".nc:" in text else text
    return path.endswith((".npy", ".nc"))


def _load_array_file(text: str, base: Path, name: str) -> np.ndarray:
    variable = None
    if ".nc:" in text:
        text, variable = text.rsplit(":", 1)
    try:
        path = (base / Path(text).expanduser()).resolve()
        found = path.is_file()
    except (OSError, RuntimeError, ValueError) as e:  # no such '~user', name too long, NUL
        raise UsageError(
            f"input {name!r}: {_short(text)} is not a usable file name ({_one_line(e)})"
        ) from None
    if not found:
        raise UsageError(f"input {name!r}: no array file {_shown(path)}")
    try:
        if path.suffix == ".npy":
            array: np.ndarray = np.load(path, allow_pickle=False)
            return array
        import xarray as xr

        with xr.open_dataset(path) as ds:
            names = list(ds.data_vars)
            if variable is None:
                if len(names) != 1:
                    raise UsageError(
                        f"input {name!r}: {_shown(path)} holds {len(names)} variables "
                        f"({', '.join(map(str, names))}); name one as '{text}:VARIABLE'"
                    )
                variable = str(names[0])
            if variable not in ds:
                raise UsageError(
                    f"input {name!r}: {_shown(path)} has no variable {variable!r} "
                    f"(it has {', '.join(map(str, names)) or 'none'})"
                )
            return np.asarray(ds[variable].values)
    except UsageError:
        raise
    except Exception as e:  # numpy and netCDF raise many types for a bad file
        raise UsageError(f"input {name!r}: cannot read {_shown(path)}: {_one_line(e)}") from None
