"""Throughput of a two-map parsl_flows workflow against bare Parsl and a serial loop.

    python benchmarks/map_throughput.py --n 100000 [--variant float|object] [--store DIR]
                                        [--pairs 2]

The workload has the seed's shape (``_workload.py``): ``e[a, b] = f(V_left[a], V_right[b])``
over an outer product of A x B = n elements (A the largest divisor of n <= sqrt(n):
100000 is 250 x 400, 2000 is 40 x 50), then ``c[a, b] = g(e[a, b])``, then the mean of
``c``.  ``f`` and ``g`` cost about 1 µs each (the header prints what they cost here) and
return a float, or with ``--variant object`` a small frozen dataclass holding the float.
Every system does the same file work, with the parsl_flows store's own functions: one file per
element of both maps (temporary name, then ``os.replace``), the second map reading the
first map's files and the mean reading the second map's files.  The systems:

  serial loop           the loops in one process (the baseline);
  bare Parsl, per app   one python_app per element, the second map's app waiting on the
                        first's future; skipped above 20,000 elements;
  bare Parsl, 16 tasks  hand-chunked: 16 apps per map, each doing its slice of elements;
  parsl_flows cold      a fresh process that imports parsl_flows and calls ``flows.run``:
                        its whole wall time, Python and Parsl start-up included;
  parsl_flows warm      ``flows.run`` in a process that already ran the workflow on 32
                        elements (Parsl started, every worker has had tasks).

All use ``parsl_flows.engine.configs.local_config()`` (local HighThroughputExecutor, one
worker per core) and the same store folder.  Each run is a fresh subprocess of this script
(``--only SYSTEM``), so its driver peak RSS (``ru_maxrss``) is its own; the bare Parsl runs
leave their first app (workers starting) out of the time, as parsl_flows warm does.  Each
system runs right after a serial loop, in pairs (``--pairs``); files are removed after each
run; every run's mean of c must equal the serial loop's exactly (``math.fsum``).

Reading the table: "median s" is the median wall time over the pairs, "vs serial" the
median over pairs of (system time / the serial loop time of its pair): the cost of the
scheduling on top of the same work, on this machine.  "µs/elem" divides the time by the
2n map elements.  "peak MB" is the largest driver ``ru_maxrss`` over the runs; the serial
loop's is the floor (this script with Parsl, parsl_flows and numpy imported), so the
differences are what each system holds in memory.  For parsl_flows, "first s" is the time
from the ``flows.run`` call to the first element file of the first map (cold: Parsl and its
workers start inside it), and "helper MB" the peak memory of the helper process that
writes the ``dataset.nc`` files (``engine/datasets.py``), which is not in the driver's.
For bare Parsl, "first s" is from ``parsl.load`` to the result of its first app, one
trivial call: Parsl's own start-up (interchange, worker pool, workers) on this machine,
the floor under parsl_flows cold's first file.
Machines here are noisy: compare figures from one invocation, not across days.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _workload as work
import parsl
from parsl.app.app import python_app
from parsl.dataflow.dflow import DataFlowKernel
from parsl.dataflow.futures import AppFuture

import parsl_flows as flows
from parsl_flows import FileBasedObjectArray
from parsl_flows.engine.configs import local_config
from parsl_flows.engine.datasets import dataset_writer
from parsl_flows.workflow import Map, Workflow, map_, new_workflow

work.make_importable()  # before Parsl starts workers and before any subprocess

PER_APP_LIMIT = 20_000  # above this many elements, "bare Parsl, per app" is skipped
TASKS_PER_MAP = 16
SYSTEMS = {
    "serial": "serial loop with files",
    "bare-apps": "bare Parsl, per app",
    "bare-chunked": f"bare Parsl, {TASKS_PER_MAP} tasks",
    "flows-cold": "parsl_flows cold",
    "flows-warm": "parsl_flows warm",
}


# -- the parsl_flows workflow (steps in __main__: parsl_flows ships them by value) ----------


@flows.step(returns="e")
def f_step(V_left: float, V_right: float, boxed: bool) -> work.Element:
    return work.f(V_left, V_right, boxed)


@flows.step(returns="c")
def g_step(e: work.Element, boxed: bool) -> work.Element:
    return work.g(e, boxed)


@flows.step(returns="mean_c")
def mean_step(c: FileBasedObjectArray) -> float:
    return work.mean_of(c.to_array().compressed())


def two_maps(first: Map | None = None) -> Workflow:
    """f over the outer product, g over its output, then the mean (``first`` replaces f's map)."""
    return (
        new_workflow("map_throughput")
        .then(first or map_(f_step, "V_left[a], V_right[b] -> e[a, b]"))
        .then(map_(g_step, "e[a, b] -> c[a, b]"))
        .then(mean_step)
    )


def run_flow(flow: Workflow, store: Path, **inputs: Any) -> tuple[flows.Run, float, float]:
    """Run ``flow`` on the local HTEX; the run, its ``flows.run`` wall time, and the time
    from that call to the first element file of the first map."""
    env = flows.engine.execution_environment(None, "localhost")
    builder = flows.workflow.build(flow.on(env), **inputs)
    first = work.FirstFiles(store, ["00-*"])
    first.start()
    t0, t = time.time(), time.perf_counter()
    run = flows.run(builder, store=store)
    seconds = time.perf_counter() - t
    return run, seconds, first.stop().get("00-*", float("nan")) - t0


def flow_mean(run: flows.Run) -> float:
    if run.exit_code != 0:
        raise RuntimeError(f"run {run.id} ended with exit code {run.exit_code}:\n{run.log()}")
    mean: float = run.step("mean_step").output("mean_c").fetch_value()
    return mean


# The warm-up of parsl_flows warm: a tiny run (4 x 8 elements), but tasks for every worker.
WARM_UP_ELEMENTS = 32


def warm_up_flows(store: Path, boxed: bool) -> None:
    """A tiny run of the same workflow: Parsl and its workers are up afterwards."""
    v_left, v_right = work.voltages(WARM_UP_ELEMENTS)
    flow_mean(run_flow(two_maps(), store, V_left=v_left, V_right=v_right, boxed=boxed)[0])


def flows_once(n: int, boxed: bool, workdir: Path, warm: bool) -> tuple[float, float, float]:
    store = workdir / "store"
    if warm:
        warm_up_flows(store, boxed)
    v_left, v_right = work.voltages(n)
    run, seconds, first = run_flow(two_maps(), store, V_left=v_left, V_right=v_right, boxed=boxed)
    return seconds, flow_mean(run), first


# -- serial loop and bare Parsl ------------------------------------------------------------


def folders(workdir: Path) -> tuple[str, str]:
    e, c = workdir / "e", workdir / "c"
    e.mkdir()
    c.mkdir()
    return str(e), str(c)


def serial_once(n: int, boxed: bool, workdir: Path) -> tuple[float, float]:
    v_left, v_right = work.voltages(n)
    e, c = folders(workdir)
    t = time.perf_counter()
    work.e_range(v_left, v_right, boxed, e, 0, n)
    work.c_range(e, boxed, c, 0, n)
    mean = work.mean_of_files(c, n)
    return time.perf_counter() - t, mean


def per_app(
    label: str, v_left: list[float], v_right: list[float], boxed: bool, e: str, c: str
) -> AppFuture:
    """One app per element; the driver waits for the second map, then the mean's app."""
    e_app = python_app(work.e_element, executors=[label])
    c_app = python_app(work.c_element, executors=[label])
    n_right = len(v_right)
    n = len(v_left) * n_right
    futures = []
    for k in range(n):
        x, y = v_left[k // n_right], v_right[k % n_right]
        e_future = e_app(x, y, boxed, e, k)
        futures.append(c_app(e_future, boxed, c, k))
    for future in futures:
        future.result()
    return python_app(work.mean_of_files, executors=[label])(c, n)


def chunked(
    label: str, v_left: list[float], v_right: list[float], boxed: bool, e: str, c: str
) -> AppFuture:
    """16 apps per map, each a contiguous slice; slice i of g waits on slice i of f."""
    e_app = python_app(work.e_range, executors=[label])
    c_app = python_app(work.c_range, executors=[label])
    n = len(v_left) * len(v_right)
    futures = [
        c_app(e_app(v_left, v_right, boxed, e, lo, hi), boxed, c, lo, hi)
        for lo, hi in work.chunks(n, TASKS_PER_MAP)
    ]
    for future in futures:
        future.result()
    return python_app(work.mean_of_files, executors=[label])(c, n)


def bare_parsl_once(
    n: int, boxed: bool, workdir: Path, submit: Callable[..., Any]
) -> tuple[float, float, float]:
    """The time of the maps with Parsl up, their mean of c, and how long Parsl took from
    ``parsl.load`` to its first app's result (its start-up: not in the first figure)."""
    config = local_config(label="bare")
    config.run_dir = str(workdir / "runinfo")
    t = time.perf_counter()
    dfk: DataFlowKernel = parsl.load(config)
    try:
        python_app(work.as_float, executors=["bare"])(1).result()  # workers up: not timed
        first = time.perf_counter() - t
        v_left, v_right = work.voltages(n)
        e, c = folders(workdir)
        t = time.perf_counter()
        mean = submit("bare", v_left, v_right, boxed, e, c).result()
        return time.perf_counter() - t, mean, first
    finally:
        dfk.cleanup()


# -- one system in this process (--only) -----------------------------------------------------


def run_only(system: str, n: int, boxed: bool, workdir: Path) -> dict[str, Any]:
    """Run ``system`` once here; its time, mean of c and this process's peak RSS."""
    extra: dict[str, float] = {}
    if system == "serial":
        seconds, mean = serial_once(n, boxed, workdir)
    elif system in ("bare-apps", "bare-chunked"):
        submit = per_app if system == "bare-apps" else chunked
        seconds, mean, first = bare_parsl_once(n, boxed, workdir, submit)
        extra = {"first_s": first}
    elif system in ("flows-cold", "flows-warm"):
        seconds, mean, first = flows_once(n, boxed, workdir, warm=system == "flows-warm")
        extra = {"first_s": first, "helper_mb": dataset_writer.peak_rss_mb}
    else:
        raise ValueError(f"unknown system {system!r}")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": seconds, "mean": mean, "peak_mb": peak_kib / 1024, **extra}


# -- the driver: pairs of subprocesses, then the table ---------------------------------------


@dataclass
class Figures:
    seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)  # to the first file, or bare result
    helper_mb: list[float] = field(default_factory=list)  # parsl_flows: dataset.nc helper


def child(system: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Run ``system`` in a fresh subprocess with a fresh folder, removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{system}-", dir=root))
    cmd = [sys.executable, __file__, "--only", system, "--n", str(args.n)]
    cmd += ["--variant", args.variant, "--store", str(workdir)]
    try:
        t = time.perf_counter()
        result = work.run_child(cmd, system)
        wall = time.perf_counter() - t
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if system == "flows-cold":
        result["seconds"] = wall  # the whole process: start-up, Parsl, run and exit
    return result


def run_pairs(args: argparse.Namespace, root: Path, systems: list[str]) -> dict[str, Figures]:
    figures = {s: Figures() for s in ["serial", *systems]}
    for pair in range(args.pairs):
        for system in systems:
            base = child("serial", args, root)
            result = child(system, args, root)
            if result["mean"] != base["mean"]:
                raise RuntimeError(
                    f"{system}: mean of c {result['mean']!r} != serial loop {base['mean']!r}"
                )
            for name, r in (("serial", base), (system, result)):
                figures[name].seconds.append(r["seconds"])
                figures[name].ratios.append(r["seconds"] / base["seconds"])
                figures[name].peak_mb.append(r["peak_mb"])
                if "first_s" in r:
                    figures[name].first_s.append(r["first_s"])
                if "helper_mb" in r:
                    figures[name].helper_mb.append(r["helper_mb"])
            print(
                f"  pair {pair + 1}: serial {base['seconds']:.3f} s, "
                f"{system} {result['seconds']:.3f} s",
                flush=True,
            )
    return figures


def filesystem(path: Path) -> tuple[str, str]:
    """``(fstype, mount point)`` of ``path``: the longest mount point in /proc/mounts above it."""
    best = ("?", "/")
    best_len = -1
    path = path.resolve()
    with open("/proc/mounts") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) < 3:
                continue
            mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])  # \040: " "
            if path.is_relative_to(mount) and len(mount) > best_len:
                best, best_len = (fields[2], mount), len(mount)
    return best


def call_cost_us(fn: Callable[[], object]) -> float:
    return min(timeit.repeat(fn, number=20_000, repeat=5)) / 20_000 * 1e6


def print_header(args: argparse.Namespace, root: Path, default_store: bool) -> None:
    a, b = work.grid_shape(args.n)
    boxed = args.variant == "object"
    e = work.f(0.3, 0.7, boxed)
    fstype, mount = filesystem(root)
    where = "a fresh tempfile.mkdtemp()" if default_store else "a fresh folder under --store"
    print(f"n = {args.n:,} elements per map (V_left {a} x V_right {b}), variant {args.variant}")
    print(f"CPUs: {os.cpu_count()}; config: local_config() (local HTEX, one worker per core)")
    print(f"store: {root} ({where}), filesystem {fstype} mounted at {mount}")
    print(
        f"f: {call_cost_us(lambda: work.f(0.3, 0.7, boxed)):.2f} µs, "
        f"g: {call_cost_us(lambda: work.g(e, boxed)):.2f} µs per call here; "
        f"{args.pairs} pair(s), a serial loop before each system",
        flush=True,
    )


def print_table(figures: dict[str, Figures], n: int, skipped: list[str]) -> None:
    head = f"{'median s':>9} {'vs serial':>10} {'µs/elem':>8} {'peak MB':>8}"
    print(f"{'system':<24} {head} {'first s':>8} {'helper MB':>9}  runs (s)")
    for system, fig in figures.items():
        median = statistics.median(fig.seconds)
        runs = " ".join(f"{s:.3f}" for s in fig.seconds)
        first = f"{statistics.median(fig.first_s):8.2f}" if fig.first_s else " " * 8
        helper = f"{max(fig.helper_mb):9.1f}" if fig.helper_mb else " " * 9
        print(
            f"{SYSTEMS[system]:<24} {median:9.3f} {statistics.median(fig.ratios):9.2f}x "
            f"{median / (2 * n) * 1e6:8.1f} {max(fig.peak_mb):8.1f} {first} {helper}  {runs}"
        )
    for system in skipped:
        print(f"{SYSTEMS[system]:<24} skipped: n = {n:,} > {PER_APP_LIMIT:,} elements")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="elements per map (default 100000)")
    p.add_argument("--variant", choices=("float", "object"), default="float")
    p.add_argument("--store", type=Path, help="folder for the files (default: a fresh temp dir)")
    p.add_argument("--pairs", type=int, default=2, help="(serial, system) pairs per system")
    p.add_argument(
        "--only",
        choices=sorted(SYSTEMS),
        help="run one system here in --store and print its RESULT (what the pairs run)",
    )
    args = p.parse_args()
    if args.n < 1 or args.pairs < 1:
        p.error("--n and --pairs must be >= 1")
    return args


def main() -> None:
    args = parse_args()
    if args.only:
        workdir = args.store or Path(tempfile.mkdtemp())
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_only(args.only, args.n, args.variant == "object", workdir)
        print("RESULT " + json.dumps(result), flush=True)
        return
    default_store = args.store is None
    root = work.fresh_folder(args.store, "map-throughput-")
    systems = ["bare-apps", "bare-chunked", "flows-cold", "flows-warm"]
    skipped = []
    if args.n > PER_APP_LIMIT:
        systems.remove("bare-apps")
        skipped.append("bare-apps")
    try:
        print_header(args, root, default_store)
        figures = run_pairs(args, root, systems)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(figures, args.n, skipped)


if __name__ == "__main__":
    main()
