"""Soak test: many runs with real faults, then a check of every element (run by hand).

    python benchmarks/soak.py --minutes 20 [--store DIR] [--seed N]

Each round starts a driver process (a script that submits a two-map workflow and waits)
and does one of these to it:

- nothing: the run ends by itself;
- SIGKILL after a random delay, then ``resume()`` in a new driver process;
- SIGINT (Ctrl-C) after a random delay, then ``resume()`` in a new driver process.

Inside the run, elements fail at random in user code (a ValueError, decided by the
element's value, so it is known which must fail) and kill their worker at random
(``os._exit``, decided at run time, so a retry usually succeeds).

At the end of each round every element of both maps is checked: a correct value, or a
recorded failure (an exception in the store, for a masked element); a masked element
without an exception is *lost*, a value that differs is *wrong*.  The store must hold no
temporary file, and no process of a dead driver may be alive 30 s after its death.
The summary at the end says how many of each were seen; a healthy library has zero
lost, zero wrong, zero leftovers.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

DRIVER = textwrap.dedent(
    """
    import hashlib, os, random, sys, time
    import numpy as np
    import parsl_flows as flows
    from parsl_flows.workflow import build, map_, new_workflow

    def must_fail(a, b, salt):
        h = hashlib.blake2b(f"{salt}-{a}-{b}".encode(), digest_size=4).digest()
        return int.from_bytes(h, "little") % 23 == 0

    @flows.step(returns="e")
    def combine(a, b, salt, kill_rate):
        time.sleep(random.uniform(0, 0.01))
        if random.random() < kill_rate:
            os._exit(1)  # the worker dies, as in a segfault
        if must_fail(a, b, salt):
            raise ValueError(f"bad sample {a}, {b}")
        return 10 * a + b

    @flows.step(returns="c")
    def square(e, kill_rate):
        if random.random() < kill_rate:
            os._exit(1)
        return e * e

    flow = (
        new_workflow("soak")
        .then(map_(combine, "a[i], b[j] -> e[i, j]"))
        .then(map_(square, "e[i, j] -> c[i, j]"))
    )

    if __name__ == "__main__":
        store, what = sys.argv[1], sys.argv[2]
        if what == "new":
            n_a, n_b, salt = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
            kill_rate = float(sys.argv[6])
            env = flows.engine.execution_environment(None, "localhost")
            inputs = dict(a=np.arange(n_a), b=np.arange(n_b), salt=salt, kill_rate=kill_rate)
            run = flows.submit(build(flow.on(env), **inputs), store=store)
        else:
            run = flows.load_run(what).resume()
        print("RUN", run.path, flush=True)
        run.wait()
        print("ENDED", run.status, flush=True)
    """
)


def must_fail(a: int, b: int, salt: str) -> bool:
    import hashlib

    h = hashlib.blake2b(f"{salt}-{a}-{b}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") % 23 == 0


class Soak:
    def __init__(self, store: Path, seed: int) -> None:
        self.store = store
        self.rng = random.Random(seed)
        self.script = store.parent / "soak_driver.py"
        self.script.write_text(DRIVER)
        self.counts: Counter[str] = Counter()
        self.dead: list[tuple[float, list[psutil.Process]]] = []  # (death time, processes)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(self.script), str(self.store), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def processes_of(self, proc: subprocess.Popen[str]) -> list[psutil.Process]:
        try:
            found = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            found = []
        for p in psutil.process_iter(["cmdline"]):  # detached pools name the store's run dir
            if str(self.store) in " ".join(p.info["cmdline"] or []) and p.pid != proc.pid:
                found.append(p)
        return found

    def run_path(self, proc: subprocess.Popen[str]) -> Path:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("RUN "):
            raise RuntimeError(f"driver said {line!r}")
        return Path(line.split(None, 1)[1].strip())

    def round(self) -> None:
        n_a, n_b = self.rng.randint(5, 25), self.rng.randint(5, 40)
        salt = f"{self.rng.random():.6f}"
        kill_rate = self.rng.choice([0.0, 0.002, 0.01])
        fault = self.rng.choice(["none", "sigkill", "sigkill", "sigint"])
        proc = self.start("new", str(n_a), str(n_b), salt, str(kill_rate))
        path = self.run_path(proc)
        self.counts["runs"] += 1
        while fault != "none":
            time.sleep(self.rng.uniform(0.5, 6.0))
            if proc.poll() is not None:
                break  # it ended before the fault
            helpers = self.processes_of(proc)
            proc.send_signal(signal.SIGKILL if fault == "sigkill" else signal.SIGINT)
            try:
                proc.wait(timeout=10 if fault == "sigint" else 60)
            except subprocess.TimeoutExpired:
                self.counts["ctrl-c slower than 10 s"] += 1
                proc.kill()
                proc.wait()
            self.dead.append((time.monotonic(), helpers))
            self.counts[fault] += 1
            proc = self.start(path.as_posix())
            self.run_path(proc)
            self.counts["resumes"] += 1
            fault = self.rng.choice(["none", "none", "sigkill", "sigint"])
        proc.communicate(timeout=900)
        self.check(path, n_a, n_b, salt)

    def check(self, path: Path, n_a: int, n_b: int, salt: str) -> None:
        import parsl_flows as flows
        from parsl_flows.errors import InfrastructureError

        run = flows.load_run(path)
        if run.status not in ("finished", "failed"):
            self.counts[f"runs that ended {run.status}"] += 1
        e_step, c_step = run.step("combine"), run.step("square")
        e = e_step.outputs.return_values.e.to_array() if e_step.record.n_done else None
        c_out = c_step.outputs.return_values
        c = c_out.c.to_array() if "c" in c_out else None
        e_exc = e_step.outputs.exception if "exception" in e_step.outputs else None
        c_exc = c_step.outputs.exception if "exception" in c_step.outputs else None
        for a in range(n_a):
            for b in range(n_b):
                self.counts["elements"] += 1
                want_e = None if must_fail(a, b, salt) else 10 * a + b
                got_e = None if e is None or np.ma.getmaskarray(e)[a, b] else e[a, b]
                kind = self.judge(got_e, want_e, e_exc, (a, b), InfrastructureError)
                self.counts[f"combine {kind}"] += 1
                if got_e is None:
                    continue
                got_c = None if c is None or np.ma.getmaskarray(c)[a, b] else c[a, b]
                kind = self.judge(got_c, got_e * got_e, c_exc, (a, b), InfrastructureError)
                self.counts[f"square {kind}"] += 1
        temporaries = list(self.store.rglob("*.tmp"))
        self.counts["temporary files"] += len(temporaries)

    @staticmethod
    def judge(got, want, exceptions, key, infra) -> str:
        if got is not None:
            return "correct" if want is not None and got == want else "WRONG"
        exc = None if exceptions is None else exceptions[key]
        if exc is None or exc is np.ma.masked:
            return "LOST"
        if want is None and isinstance(exc, ValueError):
            return "recorded failure (expected)"
        if isinstance(exc, infra):
            return "recorded failure (worker killed on every try)"
        return "recorded failure (unexpected)"

    def leftovers(self, grace: float = 30.0) -> int:
        """Processes of dead drivers still alive ``grace`` seconds after their death."""
        alive = 0
        for died, procs in self.dead:
            wait = max(0.0, died + grace - time.monotonic())
            _, still = psutil.wait_procs(procs, timeout=wait)
            alive += sum(1 for p in still if p.status() != psutil.STATUS_ZOMBIE)
        self.dead.clear()
        return alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    # Started in the background by a shell, this process ignores SIGINT, and so would the
    # drivers it starts: give them Python's own Ctrl-C handling back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    base = args.store or Path(tempfile.mkdtemp(prefix="parsl-flows-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    soak = Soak(base / "store", args.seed)
    print(f"soak: {args.minutes} min, store {soak.store}, seed {args.seed}", flush=True)
    start = time.monotonic()
    left = 0
    while time.monotonic() - start < args.minutes * 60:
        soak.round()
        left += soak.leftovers()
        elapsed = (time.monotonic() - start) / 60
        print(f"[{elapsed:5.1f} min] {dict(sorted(soak.counts.items()))}", flush=True)
    left += soak.leftovers()
    print(f"\nsoak finished after {(time.monotonic() - start) / 60:.1f} min")
    for key, value in sorted(soak.counts.items()):
        print(f"  {key:50s} {value}")
    print(f"  {'processes of dead drivers alive 30 s after':50s} {left}")
    bad = sum(v for k, v in soak.counts.items() if "LOST" in k or "WRONG" in k or "unexpected" in k)
    bad += soak.counts["temporary files"] + left + soak.counts["ctrl-c slower than 10 s"]
    print("OK" if bad == 0 else f"PROBLEMS: {bad}")
    sys.exit(0 if bad == 0 else 1)


if __name__ == "__main__":
    main()
