"""The command that tidies the store: ``cleanup`` stops what dead drivers left running.

Kept apart from the commands that start or watch runs because it is the only one that
acts on processes and Slurm jobs it did not start; the work itself is the engine's
(:func:`parsl_flows.engine.cleanup.cleanup`), this only reports it.
"""

from __future__ import annotations

import argparse

from ..engine.cleanup import cleanup
from ..store import default_store

__all__ = ["cmd_cleanup"]


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
