"""The default: a Parsl HighThroughputExecutor on this machine (one worker per core).

Pass it by path: ``python -m parsl_flows run FLOW --config configs/local.py`` or
``flows.engine.execution_environment.from_file("configs/local.py")``.  Edit the
arguments (or write your own ``config = Config(...)``) to change it.
"""

from parsl_flows.engine.configs import local_config

config = local_config(max_workers=None)  # None: one worker per core
