"""What every command shares: the program's name, its two kinds of error, finding a run.

The two errors carry the exit status: :class:`UsageError` (2) when the user asked for
something that cannot be (a bad file, name, input or option), :class:`CommandError` (1)
when a sound request could not be done.  :func:`parsl_flows.cli.main` turns either into
one line on stderr.
"""

from __future__ import annotations

import argparse

from ..run import Run, load_run

__all__ = ["PROG", "CommandError", "UsageError", "exit_status", "load"]

PROG = "python -m parsl_flows"


class UsageError(Exception):
    """The command line was used wrongly: a bad file, name, input or option (exit status 2)."""


class CommandError(Exception):
    """A command could not do its work, for a reason that is not bad usage (exit status 1)."""


def load(args: argparse.Namespace) -> Run:
    """The run named by ``args.run`` in ``args.store``; an unknown one is bad usage."""
    try:
        return load_run(args.run, store=args.store)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e


def exit_status(run: Run) -> int:
    """0 for a run that ended well (or is still going), 1 for any other end."""
    status = run.status
    if status == "running":
        return 0
    return 0 if status == "finished" and run.exit_code == 0 else 1
