"""The store on a shared filesystem against the store on tmpfs: one two-map workflow, both ways.

    python benchmarks/shared_fs.py [--n 10000] [--rounds 3] [--executor slurm|local]
        [--store-shared DIR] [--store-tmpfs DIR] [--cores-per-node 2] [--partition debug]
        [--node node1]

What it measures (issue 19, item 7): what a shared filesystem costs a workflow of cheap
elements.  The workflow is two maps, ``y = 2 * x`` over ``x = 0 .. n-1`` and ``z = y + 1``
over map 1's output (2n elements; each costs well under a microsecond, so what is left is
the scheduling and the store).  It runs with the store on tmpfs (``--store-tmpfs``,
default ``/dev/shm``) and with the store on a shared filesystem (``--store-shared``,
default ``$LOCAL_SLURM_SHARED`` or ``/tmp/pf-shared``, which must be a ``fuse.sshfs`` or
NFS mount), alternately in one invocation: tmpfs, shared, tmpfs, shared... (``--rounds``
pairs).  Each run is a fresh driver process (this script with ``--one KIND``, printing a
``RESULT {json}`` line), so Parsl's and the workers' start-up is in every run alike.

The set-up is the project's multi-node test bed, running::

    LOCAL_SLURM_NODES=3 LOCAL_SLURM_CPUS=8 LOCAL_SLURM_SHARED=/tmp/pf-shared \\
        bash tools/local-slurm.sh start

The driver runs on this host (the "login node") and sees the shared folder through one
sshfs client; the workers run in one Slurm block of one node (a computers file entry,
``cores_per_node`` workers, default 2, as many as this machine has cores), and that node
sees the same folder at the same path through an sshfs client of its own, with its own
caches.  The tmpfs runs use the same Slurm block with the store on ``/dev/shm``, which
the nodes share with this host (their mount namespaces are copies of the host's; checked
with ``srun`` before the first run).  ``--executor local`` runs the workers on the local
HighThroughputExecutor instead: they then reach the shared folder through the driver's
own client, which understates what a cluster pays (printed with the figures).

Printed for each run:

  run s      wall time from ``flows.submit`` to the run's end, in the driver: Parsl's
             start, the Slurm block's start, both maps and the run's records;
  up s       from ``flows.submit`` to the first worker connected (the start-up in run s);
  map1/map2  each map step's time, start to end (``status.json``); map 2 runs on workers
             that are up, so it shows the store's cost without the start-up;
  proc s     the driver process, start to exit (Python's start, imports, Parsl's shutdown);
  files/el   files under the run's folder after the run, divided by the 2n elements;
  store      the number of files in the whole store, Parsl's folder (batch scripts,
             worker logs) included.  On the test bed, the shared store is counted in the
             file server's own folder, which no client's cache can make stale;
  peak MB    the driver's peak RSS (``ru_maxrss`` of the driver process);
  read s     the check after the run: every value of map 2 read back and compared, by
             this script (not the driver) through this host's client: ``to_array()`` as
             downstream steps see it, then again with the step's ``numbers/`` removed,
             which makes the reader open the element files themselves, so a broken store
             cannot look fast.  Not in run s;
  load       this machine's 1-minute load average as the run started (other work on
             the machine makes every figure noisier).

Then the ratio shared / tmpfs of each pair and their median, for run s and map 2.  When
the start-up is most of a run (a Slurm block takes seconds to start), the run ratio says
little about the store, and the output says so: read map 2's ratio, or try
``--executor local``.  Each run's store is removed after its check, the folders this
script made at the end, and any Slurm job of its block that is still queued is cancelled.
Machines here are noisy: compare figures from one invocation, not across days.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

import parsl_flows as flows
from parsl_flows.files import filesystem_type
from parsl_flows.workflow import Workflow, map_, new_workflow

KINDS = ("tmpfs", "shared")
SHARED_TYPES = ("fuse.sshfs", "nfs", "nfs4")
STATE = Path(os.environ.get("LOCAL_SLURM_STATE", "/run/parsl-flows-slurm"))  # the test bed's
LOCAL_CAVEAT = (
    "caveat (--executor local): the workers run on this host and reach the shared folder "
    "through the driver's own sshfs client (one cache, no second client): this understates "
    "what a cluster's nodes pay"
)


# -- the workflow (steps in __main__: parsl_flows ships them by value) ------------------------


@flows.step(returns="y")
def double(x: int) -> int:
    return 2 * x


@flows.step(returns="z")
def plus_one(y: int) -> int:
    return y + 1


def two_maps() -> Workflow:
    return (
        new_workflow("shared_fs")
        .then(map_(double, "x[i] -> y[i]"))
        .then(map_(plus_one, "y[i] -> z[i]"))
    )


# -- one run in this process (--one KIND) -----------------------------------------------------


class WorkersUp(threading.Thread):
    """When (``time.time()``) the first worker of any executor connected to its interchange."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        from parsl_flows.engine.runner import runner

        while not self.done.is_set():
            dfk = runner.dfk
            for executor in [] if dfk is None else list(dfk.executors.values()):
                managers = getattr(executor, "connected_managers", None)
                if managers is None:
                    continue
                try:
                    if sum(int(m.get("worker_count", 0)) for m in managers()) > 0:
                        self.at = time.time()
                        return
                except Exception:  # the interchange not up yet, or shutting down
                    pass
            time.sleep(0.2)

    def stop(self) -> float | None:
        self.done.set()
        return self.at


def environment(args: argparse.Namespace) -> flows.engine.ExecutionEnvironment:
    if args.executor == "local":
        return flows.engine.execution_environment(None, "localhost")
    return flows.engine.execution_environment(None, args.computer)  # the parent's file


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    from parsl_flows.engine.runner import runner

    env = environment(args)
    builder = flows.workflow.build(two_maps().on(env), x=list(range(args.n)))
    up = WorkersUp()
    up.start()
    t0 = time.time()
    t = time.perf_counter()
    run = flows.submit(builder, store=args.store)
    try:
        run.wait(args.timeout)
    except TimeoutError:
        run.interrupt()
        runner.shutdown(timeout=60)
        raise
    seconds = time.perf_counter() - t
    first_worker = up.stop()
    steps = {name: run.step(name).record for name in ("double", "plus_one")}
    labels = {rec.executor for rec in steps.values() if rec.executor}
    jobs = sorted({j for label in labels for j in runner.batch_jobs(label)})
    t = time.perf_counter()
    runner.shutdown(timeout=60)  # cancels the block; not in "run s"
    shutdown = time.perf_counter() - t
    result: dict[str, Any] = {
        "seconds": seconds,
        "up_s": None if first_worker is None else first_worker - t0,
        "exit_code": run.exit_code,
        "run": str(run.path),
        "jobs": sorted(set(jobs) | {j for rec in steps.values() for j in rec.batch_jobs}),
        "shutdown_s": shutdown,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    }
    for name, rec in steps.items():
        ok = rec.started is not None and rec.finished is not None
        result[f"{name}_s"] = rec.finished - rec.started if ok else None  # type: ignore[operator]
        result[f"{name}_done"] = rec.n_done
    return result


# -- the parent: checks, the runs, the table ------------------------------------------------


def fail(message: str) -> NoReturn:
    print(f"shared_fs.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def fresh_folder(root: Path, prefix: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root)).resolve()


def check_folders(args: argparse.Namespace) -> tuple[str, str]:
    """The filesystem types of the two stores; exits with a message when they are wrong."""
    shared_type = filesystem_type(args.store_shared) if args.store_shared.exists() else None
    if shared_type not in SHARED_TYPES:
        fail(
            f"--store-shared {args.store_shared} is on {shared_type or 'no filesystem found'}, "
            f"not a shared filesystem ({', '.join(SHARED_TYPES)}).  Start the test bed: "
            "LOCAL_SLURM_NODES=3 LOCAL_SLURM_CPUS=8 LOCAL_SLURM_SHARED=/tmp/pf-shared "
            "bash tools/local-slurm.sh start, or name an NFS or sshfs folder"
        )
    tmpfs_type = filesystem_type(args.store_tmpfs) if args.store_tmpfs.exists() else None
    if tmpfs_type != "tmpfs":
        fail(f"--store-tmpfs {args.store_tmpfs} is on {tmpfs_type}, not tmpfs")
    assert shared_type is not None
    return shared_type, tmpfs_type


def check_slurm(args: argparse.Namespace, folders: list[Path]) -> str:
    """Check that a Slurm node sees each of ``folders`` (the same files as this host)."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        fail("no Slurm here (sbatch, srun): start the test bed, or use --executor local")
    markers = []
    for folder in folders:
        marker = folder / "seen-by-node.txt"
        marker.write_text(f"{marker}\n")
        markers.append(marker)
    cmd = ["srun", "-p", args.partition, "-N1", "-n1", "--time=5", "-J", f"{args.computer}-check"]
    cmd += ["-w", args.node] if args.node else []
    script = 'echo "$SLURMD_NODENAME"; for f in "$@"; do cat "$f" || exit 1; done'
    cmd += ["sh", "-c", script, "sh", *map(str, markers)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        fail(f"srun did not run within 180 s: {' '.join(cmd)}")
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)
    lines = proc.stdout.split()
    if proc.returncode != 0 or lines[1:] != [str(m) for m in markers]:
        fail(
            "a Slurm node does not see the same files as this host in "
            f"{', '.join(map(str, folders))}:\n{proc.stdout}{proc.stderr}"
        )
    return lines[0]


def write_computers(args: argparse.Namespace, folder: Path) -> Path:
    """A computers file of one entry: one block of one node, ``cores_per_node`` workers."""
    lines = [
        f"[{args.computer}]",
        f'partition = "{args.partition}"',
        f"cores_per_node = {args.cores_per_node}",
        "nodes_per_block = 1",
        "max_blocks = 1",
        'walltime = "00:30:00"',
        "poll_seconds = 5",
    ]
    if args.node:
        lines.append(f'scheduler_options = "#SBATCH --nodelist={args.node}"')
    path = folder / "computers.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def backing(path: Path) -> Path:
    """Where the test bed's file server keeps ``path`` (``path`` itself off the test bed)."""
    try:
        shared = Path((STATE / "shared").read_text().strip())
        rel = path.relative_to(shared)
    except (OSError, ValueError):
        return path
    server = STATE / "shared-backing" / rel
    return server if server.exists() else path


def count_files(folder: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(folder))


def read_back(run_path: Path, n: int) -> float:
    """Read every value of map 2 back (twice, the second time from the element files) and
    check it; the seconds that took."""
    want = [2 * x + 1 for x in range(n)]
    t = time.perf_counter()
    for from_files in (False, True):
        step = flows.load_run(run_path).step("plus_one")
        if from_files:
            shutil.rmtree(step.path / "numbers", ignore_errors=True)  # readers take the files
        z = step.output("z").to_array()
        masked = int(np.ma.getmaskarray(z).sum())
        if z.shape != (n,) or masked:
            raise RuntimeError(f"map 2 of {run_path}: shape {z.shape}, {masked} masked")
        if z.tolist() != want:
            bad = next(k for k, (a, b) in enumerate(zip(z.tolist(), want, strict=True)) if a != b)
            how = "element files" if from_files else "to_array()"
            raise RuntimeError(f"map 2 of {run_path}: z[{bad}] = {z[bad]!r} != {want[bad]} ({how})")
    return time.perf_counter() - t


def cancel_leftovers(args: argparse.Namespace, jobs: list[str]) -> None:
    """Cancel any Slurm job of this invocation still known to Slurm (none, normally)."""
    if args.executor != "slurm":
        return
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, check=False
    ).stdout
    left = [
        line.split()[0]
        for line in out.splitlines()
        if line.split()[0] in jobs or args.computer in line.split(maxsplit=1)[-1]
    ]
    if left:
        print(f"  cancelling Slurm job(s) left behind: {', '.join(left)}", flush=True)
        subprocess.run(["scancel", *left], check=False)


def child(args: argparse.Namespace, kind: str, root: Path, computers: Path | None) -> dict:
    """One run in a fresh driver process, its files counted and its values checked."""
    store = fresh_folder(root, f"{kind}-")
    cmd = [sys.executable, __file__, "--one", kind, "--store", str(store), "--n", str(args.n)]
    cmd += ["--executor", args.executor, "--computer", args.computer]
    cmd += ["--timeout", str(args.timeout)]
    env = dict(os.environ)
    if computers is not None:
        env["PARSL_FLOWS_COMPUTERS"] = str(computers)
    result: dict[str, Any] = {"load": os.getloadavg()[0]}
    try:
        t = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=args.timeout + 180
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"{kind}: the driver did not end in {e.timeout} s") from None
        result["proc_s"] = time.perf_counter() - t
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(
                f"{kind}: the driver failed (exit status {proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
            )
        result.update(json.loads(lines[-1].removeprefix("RESULT ")))
        run_path = Path(result["run"])
        if result["exit_code"] != 0:
            log = (run_path / "log.txt").read_text() if (run_path / "log.txt").exists() else ""
            raise RuntimeError(f"{kind}: the run ended with exit code {result['exit_code']}\n{log}")
        result["files_run"] = count_files(backing(run_path))
        result["files_store"] = count_files(backing(store))
        result["read_s"] = read_back(run_path, args.n)
        return result
    finally:
        cancel_leftovers(args, result.get("jobs", []))
        shutil.rmtree(store, ignore_errors=True)


def fmt(value: float | None, width: int, digits: int = 2) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"


def row(round_: int, kind: str, r: dict[str, Any], n: int) -> str:
    return (
        f"{round_:>5} {kind:<6} {fmt(r['seconds'], 7)} {fmt(r['up_s'], 6)} "
        f"{fmt(r['double_s'], 7)} {fmt(r['plus_one_s'], 7)} {fmt(r['proc_s'], 7)} "
        f"{r['files_run'] / (2 * n):8.3f} {r['files_store']:>7} {r['peak_mb']:7.1f} "
        f"{fmt(r['read_s'], 6)} {r['load']:5.1f}"
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def summary(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    n = args.n
    pairs = list(zip(results["tmpfs"], results["shared"], strict=False))
    print("\nshared / tmpfs, per pair:")
    runs, map2s = [], []
    for i, (tm, sh) in enumerate(pairs, 1):
        r, m = ratio(sh["seconds"], tm["seconds"]), ratio(sh["plus_one_s"], tm["plus_one_s"])
        runs.append(r)
        map2s.append(m)
        print(f"  pair {i}: run {fmt(r, 5)}x, map 2 {fmt(m, 5)}x")
    runs_ok = [r for r in runs if r is not None]
    map2_ok = [m for m in map2s if m is not None]
    med = {
        kind: {
            key: statistics.median(v) if (v := [r[key] for r in rs if r[key] is not None]) else None
            for key in ("seconds", "up_s", "double_s", "plus_one_s", "peak_mb", "files_run")
        }
        for kind, rs in results.items()
    }
    print(
        f"  median over {len(pairs)} pair(s): run {fmt(statistics.median(runs_ok), 5)}x, "
        f"map 2 {fmt(statistics.median(map2_ok) if map2_ok else None, 5)}x"
    )
    for kind in KINDS:
        m = med[kind]
        per_el = None if m["seconds"] is None else m["seconds"] / (2 * n) * 1e6
        print(
            f"  {kind:<6} median: run {fmt(m['seconds'], 6)} s ({fmt(per_el, 6, 1)} µs an "
            f"element), up {fmt(m['up_s'], 5)} s, map 1 {fmt(m['double_s'], 6)} s, map 2 "
            f"{fmt(m['plus_one_s'], 6)} s; {m['files_run'] / (2 * n):.3f} files an element; "
            f"driver peak {m['peak_mb']:.0f} MB"
        )
    tm, sh = med["tmpfs"], med["shared"]
    if tm["seconds"] and sh["seconds"]:
        extra = (sh["seconds"] - tm["seconds"]) / (2 * n) * 1e6
        print(f"  the shared filesystem adds {extra:.1f} µs an element to the run (medians)")
    shares = {
        kind: med[kind]["up_s"] / med[kind]["seconds"]
        for kind in KINDS
        if med[kind]["up_s"] is not None and med[kind]["seconds"]
    }
    mostly = [kind for kind, share in shares.items() if share > 0.5]
    if mostly:
        said = ", ".join(
            f"{shares[k]:.0%} of the {k} run ({med[k]['up_s']:.1f} of {med[k]['seconds']:.1f} s)"
            for k in KINDS
            if k in shares
        )
        verdict = (
            "both runs are dominated by start-up, so the run ratio says little about the store"
            if len(mostly) == len(KINDS)
            else f"the {mostly[0]} run is mostly start-up, so the run ratio understates the "
            "store's cost"
        )
        print(
            f"  note: start-up (submit to the first worker) is {said}: {verdict}; map 2 "
            "(workers up) shows the store's cost"
            + ("; --executor local starts faster" if args.executor == "slurm" else "")
        )
    if args.executor == "local":
        print("  " + LOCAL_CAVEAT)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="elements per map (default 10000)")
    p.add_argument("--rounds", type=int, default=3, help="(tmpfs, shared) pairs (default 3)")
    p.add_argument("--executor", choices=("slurm", "local"), default="slurm")
    default_shared = os.environ.get("LOCAL_SLURM_SHARED") or "/tmp/pf-shared"
    p.add_argument(
        "--store-shared",
        type=Path,
        default=Path(default_shared),
        help=f"a folder on NFS or sshfs (default {default_shared})",
    )
    p.add_argument("--store-tmpfs", type=Path, default=Path("/dev/shm"), help="default /dev/shm")
    p.add_argument("--partition", default="debug", help="Slurm partition (default debug)")
    p.add_argument("--cores-per-node", type=int, default=2, help="workers of the block")
    p.add_argument("--node", help="the Slurm node of the block (default: Slurm's choice)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds a run may take")
    p.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--computer", default=f"shared-fs-{os.getpid()}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.n < 1 or args.rounds < 1:
        p.error("--n and --rounds must be >= 1")
    return args


def main() -> None:
    args = parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(args)), flush=True)
        return
    shared_type, tmpfs_type = check_folders(args)
    roots = {
        "tmpfs": fresh_folder(args.store_tmpfs, "shared-fs-"),
        "shared": fresh_folder(args.store_shared, "shared-fs-"),
    }
    config_dir = Path(tempfile.mkdtemp(prefix="shared-fs-config-"))
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    try:
        print(
            f"n = {args.n:,} elements per map (y = 2*x, then z = y + 1: {2 * args.n:,} "
            f"elements), {args.rounds} round(s) of tmpfs then shared, each a fresh driver"
        )
        print(
            f"parsl_flows from {Path(flows.__file__).parent}; this machine: {os.cpu_count()} CPUs"
        )
        print(f"tmpfs store:  {roots['tmpfs']} ({tmpfs_type})")
        print(f"shared store: {roots['shared']} ({shared_type}; the driver's client)")
        computers = None
        if args.executor == "slurm":
            node = check_slurm(args, [roots["tmpfs"], roots["shared"]])
            computers = write_computers(args, config_dir)
            print(
                f"workers: one Slurm block of one node ({args.node or 'any'} of partition "
                f"{args.partition}), cores_per_node = {args.cores_per_node}; {node} sees both "
                "stores (srun); the driver and the interchange run here"
            )
        else:
            print(f"workers: the local HighThroughputExecutor here\n{LOCAL_CAVEAT}")
        print(
            "\nround kind     run s   up s  map1 s  map2 s  proc s files/el   store peak MB "
            "read s  load"
        )
        for round_ in range(1, args.rounds + 1):
            for kind in KINDS:
                r = child(args, kind, roots[kind], computers)
                results[kind].append(r)
                assert r["double_done"] == r["plus_one_done"] == args.n, r
                print(row(round_, kind, r, args.n), flush=True)
    finally:
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(config_dir, ignore_errors=True)
    summary(results, args)


if __name__ == "__main__":
    main()
