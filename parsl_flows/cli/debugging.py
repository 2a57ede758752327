"""``reproduce``: run one element of a run again in this process, and what it needs.

Also the pieces ``restart --recompute`` and ``--dry-run`` share with it: reading
``NAME=VALUE`` labels and ``STEP:SELECTION`` options, and printing a preview.
"""

from __future__ import annotations

import argparse
import ast
import sys
import traceback
from typing import Any

from ..reproduce import ElementInputMissing, reproduce_element
from ..run import Run
from ..selection import element_index, parse_selection, select_elements
from .common import UsageError, load

__all__ = ["cmd_reproduce", "read_labels", "recompute_selections"]


def read_labels(items: list[str]) -> dict[str, Any]:
    """``a=2 V_left=0.3`` as ``{"a": 2, "V_left": 0.3}``: values as Python literals, else text."""
    where: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"{item!r}: name an element as NAME=VALUE (a=2, V_left=0.3, n=47)")
        try:
            where[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            where[name] = text
    return where


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Call the element here: its traceback and exit 1 if it raises, else its value and 0."""
    run = load(args)
    try:
        step = run.step(args.step)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from e
    where = read_labels(args.where)
    try:
        n = element_index(step.path, where)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise UsageError(str(e.args[0]) if e.args else str(e)) from e
    print(f"reproducing element {n} of step {step.name} of run {run.id}", file=sys.stderr)
    try:
        value = reproduce_element(run.path, step.name, {"n": n} if step.is_map else {})
    except ElementInputMissing as e:
        raise UsageError(str(e)) from e
    except BaseException:  # the element's own failure, shown whole
        traceback.print_exc()
        return 1
    print(repr(value))
    return 0


def recompute_selections(run: Run, items: list[str]) -> dict[str, Any]:
    """``--recompute STEP:SELECTION`` options as what ``get_builder_restart`` takes."""
    chosen: dict[str, Any] = {}
    for item in items:
        try:
            name, what = parse_selection(item)
            step = run.step(name)
            chosen[name] = select_elements(step.path, what)
        except (KeyError, ValueError, TypeError) as e:
            raise UsageError(f"--recompute {item!r}: {e.args[0] if e.args else e}") from e
    return chosen
