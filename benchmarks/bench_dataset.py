"""Turning a large map output into an xarray Dataset, against a serial loop, same invocation.

    python benchmarks/bench_dataset.py [N]        # default N = 100000

Writes N element files as a map's workers would (one cloudpickle file per element, every
1000th missing), then reads them back:
  serial loop   FileBasedObjectArray.to_array(): one file after the other (the baseline);
  to_xarray     the Dataset with <name> and <name>_mask, files read by threads;
  to_xarray/1   the same with one thread, to see what the threads buy.
Then the same for an object-valued output (tuples), which to_xarray reads lazily: only
the first element, to see that it is not numbers.

Prints seconds, elements/s and the ratio of each to the serial loop (best of 3, files
already in the page cache).  On a local disk the threads buy little, since unpickling
holds the GIL; on a shared cluster filesystem, where each open() waits on the network,
they buy more.  Compare ratios from one invocation, not absolute figures across days.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import numpy as np

from parsl_flows.dataset import array_to_xarray
from parsl_flows.store import FileBasedObjectArray, element_path


def write_elements(folder: Path, n: int, make: Callable[[int], object]) -> FileBasedObjectArray:
    folder.mkdir(parents=True)
    for k in range(n):  # the files workers write (without their temporary names: setup only)
        if k % 1000 != 999:
            element_path(folder, k).write_bytes(cloudpickle.dumps(make(k)))
    return FileBasedObjectArray(folder, (n // 100, 100) if n % 100 == 0 else (n,))


def best_of(f: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def report(rows: list[tuple[str, float]], n: int) -> None:
    base = rows[0][1]
    for label, seconds in rows:
        print(
            f"  {label:<14} {seconds:8.3f} s  {n / seconds:12,.0f} elements/s  "
            f"x{base / seconds:5.2f} vs serial loop"
        )


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        floats = write_elements(Path(tmp) / "charge", n, lambda k: k * 0.5)
        objects = write_elements(Path(tmp) / "electrostatics", n, lambda k: ("volts", k))
        print(f"wrote 2 x {n:,} element files in {time.perf_counter() - t:.1f} s")
        floats.to_array()  # warm the page cache for every contender alike
        objects.to_array()

        ds = floats.to_xarray()
        expected = floats.to_array().filled(np.nan)
        assert ds.charge.dtype == np.float64
        np.testing.assert_array_equal(ds.charge.values, expected)
        np.testing.assert_array_equal(ds.charge_mask.values, floats.mask)

        print(f"float output, shape {floats.shape}:")
        report(
            [
                ("serial loop", best_of(floats.to_array)),
                ("to_xarray", best_of(floats.to_xarray)),
                ("to_xarray/1", best_of(lambda: array_to_xarray(floats, threads=1))),
            ],
            n,
        )
        print(f"object output, shape {objects.shape} (read lazily):")
        report(
            [
                ("serial loop", best_of(objects.to_array)),
                ("to_xarray", best_of(objects.to_xarray)),
            ],
            n,
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
