"""Threads inside the driver process: no start-up cost, for debugging steps.

A step that kills its process kills the driver too; use ``configs/local.py`` for real work.
"""

from parsl_flows.engine.configs import thread_config

config = thread_config(max_threads=None)  # None: one thread per core
