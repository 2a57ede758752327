"""A sweep of a million elements: the two-map workflow of ``map_throughput.py`` at n = 10^6.

    python benchmarks/million.py [--n 1000000] [--store DIR]

Runs, in this process, the workflow on 32 elements (Parsl started, workers warm), then on
``--n`` elements (1000 x 1000: f over the outer product, g over its output, the mean), and
prints for each map:

  setup s   from the step starting (``status.json``'s ``started``) to its first element
            file on disk: the mapspec's shape, the masks, the element keys, what exists
            already, the submitted set, and one first task's round trip;
  map s     from the step starting to its end;

and for the run: its wall time, the driver's peak RSS (``ru_maxrss``), the peak RSS of
the helper that writes the ``dataset.nc`` files, how long finding every element of a
map's output takes (``present_indices``: its index), the files the run's maps left, and
how long a fresh process takes to read one element,
``load_run(...).called[0].outputs.return_values.e[123, 456]`` (after its imports).  The
run must end with exit code 0 and the mean of c must equal the one computed here from the
same elements.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _workload as work
import map_throughput as mt

from parsl_flows.engine.datasets import dataset_writer
from parsl_flows.status import StepStatus
from parsl_flows.store import present_indices

READ_ONE = """
import sys, time
import parsl_flows as flows
t = time.perf_counter()
value = flows.load_run(sys.argv[1]).called[0].outputs.return_values.e[{i}, {j}]
print(f"{{(time.perf_counter() - t) * 1000:.1f}} ms (value {{value!r}})")
"""


def read_one_element(run_path: Path, a: int, b: int) -> str:
    """How long a fresh process takes to read element [123, 456] of map f's output."""
    i, j = min(123, a - 1), min(456, b - 1)
    code = READ_ONE.format(i=i, j=j)
    out = subprocess.run(
        [sys.executable, "-c", code, str(run_path)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--store", type=Path, help="folder for the files (default: a temp dir)")
    args = p.parse_args()
    root = work.fresh_folder(args.store, "million-")
    fstype, mount = mt.filesystem(root)
    a, b = work.grid_shape(args.n)
    print(f"n = {args.n:,} elements per map ({a} x {b}); store {root}, {fstype} at {mount}")
    try:
        store = root / "store"
        mt.warm_up_flows(store, boxed=False)
        v_left, v_right = work.voltages(args.n)
        watcher = work.FirstFiles(store, ["*-f_step", "*-g_step"])
        watcher.start()
        run, seconds, _ = mt.run_flow(
            mt.two_maps(), store, V_left=v_left, V_right=v_right, boxed=False
        )
        found = watcher.stop()
        mean = mt.flow_mean(run)
        e, c = (
            run.step(s).path / "return_values" / o for s, o in (("f_step", "e"), ("g_step", "c"))
        )
        t = time.perf_counter()
        listed = present_indices(c)
        listing = time.perf_counter() - t
        assert listed.size == args.n
        expected = work.mean_of_files(str(c), args.n)
        assert mean == expected, (mean, expected)
        for step in ("f_step", "g_step"):
            rec = StepStatus.load(run.step(step).path)
            assert rec.started is not None and rec.finished is not None
            setup = found.get(f"*-{step}", float("nan")) - rec.started
            print(f"  {step}: setup {setup:.2f} s, map {rec.finished - rec.started:.1f} s")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  run: {seconds:.1f} s; driver peak RSS {peak:.0f} MB; dataset.nc helper peak")
        print(
            f"  RSS {dataset_writer.peak_rss_mb:.0f} MB; one listing of {c.name}/: {listing:.2f} s"
        )
        print(f"  files: {sum(1 for _ in os.scandir(e)) + sum(1 for _ in os.scandir(c)):,}")
        print(f"  one element in a fresh process: {read_one_element(run.path, a, b)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
