"""Worker pools that Slurm killed for memory: out of memory, not a lost worker.

A block asks Slurm for ``--mem`` (``engine/configs.py``).  Past it, Slurm kills the block's
job step: with ``JobAcctGatherParams=OverMemoryKill`` (what ``tools/local-slurm.sh``
sets) slurmstepd writes ``error: StepId=271.batch exceeded memory limit (433192960 >
104857600), being killed`` and ``error: Exceeded job memory limit`` to the job's stderr;
with ``task/cgroup`` the kernel's OOM killer acts and slurmstepd writes ``Detected 1
oom-kill event(s) in StepId=...`` (when the step ends) and the job ends
``OUT_OF_MEMORY``.  Parsl only says ``ManagerLost`` (or ``WorkerLost``) some 30 s later.

So when a task of a Slurm executor is lost, the stderr of the block it ran in is read
(Parsl's SlurmProvider writes it beside the block's submit script,
``<run_dir>/submit_scripts/parsl.<label>.block-<n>.<time>.stderr``); the block is the
one whose worker-pool folder is named after the lost manager
(``<run_dir>/<label>/block-<n>/<manager>/``).  ``scontrol show job`` is asked when the
file says nothing (a job ended ``OUT_OF_MEMORY``).  A kill found there makes the lost
element's exception an :class:`~parsl_flows.errors.OutOfMemoryError` naming the job and
its ``--mem``.  Where the block cannot be told (a ``WorkerLost``: Parsl does not say which
pool), any block of the executor that was killed for memory counts.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from ..errors import OutOfMemoryError
from ..files import refresh_folder

__all__ = ["killed_for_memory", "memory_kill_lines", "out_of_memory_kill"]

#: What slurmstepd writes to a job's stderr when it kills a step for memory.
_KILLED = re.compile(
    r"exceeded memory limit|Exceeded (job|step) memory limit|oom[-_ ]kill event|"
    r"out-of-memory handler",
    re.IGNORECASE,
)
_MEM = re.compile(r"^#SBATCH\s+--mem=(\S+)", re.MULTILINE)
#: ``scontrol`` answers per job, cached this long: a node lost with many tasks asks once.
_STATE_SECONDS = 10.0
_states: dict[str, tuple[float, str]] = {}


def memory_kill_lines(stderr: str | Path, fresh: bool = True) -> list[str]:
    """The lines of a block job's stderr file that say Slurm killed it for memory.

    ``fresh``: make this client's view of the folder current first (another node's
    client wrote the file, on a shared filesystem).
    """
    if not stderr:
        return []
    path = Path(stderr)
    if fresh:
        refresh_folder(path.parent)
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if _KILLED.search(line)]


def _job_state(job: str) -> str:
    """``JobState`` of ``job`` as ``scontrol`` says, "" when it does not (long gone)."""
    now = time.monotonic()
    cached = _states.get(job)
    if cached is not None and now - cached[0] < _STATE_SECONDS:
        return cached[1]
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    match = re.search(r"JobState=(\S+)", out)
    state = match.group(1) if match else ""
    _states[job] = (now, state)
    return state


def killed_for_memory(job: str, stderr: str | Path) -> list[str]:
    """What says block job ``job`` was killed for memory (its stderr lines, or its state)."""
    lines = memory_kill_lines(stderr)
    if not lines and job and _job_state(job) == "OUT_OF_MEMORY":
        lines = [f"scontrol: job {job} JobState=OUT_OF_MEMORY"]
    return lines


def _block_of(logdir: Path | None, blocks: list[str], manager: str) -> str | None:
    """The block whose worker pool was manager ``manager`` (its log folder's parent)."""
    if logdir is None or not manager:
        return None
    for block in blocks:
        folder = logdir / f"block-{block}"
        if (folder / manager).is_dir():
            return block
    for block in blocks:  # not seen yet through this client's caches: look again
        folder = logdir / f"block-{block}"
        refresh_folder(folder)
        if (folder / manager).is_dir():
            return block
    return None


def _job_memory(stderr: str) -> str:
    """The ``--mem`` of a block job, from its submit script (beside its stderr)."""
    script = Path(stderr[: -len(".stderr")]) if stderr.endswith(".stderr") else None
    try:
        match = _MEM.search(script.read_text()) if script is not None else None
    except OSError:
        match = None
    return f"--mem={match.group(1)}" if match else "its default memory (no --mem)"


def out_of_memory_kill(
    lost: BaseException,
    logdir: Path | None,
    blocks: dict[str, tuple[str, str]],
    step: str,
    memory_mb: int | None,
) -> OutOfMemoryError | None:
    """The error of a task lost as ``lost`` (Parsl's ``ManagerLost`` or ``WorkerLost``) when
    its block was killed for memory, else None.

    ``logdir`` and ``blocks`` (block id -> job id, stderr file) are the executor's
    (``runner.blocks``); ``memory_mb`` is what each element of the step had.
    """
    blocks = {b: files for b, files in blocks.items() if files[1]}
    if not blocks:
        return None  # not a batch system's executor (local blocks write no stderr file)
    raw = getattr(lost, "manager_id", b"")
    manager = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
    block = _block_of(logdir, list(blocks), manager)
    for b in [block] if block is not None else list(blocks):
        job, stderr = blocks[b]
        lines = killed_for_memory(job, stderr)
        if lines:
            asked = f"{memory_mb}MB an element" if memory_mb else "no memory in its resources"
            return OutOfMemoryError(
                f"step {step!r}: Slurm killed block job {job} (block {b}), where this element "
                f"was running, for using more memory than the job has ({_job_memory(stderr)}; "
                f"the step asks {asked}): {lines[0]}. Give the step more with "
                "@step(resources={'memory': ...}), or let each retry have more with "
                "retry_resources={'memory': 2}",
                memory_mb,
                job,
            )
    return None
