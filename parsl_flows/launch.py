"""What users call to start a run: ``flows.submit`` and ``flows.run``.

A thin entry point over the engine (``engine/submit.py`` lays out the run and starts its
execution); the run comes back as a :class:`~parsl_flows.run.Run`, the object users
follow, wait for and read results from.
"""

from __future__ import annotations

import os

from .engine.reuse import Reuse
from .engine.submit import start
from .run import Run
from .workflow import Builder

__all__ = ["run", "submit"]


def submit(
    builder: Builder, *, store: str | os.PathLike[str] | None = None, reuse: Reuse = True
) -> Run:
    """Start running ``builder`` in the background and return its :class:`Run` at once.

    The run lives in ``<store>/runs/<run-id>``; ``store`` defaults to
    ``$PARSL_FLOWS_STORE`` or ``./parsl-flows-store``.  A builder from
    ``run.get_builder_restart()`` reuses that run's results whose code and inputs did not
    change, unless ``reuse=False``.  ``reuse="store"`` takes, besides, any element of any
    earlier run of the store with the same code and inputs (a fresh ``build`` too): the
    store's reuse index (``engine/reuse_index.py``) says where.
    """
    execution = start(builder, store=store, reuse=reuse)
    return Run(execution.run_dir, execution=execution)


def run(
    builder: Builder, *, store: str | os.PathLike[str] | None = None, reuse: Reuse = True
) -> Run:
    """Like :func:`submit`, but wait for the run to end before returning it."""
    return submit(builder, store=store, reuse=reuse).wait()
