"""The command line: ``python -m parsl_flows COMMAND``.

Commands start runs (``run``, ``restart``, ``resume``), watch them (``status``, ``log``,
``list``) and draw them (``graph``, ``plan``).  Everything they show is read from the
store, so they work on runs driven by other processes, detached ones included.

Exit status: 0 when the run (or the command) ended well, 1 when the run ended with
failures (or the command failed), 2 for bad usage (a bad file, name, input or option);
130 after Ctrl-C.  Problems are reported in one line, ``parsl_flows: error: ...``;
``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import report
from .cli_inputs import UsageError, load_inputs, load_plan, parse_set
from .cli_progress import follow, summary
from .engine.cleanup import cleanup
from .engine.environment import ExecutionEnvironment, execution_environment, from_file
from .engine.submit import submit
from .run import Run, StepRun, load_run
from .store import default_store
from .workflow import Builder, Map, Workflow, build

__all__ = ["main", "make_parser"]

PROG = "python -m parsl_flows"


class CommandError(Exception):
    """A command could not do its work, for a reason that is not bad usage (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the program and the fix."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"parsl_flows: error: {message} (see '{self.prog} --help')\n")


# -- the parser --------------------------------------------------------------------------


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

        NAME is a workflow, a step (run on its own), or a function of no arguments that
        returns a workflow. Inputs files are JSON or YAML mappings; arrays are lists,
        {"linspace": [0, 1, 10]}, {"arange": [...]}, {"logspace": [...]},
        {"array": [[...]]}, or the path of a .npy or .nc file.
        """,
    )
    p.add_argument("target", metavar="FILE.py:NAME", help="the file and the name of the plan")
    _input_options(p)
    _environment_options(p, "the plan's own, else localhost")
    _detach_option(p)
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
        "draw a run: its plan, each step coloured by its outcome",
        """
        python -m parsl_flows graph 20261126-1015 -o run.png
        python -m parsl_flows graph 20261126-1015 -o run.svg
        """,
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="picture file: .png, .svg, .pdf (default RUN.png)"
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
        node); runs stay resumable.
        """,
    )
    p.set_defaults(handler=cmd_cleanup)

    p = command(
        "resume",
        "carry on a run whose driver died (a killed shell, kernel or node)",
        """
        python -m parsl_flows resume 20261126-1015
        python -m parsl_flows resume 20261126-1015 --detach

        Only what is not in the store yet is computed.
        """,
    )
    p.add_argument("run", metavar="RUN")
    _detach_option(p)
    p.set_defaults(handler=cmd_resume)

    p = command(
        "restart",
        "run a finished run again, with changed inputs, and follow it like run",
        """
        python -m parsl_flows restart 20261126-1015 --set mesh_error=false
        python -m parsl_flows restart 20261126-1015 --set 'V_limits=[-1, 1]' --detach
        python -m parsl_flows restart 20261126-1015 --inputs more.json --env threads

        Inputs not given keep the old run's values; the new run goes in the same store.
        """,
    )
    p.add_argument("run", metavar="RUN")
    _input_options(p)
    _environment_options(p, "the old run's")
    _detach_option(p)
    p.set_defaults(handler=cmd_restart)
    return parser


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


# -- entry point -----------------------------------------------------------------------------


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


# -- helpers shared by the commands ------------------------------------------------------------


def _load(args: argparse.Namespace) -> Run:
    try:
        return load_run(args.run, store=args.store)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e


def _gather_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The inputs file, then each ``--set`` on top of it."""
    from .cli_inputs import expand

    inputs = load_inputs(args.inputs) if args.inputs else {}
    for item in args.sets:
        name, value = parse_set(item)
        inputs[name] = expand(value, Path.cwd(), name)
    return inputs


def _environment(args: argparse.Namespace, current: Any) -> Any:
    """``--config`` or ``--env`` if given, else the plan's own environment, else localhost."""
    if args.config:
        try:
            return from_file(args.config)
        except Exception as e:  # the config file is user code: any error is a usage error
            raise UsageError(f"--config {args.config}: {type(e).__name__}: {e}") from e
    if args.env:
        try:
            return execution_environment(None, args.env)
        except ValueError as e:
            raise UsageError(f"--env {args.env}: {e}") from e
    if isinstance(current, ExecutionEnvironment):
        return current
    return execution_environment(None, "localhost")


def _validated(builder: Builder) -> Builder:
    try:
        builder.validate()
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e
    return builder


def _exit_status(run: Run) -> int:
    """0 for a run that ended well (or is still going), 1 for any other end."""
    status = run.status
    if status == "running":
        return 0
    return 0 if status == "finished" and run.exit_code == 0 else 1


def _start(
    args: argparse.Namespace, start: Callable[[], Run], store: Path, log: Path | None = None
) -> int:
    """Start a run (here, or in a detached process) and follow it to its end."""
    if store.exists() and not store.is_dir():
        raise UsageError(f"the store {store} is a file, not a directory; give another --store")
    if args.detach:
        return _detach(start, store, log)
    run = start()
    print(f"run    {run.id}")
    print(f"store  {run.path.parents[1]}")
    return _follow_to_end(run, tty=sys.stdout.isatty(), owned=True)


def _follow_to_end(run: Run, tty: bool, owned: bool) -> int:
    try:
        follow(run, sys.stdout, tty)
    except KeyboardInterrupt:
        if not owned:
            raise
        # The same stop as a script's or a notebook's Ctrl-C: the run ends 'interrupted'.
        print(f"\ninterrupted: stopping run {run.id}; what finished is kept", file=sys.stderr)
        run.interrupt()
        print(summary(run))
        print(f"\ncarry on: {PROG} resume {run.id}", file=sys.stderr)
        return 130
    print()
    print(summary(run))
    status = _exit_status(run)
    if status:
        print(f"\nsee why: {PROG} log {run.id} [STEP]")
        print(f"         {PROG} graph {run.id} -o run.png")
        if run.status == "interrupted":
            print(f"carry on: {PROG} resume {run.id}")
    return status


def _detach(start: Callable[[], Run], store: Path, log: Path | None = None) -> int:
    """Start the run in a forked, session-leading child; print its id once it exists.

    The child is this very process after validation, so the run it submits is exactly
    the one checked here, with no second start-up.  Its output (and that of the Parsl
    processes it starts, which inherit it) goes to ``log``, or for a new run to
    ``<run>/driver.log`` once the run exists; it reports the run id, or its error,
    through a pipe.
    """
    if not hasattr(os, "fork"):
        raise UsageError("--detach needs a system with fork() (Linux or macOS)")
    store.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        try:
            message = json.loads(data)
        except json.JSONDecodeError:
            message = {"error": "the background process died before starting the run", "code": 1}
        if "error" in message:
            raise (UsageError if message.get("code") == 2 else CommandError)(message["error"])
        print(f"run    {message['run_id']}  (in the background, driver pid {pid})")
        print(f"store  {Path(message['path']).parents[1]}")
        print(f"log    {message['log']}")
        print(f"follow {PROG} status {message['run_id']} --follow")
        return 0

    os.close(read_fd)
    os.setsid()  # out of the terminal's session: Ctrl-C and hang-ups there do not reach us
    # Let go of the caller's terminal or pipes before anything starts, since Parsl's
    # helpers inherit these descriptors (a caller reading our output would wait for them).
    early_log = log or store / f".detached-{os.getpid()}.log"
    _redirect_output(early_log)
    try:
        run = start()
    except BaseException as e:
        code = 2 if isinstance(e, UsageError) else 1
        text = str(e) if isinstance(e, UsageError | CommandError) else f"{type(e).__name__}: {e}"
        os.write(write_fd, json.dumps({"error": text, "code": code}).encode())
        os.close(write_fd)
        if log is None:
            early_log.unlink(missing_ok=True)
        os._exit(code)
    if log is None:
        log = run.path / "driver.log"
        os.replace(early_log, log)  # the open descriptors follow the file
    started = {"run_id": run.id, "path": str(run.path), "log": str(log)}
    os.write(write_fd, json.dumps(started).encode())
    os.close(write_fd)
    print(f"run    {run.id}  (detached, driver pid {os.getpid()})")
    return _follow_to_end(run, tty=False, owned=True)


def _redirect_output(path: Path) -> None:
    """Point stdin at /dev/null and stdout and stderr at ``path``, for this process's life."""
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.close(null)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]


# -- the commands ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """Load, check and run a plan; nothing is submitted unless every check passes."""
    flow = load_plan(args.target)
    inputs = _gather_inputs(args)
    env = _environment(args, flow.environment)
    try:
        builder = build(flow.on(env), **inputs)
    except (ValueError, TypeError) as e:
        missing = "missing input" in str(e) and not args.inputs
        hint = " (give them with --inputs FILE or --set NAME=VALUE)" if missing else ""
        raise UsageError(f"{e}{hint}") from e
    store = default_store(args.store)
    return _start(args, lambda: submit(builder, store=store), store)


def cmd_restart(args: argparse.Namespace) -> int:
    """The old run's plan and inputs, with the given inputs changed, as a new run."""
    old = _load(args)
    builder = old.get_builder_restart()
    changes = _gather_inputs(args)
    builder.kwargs.update(changes)
    if args.config or args.env:
        builder.workflow = builder.workflow.on(_environment(args, None))
    _validated(builder)
    what = ", ".join(changes) or "no inputs"
    print(f"restart of {old.id} (changed: {what})")
    store = old.path.parents[1]
    return _start(args, lambda: submit(builder, store=store), store)


def cmd_resume(args: argparse.Namespace) -> int:
    """Carry on a run whose driver died; a run that ended is only summarised."""
    run = _load(args)
    if not hasattr(run, "resume"):
        raise UsageError("this version of parsl_flows cannot resume runs")
    if run.status in ("finished", "failed"):
        print(f"run {run.id} already ended ({run.status}): nothing to resume")
        print(f"(to run it again with other inputs: {PROG} restart {run.id} --set NAME=VALUE)")
        print()
        print(summary(run))
        return _exit_status(run)

    def start() -> Run:
        try:
            resumed: Run = run.resume()
        except RuntimeError as e:  # e.g. its driver is still alive
            raise UsageError(str(e)) from e
        return resumed

    # A resumed run keeps one driver log: each driver appends to it.
    return _start(args, start, run.path.parents[1], run.path / "driver.log")


def cmd_status(args: argparse.Namespace) -> int:
    """One run's progress tree (followed live with ``--follow``), or the recent runs."""
    if args.run is None:
        if args.follow:
            raise UsageError("--follow needs a RUN")
        table = report.recent_workflows(days=2, store=args.store)
        store = default_store(args.store)
        if not table:
            print(f"no runs in the last two days in {store}  ({PROG} list shows all)")
            return 0
        print(f"runs of the last two days in {store}:")
        print(table)
        return 0
    run = _load(args)
    if args.follow:
        print(f"run    {run.id}")
        return _follow_to_end(run, tty=sys.stdout.isatty(), owned=False)
    print(report.progress(run))
    if run.status == "interrupted":
        print(f"\nits driver is gone; carry on with: {PROG} resume {run.id}")
    return _exit_status(run)


def cmd_log(args: argparse.Namespace) -> int:
    run = _load(args)
    source: Run | StepRun = run if args.step is None else _find_step(run, args.step)
    sys.stdout.write(report.log(source))
    return 0


def _find_step(run: Run, key: str) -> StepRun:
    steps = run.steps
    for s in steps:
        if s.name == key:
            return s
    if key.isdigit() and int(key) < len(steps):
        return steps[int(key)]
    names = ", ".join(f"{i} {s.name}" for i, s in enumerate(steps))
    raise UsageError(f"run {run.id} has no step {key!r} (steps: {names})")


def cmd_graph(args: argparse.Namespace) -> int:
    run = _load(args)
    out = args.output or f"{run.id}.png"
    _draw(lambda: report.graph(run, filename=out), out)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    flow = load_plan(args.target)
    if args.output:
        _draw(lambda: flow.visualize(filename=args.output), args.output)
    else:
        print(describe(flow))
    return 0


def _draw(draw: Callable[[], Any], out: str) -> None:
    try:
        draw()
    except ValueError as e:  # graphviz: an unknown picture format
        raise UsageError(f"cannot draw {out}: {e}") from e
    except (RuntimeError, OSError) as e:  # no 'dot' program, or an unwritable place
        raise CommandError(f"cannot draw {out}: {e}") from e
    print(f"wrote {out}")


def describe(flow: Workflow) -> str:
    """A plan in words: its stages in order, its inputs and what it returns."""
    lines = [f"workflow {flow.name!r}: {len(flow.nodes)} steps in {len(flow.stages)} stages"]
    for number, stage in enumerate(flow.stages, 1):
        for k, node in enumerate(stage):
            label = f"{number:>3}  " if k == 0 else "     "
            call = f"{node.name}({', '.join(node.parameters)}) -> {', '.join(node.outputs)}"
            if isinstance(node, Map):
                call = f"map {node.name}: {node.mapspec}"
            extra = []
            if node.max_restarts > 1:
                extra.append(f"up to {node.max_restarts} attempts")
            if k > 0:
                extra.append(f"side by side with {stage[0].name}")
            lines.append(f"{label}{call}" + (f"   ({'; '.join(extra)})" if extra else ""))
    required = flow.required_parameters
    mapped = flow.mapped_parameters
    inputs = [
        p + ("[]" if p in mapped else "") + ("" if p in required else "?")
        for p in flow.parameter_order
    ]
    lines.append(f"inputs:  {', '.join(inputs)}")
    lines.append("         ([] mapped over: a list or array; ? optional: the step has a default)")
    returns = [e if e == o else f"{e} (= {o})" for e, o in flow.returned_outputs]
    lines.append(f"returns: {', '.join(returns)}")
    return "\n".join(lines)


def cmd_cleanup(args: argparse.Namespace) -> int:
    store = default_store(args.store)
    cleaned = cleanup(store)
    if not cleaned:
        print(f"nothing to clean up in {store}: no run there has a dead driver")
        return 0
    for found in cleaned:
        print(f"run {found.run_id}:")
        for action in found.actions:
            print(f"  {action}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = default_store(args.store)
    if args.running:
        table = report.running_workflows(store=args.store)
        what = "running runs"
    else:
        days = None if args.since is None else _parse_age(args.since)
        table = report.recent_workflows(days=days, store=args.store)
        what = "runs" if days is None else f"runs since {args.since}"
    if not table:
        print(f"no {what} in {store}")
        return 0
    print(table)
    return 0


_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNIT_DAYS = {"s": 1 / 86400, "m": 1 / 1440, "h": 1 / 24, "d": 1.0, "w": 7.0, "": 1.0}


def _parse_age(text: str) -> float:
    """``2d``, ``12h``, ``30m``, ``1w`` or a number of days, in days."""
    m = _AGE.fullmatch(text)
    if not m:
        raise UsageError(f"--since {text!r}: expected an age such as 2d, 12h, 30m or 1w")
    return float(m.group(1)) * _UNIT_DAYS[m.group(2)]
