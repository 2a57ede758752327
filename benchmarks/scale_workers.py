"""Scale by simulation: a map of 50 ms sleeps on 8, 32 and 96 Slurm workers of the test bed.

    python benchmarks/scale_workers.py [--workers 8,32,96] [--seconds 20] [--ms 50]
        [--nodes 3] [--slurm-cpus 4] [--partition debug] [--store DIR] [--no-bare]

Elements sleep (``--ms``) and return a float, which the workers write to their element
files: the cores stay free, so a 2-core machine can stand in for many workers, and what
is measured is what scale costs the driver, the interchange and the store, not the work.
Each worker count runs in a fresh driver process with an executor of its own, its
workers spread over the test bed's nodes (``tools/local-slurm.sh`` with
``LOCAL_SLURM_NODES=3``): one block of as many nodes, up to ``--nodes``, as divide the
count (8 workers: 2 nodes of 4; 32: 2 of 16; 96: 3 of 32), with a worker pool on each
node.  The block asks Slurm for ``--slurm-cpus`` CPUs a node (the test bed's nodes
advertise 8, and other tests use some) and runs more workers than that (see
:data:`CONFIG`).

**The timed map runs once the workers are up.**  Starting a worker costs about a second
of CPU here (each worker process imports Parsl, then parsl_flows on its first task), so
96 of them take a minute or more on 2 cores, which says nothing about scale.  So each
driver first runs warm-up maps on the same executor until every worker has connected,
then one more so that each has run a task, and only then the timed map: ``--seconds``
of ideal time (elements = seconds x workers / ms).

Printed per worker count: elements; wall time of ``flows.run`` of the map (planning and
the run's records included); ideal time (elements x ms / workers); efficiency = ideal /
wall; Parsl tasks submitted, and per second; the driver's CPU time per element (user +
system, ``resource.getrusage(RUSAGE_SELF)`` deltas around the run: every thread of the
driver, Parsl's included); and the interchange's (a process of its own, read with
psutil).  Unless ``--no-bare``, the same driver then runs the baseline on the same warm
workers: bare Parsl apps, as many as parsl_flows' tasks and of equal sizes, each
sleeping for its elements and writing the same element files, all submitted at once.

The store is a fresh folder under ``--store`` (default: the system's temporary folder;
``/tmp`` is ext4 on the test bed), so it measures the scheduling, not a shared
filesystem.  ``--max-tasks-per-second`` overrides the chunker's cap
(:data:`parsl_flows.engine.chunking.MAX_TASKS_PER_SECOND`); ``1e9`` shows the chunker
without it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import _workload as work
from map_throughput import filesystem

import parsl_flows as flows
from parsl_flows.engine import chunking
from parsl_flows.engine.runner import runner
from parsl_flows.workflow import Workflow, build, map_, new_workflow

work.make_importable()

#: Give up on workers that have not all connected after this long.
START_TIMEOUT = 600.0


@flows.step(returns="y")
def nap(k: int, seconds: float) -> float:
    time.sleep(seconds)
    return float(k)


def the_map() -> Workflow:
    return new_workflow("scale_workers").then(map_(nap, "k[i] -> y[i]"))


def bare_chunk(folder: str, ks: list[int], seconds: float) -> int:
    """The baseline's Parsl app: the elements of ``ks`` as parsl_flows runs them."""
    import time

    from parsl_flows import files

    for k in ks:
        time.sleep(seconds)
        files.write_element(folder, k, files.dumps(float(k)))
    return len(ks)


def layout(workers: int, nodes: int) -> tuple[int, int]:
    """``(nodes, workers per node)``: the most nodes, up to ``nodes``, that divide ``workers``."""
    used = max(n for n in range(1, nodes + 1) if workers % n == 0)
    return used, workers // used


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def interchange_seconds() -> float:
    """CPU time of the driver's interchange process(es) so far (0 without psutil)."""
    try:
        import psutil
    except ImportError:
        return 0.0
    total = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            if any("interchange" in part for part in p.cmdline()):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


# -- one worker count, in a driver process of its own -----------------------------------------

#: The executor of one worker count: one block over ``nodes`` nodes, a worker pool on each
#: (``srun``), with more workers than the CPUs the block asks of each node, which sleeping
#: elements allow.  ``slurm_executor`` asks for a CPU per worker, more than a test-bed
#: node advertises, so the request is put back to ``--slurm-cpus``; the pool would count
#: the machine's CPUs (``os.cpu_count()``, 2 here) and start no more workers than that:
#: ``PARSL_CORES`` tells it otherwise.
CONFIG = """\
from parsl.config import Config

from parsl_flows.engine.configs import slurm_executor

executor = slurm_executor(
    "scale-{workers}",
    partition="{partition}",
    walltime="00:30:00",
    nodes_per_block={nodes},
    max_blocks=1,
    cores_per_node={per_node},
    worker_init="export PARSL_CORES={per_node}",
)
provider = executor.provider
asked = "--cpus-per-task={per_node}"
assert asked in provider.scheduler_options, provider.scheduler_options
provider.scheduler_options = provider.scheduler_options.replace(
    asked, "--cpus-per-task={slurm_cpus}"
)
config = Config(
    executors=[executor],
    strategy_period=1,
    max_idletime=600,  # keep the blocks between the maps
    initialize_logging=False,
    usage_tracking=0,
)
"""


def connected_workers(label: str) -> int:
    dfk = runner.dfk
    executor = None if dfk is None else dfk.executors.get(label)
    if executor is None:
        return 0
    return sum(int(m.get("worker_count", 0)) for m in executor.connected_managers())


def one_count(args: argparse.Namespace, workers: int, store: Path) -> dict[str, Any]:
    from parsl.app.python import PythonApp

    nodes, per_node = layout(workers, args.nodes)
    # A config file, not flows.engine.from_config: a run pickles its environment with its
    # plan, and a Config object holds locks.
    config_file = store / "scale_config.py"
    config_file.write_text(
        CONFIG.format(
            workers=workers,
            partition=args.partition,
            nodes=nodes,
            per_node=per_node,
            slurm_cpus=args.slurm_cpus,
        )
    )
    env = flows.engine.from_file(config_file)
    seconds = args.ms / 1000

    def say(text: str) -> None:
        print(f"[{workers} workers] {text}", flush=True)

    # Warm-up: maps of two first-size tasks (16 elements) per worker until every worker
    # has connected, then one more so that every worker has run a task.
    t0 = time.perf_counter()
    warm = workers * 32
    rounds = 0
    label = ""
    while True:
        run = flows.run(build(the_map().on(env), k=list(range(warm)), seconds=seconds), store=store)
        assert run.exit_code == 0, run.log()
        label = run.step("nap").record.executor or ""
        rounds += 1
        up = connected_workers(label)
        say(f"warm-up map {rounds}: {up} workers connected after {time.perf_counter() - t0:.0f} s")
        if up >= workers:
            break
        if time.perf_counter() - t0 > START_TIMEOUT:
            raise RuntimeError(f"only {up} of {workers} workers connected in {START_TIMEOUT} s")
        time.sleep(2)
    run = flows.run(build(the_map().on(env), k=list(range(warm)), seconds=seconds), store=store)
    assert run.exit_code == 0, run.log()
    started = time.perf_counter() - t0
    jobs = runner.batch_jobs(label)
    where = subprocess.run(
        ["squeue", "-h", "-o", "%i:%N", "-j", ",".join(jobs)], capture_output=True, text=True
    ).stdout.split()
    say(f"workers up and warm after {started:.0f} s, blocks (job:node) {' '.join(where)}")

    n = round(args.seconds * workers / seconds)
    dfk = runner.dfk
    assert dfk is not None
    tasks0, cpu0, ix0 = dfk.task_count, cpu_seconds(), interchange_seconds()
    t = time.perf_counter()
    run = flows.run(build(the_map().on(env), k=list(range(n)), seconds=seconds), store=store)
    wall = time.perf_counter() - t
    cpu, ix, tasks = cpu_seconds() - cpu0, interchange_seconds() - ix0, dfk.task_count - tasks0
    assert run.exit_code == 0, run.log()
    assert run.step("nap").record.n_done == n
    result: dict[str, Any] = {
        "workers": workers,
        "nodes": nodes,
        "per_node": per_node,
        "connected": connected_workers(label),
        "start_s": started,
        "elements": n,
        "wall": wall,
        "tasks": tasks,
        "cpu": cpu,
        "interchange": ix,
        "jobs": runner.batch_jobs(label),
        "where": where,
    }
    say(f"parsl_flows: {n} elements in {wall:.2f} s, {tasks} tasks")

    if not args.no_bare:  # the same sleeps and files as bare Parsl apps, chunked equally
        folder = work.fresh_folder(store, "bare-")
        app = PythonApp(bare_chunk, data_flow_kernel=dfk, executors=[label])
        bounds = [n * i // tasks for i in range(tasks + 1)]
        cpu0, ix0 = cpu_seconds(), interchange_seconds()
        t = time.perf_counter()
        futures = [
            app(str(folder), list(range(a, b)), seconds) for a, b in itertools.pairwise(bounds)
        ]
        wait(futures)
        result["bare_wall"] = time.perf_counter() - t
        result["bare_cpu"] = cpu_seconds() - cpu0
        result["bare_interchange"] = interchange_seconds() - ix0
        assert sum(f.result() for f in futures) == n
        say(f"bare Parsl: {n} elements in {result['bare_wall']:.2f} s, {tasks} tasks")
    result["jobs"] = sorted(set(result["jobs"]) | set(runner.batch_jobs(label)))
    runner.shutdown(timeout=60)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# -- the parent: one child per worker count, then the table ----------------------------------


def child(args: argparse.Namespace, workers: int, root: Path) -> dict[str, Any]:
    """Run one worker count in a fresh driver, echoing its progress; its RESULT."""
    store = work.fresh_folder(root, f"w{workers}-")
    cmd = [sys.executable, __file__, "--only", str(workers), "--store", str(store)]
    cmd += ["--seconds", str(args.seconds), "--ms", str(args.ms), "--nodes", str(args.nodes)]
    cmd += ["--slurm-cpus", str(args.slurm_cpus), "--partition", args.partition]
    cmd += ["--no-bare"] if args.no_bare else []
    if args.max_tasks_per_second:
        cmd += ["--max-tasks-per-second", str(args.max_tasks_per_second)]
    result: dict[str, Any] | None = None
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    result = json.loads(line.removeprefix("RESULT "))
                else:
                    print("  " + line, end="", flush=True)
        if proc.returncode != 0 or result is None:
            raise RuntimeError(f"{workers} workers: the driver failed ({proc.returncode})")
        return result
    finally:
        shutil.rmtree(store, ignore_errors=True)
        leftover(result)


def leftover(result: dict[str, Any] | None) -> None:
    """Cancel any block the child left in Slurm (its shutdown should have cancelled them)."""
    jobs = [] if result is None else result.get("jobs", [])
    if not jobs:
        return
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i", "-j", ",".join(jobs)], capture_output=True, text=True
    ).stdout.split()
    if out:
        print(f"  cancelling blocks left behind: {', '.join(out)}", flush=True)
        subprocess.run(["scancel", *out], check=False)


def report(r: dict[str, Any], ms: float) -> str:
    n, w = r["elements"], r["workers"]
    ideal = n * ms / 1000 / w
    line = (
        f"{w:>3} ({r['nodes']}x{r['per_node']:<2}) {n:>7} {r['wall']:7.2f} {ideal:6.2f} "
        f"{ideal / r['wall']:5.3f} {r['tasks']:>6} {r['tasks'] / r['wall']:7.1f} "
        f"{r['cpu'] / n * 1e6:7.1f} "
        f"{r['interchange'] / n * 1e6:7.1f}"
    )
    if "bare_wall" in r:
        line += (
            f" | {r['bare_wall']:7.2f} {ideal / r['bare_wall']:5.3f} "
            f"{r['bare_cpu'] / n * 1e6:7.1f} {r['bare_interchange'] / n * 1e6:7.1f}"
            f" | {r['wall'] / r['bare_wall']:5.2f}x {r['cpu'] / max(r['bare_cpu'], 1e-9):5.2f}x"
        )
    return line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    p.add_argument("--workers", default="8,32,96", help="worker counts (default 8,32,96)")
    p.add_argument("--seconds", type=float, default=20.0, help="ideal time of each timed map")
    p.add_argument("--ms", type=float, default=50.0, help="milliseconds each element sleeps")
    p.add_argument("--nodes", type=int, default=3, help="Slurm nodes to spread workers over")
    p.add_argument(
        "--slurm-cpus", type=int, default=4, help="CPUs the block asks of each node (default 4)"
    )
    p.add_argument("--partition", default="debug")
    p.add_argument("--store", type=Path, help="folder for the stores (default: a temp dir)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare Parsl baseline")
    p.add_argument(
        "--max-tasks-per-second",
        type=float,
        help="override the chunker's cap (engine/chunking.py), e.g. 1e9 for none",
    )
    p.add_argument("--only", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.max_tasks_per_second:  # ChunkSizer reads it when a map starts
        chunking.MAX_TASKS_PER_SECOND = args.max_tasks_per_second
    if args.only:
        result = one_count(args, args.only, args.store)
        print("RESULT " + json.dumps(result), flush=True)
        return
    root = work.fresh_folder(args.store, "scale-workers-")
    fstype, mount = filesystem(root)
    counts = [int(w) for w in args.workers.split(",")]
    print(
        f"elements sleeping {args.ms:g} ms, {args.seconds:g} s of ideal time per timed map, "
        f"workers {counts} on partition {args.partition}, one block of up to {args.nodes} "
        f"nodes asking {args.slurm_cpus} CPUs of each; this machine: {os.cpu_count()} CPUs"
    )
    print(f"store: {root}, filesystem {fstype} mounted at {mount}")
    print(f"the chunker's cap: {chunking.MAX_TASKS_PER_SECOND:g} tasks a second")
    print("each timed map runs after warm-up maps on the same driver and executor, once every")
    print("worker is up and has run a task (worker start-up on this machine is not measured)")
    results = []
    try:
        for w in counts:
            results.append(child(args, w, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    head = "workers      elements  wall s ideal   eff  tasks tasks/s drv us/el ix us/el" + (
        "" if args.no_bare else " | bare: wall s   eff drv us/el ix us/el | flows/bare wall cpu"
    )
    print("\n" + head)
    for r in results:
        print(report(r, args.ms))
    started = ", ".join(f"{r['start_s']:.0f}" for r in results)
    print(
        "eff = ideal / wall (ideal = elements x ms / workers); drv = the driver's CPU "
        "(RUSAGE_SELF), ix = the interchange's, per element; start-up of workers excluded "
        f"(up and warm after {started} s)"
    )


if __name__ == "__main__":
    main()
