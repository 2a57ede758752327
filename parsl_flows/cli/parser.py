"""The argument parser of ``python -m parsl_flows``: every command, its options and examples.

Only the words of the command line live here; each command's work is in the module of its
group (:mod:`.running`, :mod:`.inspecting`, :mod:`.housekeeping`), found through the
``handler`` each subparser sets.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import NoReturn

from .common import PROG
from .debugging import cmd_reproduce
from .housekeeping import cmd_cleanup, cmd_compact, cmd_reindex
from .inspecting import cmd_graph, cmd_list, cmd_log, cmd_plan, cmd_status
from .running import cmd_restart, cmd_resume, cmd_run

__all__ = ["make_parser"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the program and the fix."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"parsl_flows: error: {message} (see '{self.prog} --help')\n")


def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip("\n"), "  ")


def make_parser() -> argparse.ArgumentParser:
    """The parser of every command (each with its own ``--help`` and examples)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="Run parsl_flows workflows and look at their runs.",
        formatter_class=formatter,
        epilog=_examples(
            """
            python -m parsl_flows run examples/electrostatics.py:flow \\
                --inputs examples/electrostatics.json
            python -m parsl_flows list
            python -m parsl_flows status 2026
            python -m parsl_flows COMMAND --help

            RUN is a run id, a unique prefix of one, or a run directory. Runs are looked
            for in --store DIR, else $PARSL_FLOWS_STORE, else ./parsl-flows-store.
            """
        ),
    )
    _common_options(parser, defaults=True)
    common = _Parser(add_help=False)
    _common_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_: str, examples: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_[0].upper() + help_[1:] + ".",
            parents=[common],
            formatter_class=formatter,
            epilog=_examples(examples),
        )
        return p

    p = command(
        "run",
        "run a workflow from a Python file, showing its progress, then a summary",
        """
        python -m parsl_flows run examples/electrostatics.py:flow \\
            --inputs examples/electrostatics.json
        python -m parsl_flows run flows.py:flow --inputs inputs.yaml --set mesh_size=0.01
        python -m parsl_flows run flows.py:make_flow --set 'V_left={"linspace": [0, 1, 10]}'
        python -m parsl_flows run flows.py:flow --inputs in.json --config configs/local.py
        python -m parsl_flows run flows.py:flow --inputs in.json --detach
        python -m parsl_flows run flows.py:flow --inputs in.json --reuse store [--dry-run]

        NAME is a workflow, a step (run on its own), or a function of no arguments that
        returns a workflow. Inputs files are JSON or YAML mappings; arrays are lists,
        {"linspace": [0, 1, 10]}, {"arange": [...]}, {"logspace": [...]},
        {"array": [[...]]}, or the path of a .npy or .nc file.
        """,
    )
    p.add_argument("target", metavar="FILE.py:NAME", help="the file and the name of the plan")
    _input_options(p)
    _environment_options(p, "the plan's own, else localhost")
    _reuse_option(p, "nothing")
    _detach_option(p)
    _dry_run_option(p, "per step, how many elements would be reused and computed")
    p.set_defaults(handler=cmd_run)

    p = command(
        "status",
        "show a run's progress, or a table of recent runs",
        """
        python -m parsl_flows status                   # runs of the last two days
        python -m parsl_flows status 20261126-1015     # one run (a unique id prefix)
        python -m parsl_flows status 20261126-1015 --follow
        """,
    )
    p.add_argument("run", metavar="RUN", nargs="?", help="the run (default: list recent runs)")
    p.add_argument(
        "-f", "--follow", action="store_true", help="follow the run until it ends, then summarise"
    )
    p.set_defaults(handler=cmd_status)

    p = command(
        "log",
        "print the log of a run, or of one of its steps",
        """
        python -m parsl_flows log 20261126-1015
        python -m parsl_flows log 20261126-1015 modified_electrostatics
        python -m parsl_flows log 20261126-1015 3      # the step at position 3 (from 0)
        """,
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("step", metavar="STEP", nargs="?", help="a step name, or its position")
    p.set_defaults(handler=cmd_log)

    p = command(
        "graph",
        "draw a run: its plan, each step coloured by its outcome; or a map step's elements",
        """
        python -m parsl_flows graph 20261126-1015 -o run.png
        python -m parsl_flows graph 20261126-1015 -o run.svg
        python -m parsl_flows graph 20261126-1015 modified_electrostatics -o outcome.png

        With STEP (a map step), the picture is its elements over the swept values: ok,
        failed (by exception type), not run, reused (needs matplotlib:
        pip install "parsl_flows[plot]").
        """,
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument(
        "step", metavar="STEP", nargs="?", help="a map step (name or position): its elements"
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="picture file: .png, .svg, .pdf (default RUN.png, or RUN-STEP.png)",
    )
    p.set_defaults(handler=cmd_graph)

    p = command(
        "plan",
        "describe a workflow without running it, or draw it with -o",
        """
        python -m parsl_flows plan examples/electrostatics.py:flow
        python -m parsl_flows plan examples/electrostatics.py:flow -o plan.png
        """,
    )
    p.add_argument("target", metavar="FILE.py:NAME")
    p.add_argument("-o", "--output", metavar="FILE", help="picture file: .png, .svg or .pdf")
    p.set_defaults(handler=cmd_plan)

    p = command(
        "list",
        "list the runs in the store, newest first",
        """
        python -m parsl_flows list
        python -m parsl_flows list --running
        python -m parsl_flows list --since 2d         # also 12h, 30m, 1w
        """,
    )
    p.add_argument("--running", action="store_true", help="only runs that are still going")
    p.add_argument("--since", metavar="AGE", help="only runs started this long ago: 2d, 12h, 30m")
    p.set_defaults(handler=cmd_list)

    p = command(
        "cleanup",
        "stop what dead drivers left running: Parsl processes, Slurm blocks, stale locks",
        """
        python -m parsl_flows cleanup
        python -m parsl_flows cleanup --store /scratch/me/parsl-flows-store

        Needed only when a driver died where nothing could follow it (a rebooted login
        node); runs stay resumable.  A driver of another login node counts as dead once
        its lease expired ($PARSL_FLOWS_LEASE_SECONDS, 90 s): its Slurm jobs are
        cancelled, its processes named, not signalled.
        """,
    )
    p.set_defaults(handler=cmd_cleanup)

    p = command(
        "compact",
        "rewrite an ended run's one-file-per-element results as task files, same values",
        """
        python -m parsl_flows compact 20261126-1015
        python -m parsl_flows compact --all --store /scratch/me/parsl-flows-store

        For runs written before task files (and runs resumed or restarted from them):
        each map folder's __<n>__.pickle files become a few task files and an index.
        Nothing is removed before what replaces it is written and checked, so a
        compaction cut short leaves a run that reads the same; run it again to finish.
        Runs still running, or interrupted (resume them first), are left alone.
        """,
    )
    p.add_argument("run", metavar="RUN", nargs="?", help="the run (or --all)")
    p.add_argument("--all", action="store_true", help="every finished or failed run of the store")
    p.set_defaults(handler=cmd_compact)

    p = command(
        "reindex",
        "build the store's reuse index again from its runs (what --reuse store looks up)",
        """
        python -m parsl_flows reindex
        python -m parsl_flows reindex --store /scratch/me/parsl-flows-store

        Each run leaves <store>/reuse-index/<run>.npz as it ends, and a lookup builds the
        file of an ended run that has none; this builds every ended run's file again
        (after copying runs in by hand, say) and removes those of runs no longer there.
        Runs still running are left alone.
        """,
    )
    p.set_defaults(handler=cmd_reindex)

    p = command(
        "resume",
        "carry on a run whose driver died (a killed shell, kernel or node)",
        """
        python -m parsl_flows resume 20261126-1015
        python -m parsl_flows resume 20261126-1015 --detach

        Only what is not in the store yet is computed.  On another login node than the
        old driver's, it refuses while that driver's lease is live and takes over once
        the lease expired ($PARSL_FLOWS_LEASE_SECONDS, 90 s).
        """,
    )
    p.add_argument("run", metavar="RUN")
    _detach_option(p)
    _dry_run_option(p, "how many elements each step has in the store and would compute")
    p.set_defaults(handler=cmd_resume)

    p = command(
        "restart",
        "run a finished run again, with changed inputs, and follow it like run",
        """
        python -m parsl_flows restart 20261126-1015 --set mesh_error=false
        python -m parsl_flows restart 20261126-1015 --set 'V_limits=[-1, 1]' --detach
        python -m parsl_flows restart 20261126-1015 --inputs more.json --env threads

        python -m parsl_flows restart 20261126-1015 --recompute modified_get_charge:failed
        python -m parsl_flows restart 20261126-1015 --recompute 'run_electrostatics:V_left>0.3'
        python -m parsl_flows restart 20261126-1015 --recompute STEP:ConvergenceError --dry-run

        Inputs not given keep the old run's values; the new run goes in the same store.
        Results whose code and inputs did not change are reused, except the elements
        --recompute names (and what reads them downstream).
        """,
    )
    p.add_argument("run", metavar="RUN")
    _input_options(p)
    _environment_options(p, "the old run's")
    p.add_argument(
        "--recompute",
        metavar="STEP:SELECTION",
        action="append",
        default=[],
        help="compute these elements again even if unchanged: STEP:failed, STEP:all, "
        "STEP:ExceptionName or STEP:V_left>0.3 (a swept value or index label; repeatable)",
    )
    _reuse_option(p, "the old run's results")
    _detach_option(p)
    _dry_run_option(p, "per step, how many elements would be reused and computed")
    p.set_defaults(handler=cmd_restart)

    p = command(
        "reproduce",
        "run one element of a step again here, with the inputs it had, for debugging",
        """
        python -m parsl_flows reproduce 20261126-1015 modified_electrostatics a=2 b=7
        python -m parsl_flows reproduce 20261126-1015 modified_electrostatics V_left=1.0 V_right=0.5
        python -m parsl_flows reproduce 20261126-1015 modified_get_charge n=47
        python -m parsl_flows reproduce 20261126-1015 make_geometry

        Name the element by index labels, swept values (the nearest, which must be
        close) or flat index n; a plain step takes none.  A failing element prints its
        traceback and exits 1; else its value is printed.  Nothing is written.
        """,
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("step", metavar="STEP", help="the step's name")
    p.add_argument("where", metavar="NAME=VALUE", nargs="*", help="which element (a=2 b=7)")
    p.set_defaults(handler=cmd_reproduce)
    return parser


def _reuse_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--reuse",
        choices=("store", "none"),
        default=None,
        help="store: take any element of any earlier run of the store with the same code "
        f"and inputs; none: compute everything (default: {default})",
    )


def _dry_run_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--dry-run", action="store_true", help=f"print {what}; write nothing, start nothing"
    )


def _common_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    # Given before or after the command; a subcommand's default must not undo a main one.
    p.add_argument(
        "--store",
        metavar="DIR",
        default=None if defaults else argparse.SUPPRESS,
        help="the store (default: $PARSL_FLOWS_STORE, else ./parsl-flows-store)",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="show the traceback of an error",
    )


def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", metavar="FILE", help="inputs as JSON or YAML (.json/.yaml/.yml)")
    p.add_argument(
        "--set",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        dest="sets",
        help="set one input; VALUE is read as JSON, else as a string (repeatable)",
    )


def _environment_options(p: argparse.ArgumentParser, default: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--config", metavar="PATH", help="a Python file defining a Parsl 'config' (configs/*.py)"
    )
    group.add_argument(
        "--env",
        metavar="NAME",
        help="a computer: localhost, threads, or one described in "
        f"~/.config/parsl_flows/computers.toml (default: {default})",
    )


def _detach_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detach",
        action="store_true",
        help="run in a background process: print the run id and return at once",
    )
