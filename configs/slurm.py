"""A HighThroughputExecutor whose blocks are Slurm jobs.

Settings come from the arguments below or from ``PARSL_FLOWS_SLURM_*`` environment
variables: PARTITION, ACCOUNT, QOS, WALLTIME, NODES_PER_BLOCK, MAX_BLOCKS, CORES_PER_NODE,
WORKER_INIT, EXCLUSIVE, SCHEDULER_OPTIONS, ADDRESS, POLL_SECONDS.  The defaults suit the
one-node test cluster of ``tools/local-slurm.sh`` (partition ``debug``).

Pass it by path: ``python -m parsl_flows run FLOW --config configs/slurm.py``.  Steps with
``resources=`` get executors of their own when run through
``flows.engine.execution_environment(conda_env, computer, queue=...)``.
"""

import os

from parsl_flows.engine.configs import slurm_config

config = slurm_config(
    partition=os.environ.get("PARSL_FLOWS_SLURM_PARTITION", "debug"),
    walltime=os.environ.get("PARSL_FLOWS_SLURM_WALLTIME", "00:30:00"),
)
