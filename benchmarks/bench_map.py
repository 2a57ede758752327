"""Throughput of a parsl_flows map against bare Parsl and a serial loop, same invocation.

    python benchmarks/bench_map.py [N]        # default N = 10000

Three ways to square N numbers with a no-op-sized function:
  serial      a Python loop in this process (the floor of useful work);
  bare Parsl  one python_app per element on the same local HTEX config, results returned
              to the driver (what a user writes without parsl_flows);
  parsl_flows map_(square, "x[i] -> y[i]"): chunked tasks, one pickle file per element
              written by the workers, masks and status records in the store.
Prints seconds, elements/s, and the ratio of each to bare Parsl.  Machines here are
noisy: compare ratios from one invocation, not absolute figures across days.
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc

import parsl
from parsl.app.app import python_app

import parsl_flows as flows
from parsl_flows.engine.configs import local_config
from parsl_flows.workflow import map_, new_workflow


def square(x: int) -> int:
    return x * x


@flows.step(returns="y")
def square_step(x: int) -> int:
    return x * x


def bench_serial(n: int) -> float:
    t = time.perf_counter()
    _ = [square(i) for i in range(n)]
    return time.perf_counter() - t


def bench_bare_parsl(n: int) -> tuple[float, float]:
    dfk = parsl.load(local_config(label="bare"))
    app = python_app(square, executors=["bare"])
    app(0).result()  # workers up: measure steady state, as for parsl_flows below
    tracemalloc.start()
    t = time.perf_counter()
    futures = [app(i) for i in range(n)]
    _ = [f.result() for f in futures]
    elapsed = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del futures
    dfk.cleanup()
    return elapsed, peak


def bench_flows(n: int, store: str) -> tuple[float, float]:
    env = flows.engine.execution_environment(None, "localhost")
    warm = new_workflow("warm").then(map_(square_step, "x[i] -> y[i]"))
    flows.run(flows.workflow.build(warm.on(env), x=[1]), store=store)
    flow = new_workflow("bench").then(map_(square_step, "x[i] -> y[i]"))
    tracemalloc.start()
    t = time.perf_counter()
    run = flows.run(flows.workflow.build(flow.on(env), x=list(range(n))), store=store)
    elapsed = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert run.exit_code == 0
    return elapsed, peak


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    serial = bench_serial(n)
    bare, bare_mem = bench_bare_parsl(n)
    with tempfile.TemporaryDirectory() as store:
        mine, mine_mem = bench_flows(n, store)
    print(f"N = {n} elements, local HTEX")
    print(f"{'':12} {'seconds':>9} {'elements/s':>11} {'vs bare Parsl':>14} {'driver peak MB':>15}")
    print(f"{'serial':12} {serial:9.3f} {n / serial:11.0f} {bare / serial:13.1f}x {'':>15}")
    print(f"{'bare Parsl':12} {bare:9.3f} {n / bare:11.0f} {1.0:13.1f}x {bare_mem / 1e6:15.1f}")
    ratio, mem = bare / mine, mine_mem / 1e6
    print(f"{'parsl_flows':12} {mine:9.3f} {n / mine:11.0f} {ratio:13.1f}x {mem:15.1f}")


if __name__ == "__main__":
    main()
