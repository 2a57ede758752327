"""How long ``reuse="store"`` takes to look keys up: the target is under 2 s for 100,000
keys against a store of 20 runs of 100,000 elements.

    python benchmarks/reuse_lookup.py [--runs 20] [--n 100000] [--store DIR] [--repeat 5]

Makes the store for real: ``--runs`` runs (local HTEX) of one map of ``map_throughput.py``'s
``f_step`` over ``n`` elements, run k sweeping ``V_left + k`` (so no two runs share a key);
each leaves its reuse index file as it ends.  Then, in this process, times the lookup
(``reuse_index.find_in_store``: list the store, open every run's index file, search) of
``n`` keys worked out as a run works them out (``KeyBook.node_keys``, timed apart):
- hits in the oldest run (every newer run searched first: the slowest place to find them);
- half in the newest run, half in the oldest;
- no hit at all (every run searched, nothing found).
Baselines in the same invocation: the key computation itself, and the runs' wall time.
Last, a whole ``flows.run(..., reuse="store")`` of the oldest run's inputs (every element
linked from it, nothing computed) against the median run's wall time.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import map_throughput as mt
import numpy as np

import parsl_flows as flows
from parsl_flows.engine.hashing import KeyBook, value_key
from parsl_flows.engine.inputs import MappedInputs
from parsl_flows.engine.reuse_index import find_in_store
from parsl_flows.engine.task_spec import Source
from parsl_flows.workflow import map_, new_workflow

STEP = map_(mt.f_step, "V_left[a], V_right[b] -> e[a, b]")


def one_map() -> flows.workflow.Workflow:
    return new_workflow("reuse_lookup").then(STEP)


def inputs_of(k: int, n: int) -> dict[str, object]:
    left, right = mt.work.voltages(n)
    return {"V_left": [v + k for v in left], "V_right": right, "boxed": False}


def keys_of(inputs: dict[str, object]) -> np.ndarray:
    """The keys a run of ``inputs`` works out for its map's elements."""
    book, mapped = KeyBook(), MappedInputs()
    params = {}
    for name, value in inputs.items():
        book.value[name], _ = value_key(value)
        params[name] = Source("value", f"bench:{name}")
        mapped.remember(f"bench:{name}", value)
    shape = (len(inputs["V_left"]), len(inputs["V_right"]))  # type: ignore[arg-type]
    keys, why = book.node_keys(STEP, params, shape, mapped.value)
    assert keys is not None, why
    return keys.reshape(-1)


def timed(what: str, call, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(f"{what:<44} median {median * 1000:8.1f} ms  (min {min(times) * 1000:.1f})")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--store", default=None, help="a folder for the store (default: /tmp)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pf-reuse-lookup-", dir=args.store)) / "store"
    env = flows.engine.execution_environment(None, "localhost")
    try:
        runs, seconds = [], []
        for k in range(args.runs):
            t = time.perf_counter()
            run = flows.run(flows.workflow.build(one_map().on(env), **inputs_of(k, args.n)),
                            store=root)  # fmt: skip
            seconds.append(time.perf_counter() - t)
            assert run.exit_code == 0, run.log()
            runs.append(run)
        index = sum(p.stat().st_size for p in (root / "reuse-index").iterdir())
        median_run = statistics.median(seconds)
        print(f"{args.runs} runs of {args.n} elements in {root} (median run {median_run:.1f} s);"
              f" reuse index {index / 1e6:.1f} MB")  # fmt: skip
        oldest, newest = keys_of(inputs_of(0, args.n)), keys_of(inputs_of(args.runs - 1, args.n))
        base = timed(f"keys of {args.n} elements (baseline)", lambda: keys_of(inputs_of(0, args.n)),
                     args.repeat)  # fmt: skip
        half = np.concatenate([newest[: args.n // 2], oldest[args.n // 2 :]])
        none = keys_of(inputs_of(args.runs + 5, args.n))
        wanted = np.arange(args.n, dtype=np.int64)

        def lookup(keys: np.ndarray, expect: int):
            def call() -> None:
                found = find_in_store(root, None, "map", ("e",), keys, wanted)
                assert sum(len(f.new) for f in found) == expect, found

            return call

        slowest = timed("lookup, all in the oldest run", lookup(oldest, args.n), args.repeat)
        timed("lookup, half newest, half oldest", lookup(half, args.n), args.repeat)
        missing = timed("lookup, none found", lookup(none, 0), args.repeat)
        t = time.perf_counter()
        again = flows.run(flows.workflow.build(one_map().on(env), **inputs_of(0, args.n)),
                          store=root, reuse="store")  # fmt: skip
        whole = time.perf_counter() - t
        rec = again.step("f_step").record
        assert (rec.n_reused, rec.n_submitted) == (args.n, 0), (rec.n_reused, rec.n_submitted)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"lookup/keys: {slowest / base:.2f}x (all in the oldest), {missing / base:.2f}x "
            f"(none found); worst lookup {max(slowest, missing):.3f} s (target: under 2 s)\n"
            f"whole run reusing every element: {whole:.2f} s, {whole / median_run:.2f}x a run "
            f"computing them (median of the {args.runs}, {median_run:.2f} s; the first, with "
            f"Parsl's start-up, {seconds[0]:.2f} s); driver peak RSS {peak:.0f} MB"
        )
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
