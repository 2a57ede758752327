"""The command line: ``python -m parsl_flows COMMAND``.

Commands start runs (``run``, ``restart``, ``resume``: :mod:`.running`), look at them
(``status``, ``log``, ``list``, ``graph``, ``plan``: :mod:`.inspecting`) and tidy the store
(``cleanup``: :mod:`.housekeeping`).  Everything they show is read from the store, so
they work on runs driven by other processes, detached ones included.  :mod:`.parser` holds
the words of the command line, :mod:`.inputs` and :mod:`.plans` what it is handed,
:mod:`.progress` and :mod:`.summary` what a followed run looks like (drawn with
``rich`` on a terminal, plain lines in a pipe).

Exit status: 0 when the run (or the command) ended well, 1 when the run ended with
failures (or the command failed), 2 for bad usage (a bad file, name, input or option);
130 after Ctrl-C.  Problems are reported in one line, ``parsl_flows: error: ...``;
``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from collections.abc import Callable, Sequence

from .common import CommandError, UsageError
from .inspecting import describe
from .parser import make_parser

__all__ = ["describe", "main", "make_parser"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status."""
    with contextlib.suppress(AttributeError, ValueError):  # not every stream can
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UsageError as e:
        return _fail(args, str(e), 2)
    except CommandError as e:
        return _fail(args, str(e), 1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except Exception as e:  # anything unforeseen: still one line, unless --debug
        return _fail(args, f"{type(e).__name__}: {e} (--debug shows the traceback)", 1)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if args.debug:
        traceback.print_exc()
    print(f"parsl_flows: error: {message}", file=sys.stderr)
    return code
