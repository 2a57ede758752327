"""The commands that tidy the store: ``cleanup`` stops what dead drivers left running,
``compact`` rewrites ended runs' element files as task files, ``reindex`` builds the
store's reuse index again.

Kept apart from the commands that start or watch runs because they act on what no run of
theirs made: processes and Slurm jobs (``cleanup``), the files of runs that ended
(``compact``).  The work itself is the engine's (:func:`parsl_flows.engine.cleanup.cleanup`)
and the store's (:mod:`parsl_flows.compact`); this only reports it.
"""

from __future__ import annotations

import argparse

from ..compact import Compacted, CompactError, CompactRefused, compact_run, compact_store
from ..engine.cleanup import cleanup
from ..engine.reuse_index import INDEX_FOLDER, rebuild_index
from ..store import default_store
from .common import CommandError, UsageError, load

__all__ = ["cmd_cleanup", "cmd_compact", "cmd_reindex"]


def cmd_cleanup(args: argparse.Namespace) -> int:
    store = default_store(args.store)
    cleaned = cleanup(store)
    if not cleaned:
        print(f"nothing to clean up in {store}: no run there has a dead driver")
        return 0
    for found in cleaned:
        print(f"run {found.run_id}:")
        for action in found.actions:
            print(f"  {action}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """Compact one run (refusals are errors: the user named it) or, with ``--all``, every
    ended run of the store (refusals are reported, the others done all the same)."""
    if bool(args.run) == bool(args.all):
        raise UsageError("give one run, or --all for every ended run of the store")
    if not args.all:
        run = load(args)
        try:
            done = compact_run(run.path)
        except (CompactRefused, CompactError) as e:
            raise CommandError(str(e)) from e
        _report(done, full=True)
        return 0
    store = default_store(args.store)
    compacted = removed = failed = 0
    for done in compact_store(store):
        _report(done, full=False)
        failed += bool(done.failed)
        compacted += not (done.skipped or done.failed or done.already)
        removed += done.removed
    print(f"compacted {compacted} run(s) in {store}: {removed} file(s) removed in all")
    return 1 if failed else 0  # runs not ended yet are no failure: compact them later


def _report(done: Compacted, full: bool) -> None:
    """One line per run; its notes too (only the first few of each run for --all)."""
    if done.skipped or done.failed:
        print(
            f"run {done.run_id}: {'skipped' if done.skipped else 'failed'}: "
            f"{done.skipped or done.failed}"
        )
    elif done.already:
        print(f"run {done.run_id}: already compact ({done.files_before} files): nothing to do")
    else:
        print(
            f"run {done.run_id}: removed {done.removed} file(s), wrote {done.task_files} task "
            f"file(s) and {done.indexes} index(es): {done.files_before} files before, "
            f"{done.files_after} after"
        )
    for note in done.notes if full else done.notes[:5]:
        print(f"  {note}")


def cmd_reindex(args: argparse.Namespace) -> int:
    """Build every ended run's reuse index file again (``engine/reuse_index.py``)."""
    store = default_store(args.store)
    if not (store / "runs").is_dir():
        raise UsageError(f"{store} is not a store (it has no runs/ folder); give --store DIR")
    counts = rebuild_index(store)
    for run_id, count in counts.items():
        print(f"{run_id}: {count} element(s) to reuse")
    print(f"indexed {len(counts)} ended run(s) in {store / INDEX_FOLDER}")
    return 0
