"""Parallel efficiency of a map of 10 ms elements on the local HTEX's two workers.

    python benchmarks/parallel_efficiency.py [--n 1000] [--ms 10] [--pairs 2] [--store DIR]

Each element spins the CPU for a fixed number of rounds, calibrated here to take ``--ms``
milliseconds on one core, and returns a float; parsl_flows writes it to its element file.
The baseline is a serial loop in a fresh process doing the same elements and writing the
same files (cloudpickle, temporary name, ``os.replace``).  parsl_flows runs warm: in a fresh
process that first ran the same map on 32 elements (Parsl started, every worker has had
tasks), timed around ``flows.run``.

    efficiency = serial loop time / (workers x parsl_flows time)

and, beside it, against the calibration (``--ms`` per element, measured on one core with
nothing else running): n x ms / (workers x parsl_flows time).  The two differ when the
serial loop's elements take longer than calibrated (this machine's CPUs vary).  1.0
would be the two workers busy with elements all the time and nothing else costing
anything.  The driver, Parsl's interchange and the workers share this machine's two
cores, so what the driver spends on each task is taken from the workers.  The work is
CPU-bound on purpose: elements that sleep would hide that.  Pairs alternate (serial loop,
parsl_flows), each a fresh process; files are removed after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _workload as work
from map_throughput import filesystem

import parsl_flows as flows
from parsl_flows.engine.runner import runner
from parsl_flows.workflow import Workflow, build, map_, new_workflow

work.make_importable()

WARM_UP = 32


def calibrate(ms: float) -> int:
    """Rounds of ``_workload.spin`` that take ``ms`` milliseconds here (best of five)."""
    rounds = 10_000
    best = min(_timed(rounds) for _ in range(5))
    return max(1, round(rounds * ms / 1000 / best))


def _timed(rounds: int) -> float:
    t = time.perf_counter()
    work.spin(0.5, rounds)
    return time.perf_counter() - t


@flows.step(returns="y")
def busy(k: int, rounds: int) -> float:
    return work.spin(0.5, rounds) + k


def the_map() -> Workflow:
    return new_workflow("parallel_efficiency").then(map_(busy, "k[i] -> y[i]"))


def serial_once(n: int, rounds: int, workdir: Path) -> float:
    folder = workdir / "y"
    folder.mkdir()
    t = time.perf_counter()
    for k in range(n):
        work.write_element(str(folder), k, work.spin(0.5, rounds) + k)
    return time.perf_counter() - t


def flows_once(n: int, rounds: int, workdir: Path) -> tuple[float, int]:
    env = flows.engine.execution_environment(None, "localhost")
    store = workdir / "store"
    warm = flows.run(build(the_map().on(env), k=list(range(WARM_UP)), rounds=rounds), store=store)
    assert warm.exit_code == 0, warm.log()
    builder = build(the_map().on(env), k=list(range(n)), rounds=rounds)
    t = time.perf_counter()
    run = flows.run(builder, store=store)
    seconds = time.perf_counter() - t
    assert run.exit_code == 0, run.log()
    assert run.step("busy").record.n_done == n
    label = run.step("busy").record.executor
    assert label is not None
    return seconds, runner.worker_count(label)


def run_only(system: str, n: int, rounds: int, workdir: Path) -> dict[str, Any]:
    workers = 1
    if system == "serial":
        seconds = serial_once(n, rounds, workdir)
    else:
        seconds, workers = flows_once(n, rounds, workdir)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "workers": workers, "peak_mb": peak}


def child(system: str, args: argparse.Namespace, rounds: int, root: Path) -> dict[str, Any]:
    workdir = work.fresh_folder(root, f"{system}-")
    cmd = [sys.executable, __file__, "--only", system, "--n", str(args.n)]
    cmd += ["--rounds", str(rounds), "--store", str(workdir)]
    try:
        return work.run_child(cmd, system)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="elements (default 1000)")
    p.add_argument("--ms", type=float, default=10.0, help="milliseconds per element")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--store", type=Path, help="folder for the files (default: a temp dir)")
    p.add_argument("--only", choices=("serial", "flows"), help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        result = run_only(args.only, args.n, args.rounds, args.store)
        print("RESULT " + json.dumps(result), flush=True)
        return
    rounds = calibrate(args.ms)
    root = work.fresh_folder(args.store, "parallel-efficiency-")
    fstype, mount = filesystem(root)
    print(f"{args.n} elements of {args.ms:g} ms ({rounds} rounds of spin) on {os.cpu_count()} CPUs")
    print(f"store: {root}, filesystem {fstype} mounted at {mount}", flush=True)
    efficiencies: list[float] = []
    calibrated: list[float] = []
    try:
        for pair in range(args.pairs):
            serial = child("serial", args, rounds, root)
            flow = child("flows", args, rounds, root)
            eff = serial["seconds"] / (flow["workers"] * flow["seconds"])
            ideal = args.n * args.ms / 1000 / (flow["workers"] * flow["seconds"])
            efficiencies.append(eff)
            calibrated.append(ideal)
            print(
                f"  pair {pair + 1}: serial {serial['seconds']:.2f} s "
                f"({serial['seconds'] / args.n * 1000:.2f} ms an element), parsl_flows "
                f"{flow['seconds']:.2f} s on {flow['workers']} workers "
                f"(driver peak {flow['peak_mb']:.0f} MB): efficiency {eff:.3f} against the "
                f"loop, {ideal:.3f} against the calibration",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"parallel efficiency, median of {args.pairs}: {statistics.median(efficiencies):.3f} "
        f"against the serial loop, {statistics.median(calibrated):.3f} against the calibration"
    )


if __name__ == "__main__":
    main()
