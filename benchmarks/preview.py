"""How long a preview of a restart takes on a big map: the target is under 1 s for 100k.

    python benchmarks/preview.py --n 100000 [--store DIR] [--repeat 5]

Runs the two-map workflow of ``map_throughput.py`` on ``n`` elements once (local HTEX),
then, in this process, times ``flows.preview`` of a restart of it three ways:
- unchanged (every element reused: keys of both maps worked out and looked up);
- with ``recompute={"f_step": {"V_left": slice(...)}}`` (a tenth of the rows; the selection
  made from the run's coordinates is timed with it, as ``get_builder_restart`` does it);
- the resume preview of the finished run.
The baselines, in the same invocation: the run itself (its ``flows.run`` wall time), and
``builder.validate()`` (what a submit checks before anything runs).  Prints the median
of ``--repeat`` for each, and checks the counts (unchanged: all reused; recompute: the
tenth and what reads it computed).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import map_throughput as mt

import parsl_flows as flows
from parsl_flows.preview import Preview, preview_resume


def timed(what: str, call, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(f"{what:<34} median {median * 1000:8.1f} ms  (min {min(times) * 1000:.1f})")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--store", default=None, help="a folder for the store (default: /tmp)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pf-preview-", dir=args.store))
    try:
        left, right = mt.work.voltages(args.n)
        run, seconds, _ = mt.run_flow(mt.two_maps(), root / "store", V_left=left, V_right=right,
                                      boxed=False)  # fmt: skip
        print(f"run of {args.n} elements: {seconds:.1f} s, status {run.status}")
        builder = run.get_builder_restart()
        base = timed("validate (baseline)", builder.validate, args.repeat)
        print(f"preview/validate: {base and 1 / base:.0f} validations a second as the floor")
        plain = timed("preview, unchanged", lambda: flows.preview(builder), args.repeat)
        p = flows.preview(builder)
        assert p.compute == 0 and p.reuse == 2 * args.n + 1, str(p)
        rows = len(left) // 10
        lo, hi = left[0], left[rows - 1]

        def with_recompute() -> Preview:
            b = run.get_builder_restart(recompute={"f_step": {"V_left": slice(lo, hi)}})
            return flows.preview(b)

        chosen = timed("select + preview, recompute 10%", with_recompute, args.repeat)
        p = with_recompute()
        assert p.steps[0].compute == rows * len(right) == p.steps[1].compute, str(p)
        resume = timed("resume preview", lambda: preview_resume(run.path), args.repeat)
        print(p)
        print(
            f"preview/run: {plain / seconds:.3f}x; unchanged {plain:.3f} s, with recompute "
            f"{chosen:.3f} s, resume {resume:.3f} s (target: under 1 s for 100k)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
