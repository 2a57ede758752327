"""The commands that start runs, ``run``, ``restart`` and ``resume``, here or detached.

Each checks everything it can (the plan, the inputs, the environment) before anything is
submitted, then either follows the run in this process to its end or hands it to a
background process (``--detach``) and returns with the run's id.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..engine import stopping
from ..engine.environment import ExecutionEnvironment, execution_environment, from_file
from ..engine.reuse import Reuse
from ..launch import submit
from ..preview import preview, preview_resume
from ..run import Run
from ..store import default_store
from ..workflow import Builder, build
from .common import PROG, CommandError, UsageError, exit_status, load
from .debugging import recompute_selections
from .inputs import expand, load_inputs, parse_set
from .plans import load_plan
from .progress import follow
from .summary import print_summary

__all__ = ["cmd_restart", "cmd_resume", "cmd_run", "follow_to_end"]


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
    reuse = _reuse(args)
    if args.dry_run:
        print(preview(builder, reuse=reuse, store=store))
        return 0
    return _start(args, lambda: submit(builder, store=store, reuse=reuse), store)


def _reuse(args: argparse.Namespace) -> Reuse:
    """``--reuse``: store, none, or (not given) what a restart comes from."""
    if args.reuse == "store":
        return "store"
    return args.reuse != "none"


def cmd_restart(args: argparse.Namespace) -> int:
    """The old run's plan and inputs, with the given inputs changed, as a new run."""
    old = load(args)
    builder = old.get_builder_restart()
    builder.recompute = recompute_selections(old, args.recompute)
    changes = _gather_inputs(args)
    builder.kwargs.update(changes)
    if args.config or args.env:
        builder.workflow = builder.workflow.on(_environment(args, None))
    _validated(builder)
    store = old.path.parents[1]
    reuse = _reuse(args)
    if args.dry_run:
        print(preview(builder, reuse=reuse, store=store))
        return 0
    what = ", ".join(changes) or "no inputs"
    print(f"restart of {old.id} (changed: {what})")
    return _start(args, lambda: submit(builder, store=store, reuse=reuse), store)


def cmd_resume(args: argparse.Namespace) -> int:
    """Carry on a run whose driver died; a run that ended is only summarised."""
    run = load(args)
    if not hasattr(run, "resume"):
        raise UsageError("this version of parsl_flows cannot resume runs")
    if args.dry_run:
        print(preview_resume(run.path))
        return 0
    if run.status in ("finished", "failed"):
        print(f"run {run.id} already ended ({run.status}): nothing to resume")
        print(f"(to run it again with other inputs: {PROG} restart {run.id} --set NAME=VALUE)")
        print()
        print_summary(run, sys.stdout, tty=sys.stdout.isatty())
        return exit_status(run)

    def start() -> Run:
        try:
            resumed: Run = run.resume()
        except RuntimeError as e:  # e.g. its driver is still alive
            raise UsageError(str(e)) from e
        return resumed

    # A resumed run keeps one driver log: each driver appends to it.
    return _start(args, start, run.path.parents[1], run.path / "driver.log")


# -- what the commands are given -------------------------------------------------------------


def _gather_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The inputs file, then each ``--set`` on top of it."""
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


# -- following a run here, or starting it in the background ----------------------------------


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
    return follow_to_end(run, tty=sys.stdout.isatty(), owned=True)


def follow_to_end(run: Run, tty: bool, owned: bool) -> int:
    """Show ``run``'s progress until it ends, then its summary; return the exit status.

    ``owned``: this process drives the run, so Ctrl-C stops the run itself (it ends
    'interrupted', resumable); a run only watched (``status --follow``) is left alone.
    """
    try:
        with _saying_when_interrupted(run) if owned else contextlib.nullcontext():
            follow(run, sys.stdout, tty)
    except KeyboardInterrupt:
        if not owned:
            raise
        # The same stop as a script's or a notebook's Ctrl-C: the run ends 'interrupted'.
        # (Ctrl-C while waiting for the run has already stopped it: see Run.wait.)
        run.interrupt()
        print_summary(run, sys.stdout, tty)
        print(f"\ncarry on: {PROG} resume {run.id}", file=sys.stderr)
        return 130
    print()
    print_summary(run, sys.stdout, tty)
    status = exit_status(run)
    if status:
        print(f"\nsee why: {PROG} log {run.id} [STEP]")
        print(f"         {PROG} graph {run.id} -o run.png")
        if run.status == "interrupted":
            print(f"carry on: {PROG} resume {run.id}")
    return status


@contextlib.contextmanager
def _saying_when_interrupted(run: Run) -> Iterator[None]:
    """Ctrl-C says at once that the run is being stopped, before the stop (seconds, with
    Parsl to shut down) wherever the KeyboardInterrupt lands: in ``run.wait``, whose own
    handler stops the run, or in drawing the progress.  A second Ctrl-C, from then on,
    exits at once (as during :func:`~parsl_flows.engine.stopping.interrupt`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def say_and_raise(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, stopping.exit_at_once)  # a second one, from now on
        print(f"\ninterrupted: stopping run {run.id}; what finished is kept", file=sys.stderr)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, say_and_raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
    return follow_to_end(run, tty=False, owned=True)


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
