"""What restarting failed elements costs: the two-map workflow with 10% of f failing once.

    python benchmarks/restart_cost.py --n 100000 [--variant float|object] [--store DIR]
                                      [--pairs 2]

The workflow of ``map_throughput.py`` (f over the outer product V_left x V_right, g over its
output, the mean of g's output), except that the first map's step also gets the element's
row and column, and fails the first time it is called for every 10th element in C order
(``k % 10 == 0``: 10% of them).  A marker file per element, in a folder passed as an input,
makes the second attempt succeed; the map has ``max_restarts=2`` (two attempts in total).
The run without failures is the same workflow, with the same step and ``max_restarts=2``,
given no marker folder.

Each run is a fresh process of this script (``--only clean`` or ``--only failing``) on
``local_config()`` (local HighThroughputExecutor, one worker per core): it runs the
workflow on 32 elements, without failures, to start Parsl and give every worker tasks,
then the run, timed around ``flows.run``.  One process a run: here, a second big run in
one process came out 15 to 40% slower than the first, whichever it was (pairs ran 1.03x
with the failing run first and 1.3 to 1.8x with it second), which is the machine's, not
the restarts'.  A pair is a clean and a failing process, in alternating order.  Both must
end with exit code 0 and the mean of c computed here; the failing run must record
exactly the failed elements as taking two attempts.  Files are removed after each run.

Reading the figures: the ratio is the median over pairs of (time with failures / time
without), each from its own process, so Parsl's start-up is in neither.  It is what detecting
the failures, recording their exceptions and submitting a second round costs; the 10%
recomputed are part of it: with no overhead at all the ratio would be about 1.05 (10% more
calls of f, which is half of the elements' work).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import _workload as work
import map_throughput as mt  # the steps g_step and mean_step; puts _workload on PYTHONPATH

import parsl_flows as flows
from parsl_flows.ranges import expand
from parsl_flows.workflow import Workflow, map_

FAIL_EVERY = 10  # elements k with k % FAIL_EVERY == 0 fail on their first attempt
ATTEMPTS = 2


@flows.step(returns="e")
def f_failing_once(
    V_left: float, V_right: float, row: int, col: int, n_cols: int, boxed: bool, markers: str
) -> work.Element:
    """f; every FAIL_EVERY-th element raises the first time, when ``markers`` is a folder."""
    k = row * n_cols + col
    if markers and k % FAIL_EVERY == 0:
        try:  # creating the marker succeeds only once: the first attempt
            os.close(os.open(Path(markers) / str(k), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            raise RuntimeError(f"element {k} fails on its first attempt (on purpose)")
    return work.f(V_left, V_right, boxed)


def restart_flow() -> Workflow:
    spec = "V_left[a], V_right[b], row[a], col[b] -> e[a, b]"
    return mt.two_maps(map_(f_failing_once, spec, max_restarts=ATTEMPTS))


def inputs(n: int, boxed: bool, markers: str) -> dict[str, Any]:
    v_left, v_right = work.voltages(n)
    rows, cols = work.grid_shape(n)
    return {
        "V_left": v_left,
        "V_right": v_right,
        "row": list(range(rows)),
        "col": list(range(cols)),
        "n_cols": cols,
        "boxed": boxed,
        "markers": markers,
    }


def expected_failures(n: int) -> list[int]:
    return list(range(0, n, FAIL_EVERY))


def expected_mean(n: int, boxed: bool) -> float:
    """The mean of c, computed in memory (no files): what both runs must return."""
    v_left, v_right = work.voltages(n)
    return work.mean_of(work.g(work.f(x, y, boxed), boxed) for x in v_left for y in v_right)


# -- one pair in this process (--only pair) --------------------------------------------------


def one_run(n: int, boxed: bool, store: Path, markers: str) -> dict[str, Any]:
    run, seconds, _ = mt.run_flow(restart_flow(), store, **inputs(n, boxed, markers))
    mean = mt.flow_mean(run)  # raises unless exit code 0
    attempts = run.step("f_failing_once").record.element_attempts
    retried = expand(attempts.get(str(ATTEMPTS), ""))  # the elements that took 2 attempts
    return {"seconds": seconds, "mean": mean, "retried": retried}


def run_once(n: int, boxed: bool, workdir: Path, kind: str) -> dict[str, Any]:
    """Warm Parsl up, then one run of ``kind`` ("clean" or "failing")."""
    store = workdir / "store"
    warm_up = inputs(mt.WARM_UP_ELEMENTS, boxed, "")  # Parsl up, every worker has had tasks
    mt.flow_mean(mt.run_flow(restart_flow(), store, **warm_up)[0])
    markers = workdir / "markers"
    markers.mkdir()
    return one_run(n, boxed, store, str(markers) if kind == "failing" else "")


# -- the driver ------------------------------------------------------------------------------


def child(kind: str, pair: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"pair{pair}-{kind}-", dir=root))
    cmd = [sys.executable, __file__, "--only", kind, "--n", str(args.n)]
    cmd += ["--variant", args.variant, "--store", str(workdir)]
    try:
        return work.run_child(cmd, f"pair {pair + 1}, {kind}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def check(result: dict[str, Any], n: int, mean: float) -> None:
    for kind, want in (("clean", []), ("failing", expected_failures(n))):
        r = result[kind]
        if r["mean"] != mean:
            raise RuntimeError(f"{kind} run: mean of c {r['mean']!r} != {mean!r}")
        if r["retried"] != want:
            raise RuntimeError(
                f"{kind} run: {len(r['retried'])} elements took 2 attempts, not the "
                f"{len(want)} meant to fail, or not the same ones"
            )


def run_pairs(
    args: argparse.Namespace, root: Path, mean: float
) -> tuple[dict[str, list[float]], list[float]]:
    """The pairs, one process each: the times of both kinds of run, and their ratios."""
    times: dict[str, list[float]] = {"clean": [], "failing": []}
    ratios: list[float] = []
    for pair in range(args.pairs):
        order = ["failing", "clean"] if pair % 2 else ["clean", "failing"]
        result = {kind: child(kind, pair, args, root) for kind in order}
        check(result, args.n, mean)
        for kind in times:
            times[kind].append(result[kind]["seconds"])
        ratios.append(result["failing"]["seconds"] / result["clean"]["seconds"])
        first = "failing" if pair % 2 else "clean"
        print(
            f"  pair {pair + 1} ({first} first): clean {result['clean']['seconds']:.3f} s, "
            f"failing {result['failing']['seconds']:.3f} s, ratio {ratios[-1]:.2f}",
            flush=True,
        )
    return times, ratios


def print_table(times: dict[str, list[float]], ratios: list[float]) -> None:
    print(f"{'run':<32} {'median s':>9}  runs (s)")
    for kind, label in (("clean", "without failures"), ("failing", "10% of f failing once")):
        runs = " ".join(f"{s:.3f}" for s in times[kind])
        print(f"{label:<32} {statistics.median(times[kind]):9.3f}  {runs}")
    print(f"{'ratio failing / clean (median)':<32} {statistics.median(ratios):8.2f}x")


def print_header(args: argparse.Namespace, root: Path, default_store: bool) -> None:
    a, b = work.grid_shape(args.n)
    fstype, mount = mt.filesystem(root)
    where = "a fresh tempfile.mkdtemp()" if default_store else "a fresh folder under --store"
    print(f"n = {args.n:,} elements per map (V_left {a} x V_right {b}), variant {args.variant}")
    print(f"CPUs: {os.cpu_count()}; config: local_config() (local HTEX, one worker per core)")
    print(f"store: {root} ({where}), filesystem {fstype} mounted at {mount}")
    failing = len(expected_failures(args.n))
    print(
        f"failing run: {failing:,} elements of f (every {FAIL_EVERY}th) fail once, "
        f"max_restarts={ATTEMPTS}; {args.pairs} pair(s), one warm process a run",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="elements per map (default 100000)")
    p.add_argument("--variant", choices=("float", "object"), default="float")
    p.add_argument("--store", type=Path, help="folder for the runs (default: a fresh temp dir)")
    p.add_argument("--pairs", type=int, default=2, help="pairs of runs (default 2)")
    p.add_argument(
        "--only", choices=["clean", "failing"], help="one run here in --store (internal)"
    )
    args = p.parse_args()
    if args.n < 1 or args.pairs < 1:
        p.error("--n and --pairs must be >= 1")
    boxed = args.variant == "object"
    if args.only:
        workdir = args.store or Path(tempfile.mkdtemp())
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_once(args.n, boxed, workdir, args.only)
        print("RESULT " + json.dumps(result), flush=True)
        return

    root = work.fresh_folder(args.store, "restart-cost-")
    try:
        print_header(args, root, args.store is None)
        times, ratios = run_pairs(args, root, expected_mean(args.n, boxed))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(times, ratios)


if __name__ == "__main__":
    main()
