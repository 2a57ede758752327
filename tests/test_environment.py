"""Execution environments, computers files and Slurm settings (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from parsl.config import Config

import parsl_flows as flows
from parsl_flows.engine.environment import execution_environment, known_computers
from parsl_flows.engine.slurm import SlurmSite, activation
from parsl_flows.step import Resources


def test_localhost_and_threads():
    local = execution_environment(None, "localhost")
    assert local.name == "localhost" and isinstance(local.config(), Config)
    assert execution_environment(None, "threads").config().executors[0].label == "threads"


def test_unknown_computer_lists_the_known_ones(tmp_path, monkeypatch):
    (tmp_path / "c.toml").write_text('[mycluster]\npartition = "gpu"\n')
    monkeypatch.setenv("PARSL_FLOWS_COMPUTERS", str(tmp_path / "c.toml"))
    with pytest.raises(ValueError, match="known computers: localhost, threads, mycluster"):
        execution_environment(None, "elsewhere")
    assert known_computers() == {"mycluster": {"partition": "gpu"}}


def test_seed_style_call_gives_a_slurm_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PARSL_FLOWS_COMPUTERS", str(tmp_path / "none.toml"))
    env = execution_environment("py39", "my-cluster", queue=("some-queue", 24))
    assert env.name == "my-cluster-some-queue"
    assert env.check is not None and env.make_executor is not None
    executor = env.config().executors[0]
    assert executor.max_workers_per_node == 24
    provider = executor.provider
    assert provider.partition == "some-queue"
    assert "conda activate py39" in provider.worker_init
    assert "#SBATCH --cpus-per-task=24" in provider.scheduler_options


def test_computers_file_settings_and_typos(tmp_path, monkeypatch):
    (tmp_path / "c.toml").write_text(
        '[hpc]\npartition = "normal"\ncores_per_node = 8\naccount = "proj1"\n'
        'walltime = "2:00:00"\nworker_init = "module load python"\n'
    )
    monkeypatch.setenv("PARSL_FLOWS_COMPUTERS", str(tmp_path / "c.toml"))
    env = execution_environment(None, "hpc")
    provider = env.config().executors[0].provider
    assert (provider.partition, provider.account, provider.walltime) == (
        "normal",
        "proj1",
        "02:00:00",
    )
    # the pool is told the cores of its block, then the user's own lines run
    assert provider.worker_init.splitlines() == ["export PARSL_CORES=8", "module load python"]
    (tmp_path / "c.toml").write_text('[hpc]\npartiton = "normal"\n')
    with pytest.raises(ValueError, match=r"unknown setting.*partiton"):
        execution_environment(None, "hpc")


def test_a_resource_class_executor_asks_slurm_for_exactly_that():
    site = SlurmSite("c", partition="debug", cores_per_node=8)
    ex = site.executor("c-2c", Resources(cores=2, memory_mb=1536, walltime_s=3600))
    assert ex.max_workers_per_node == 1 and ex.cores_per_worker == 2
    options = ex.provider.scheduler_options
    # the elements' memory, plus what the worker pool holds itself (block_memory_mb)
    assert "#SBATCH --mem=1786M" in options and "#SBATCH --cpus-per-task=2" in options
    assert ex.provider.walltime == "01:05:00"
    assert ex.provider.max_blocks == 4  # four such blocks fit a node


def test_activation_of_a_virtual_environment_path(tmp_path: Path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "activate").write_text("")
    assert activation(str(tmp_path / "venv")) == f"source {tmp_path / 'venv' / 'bin' / 'activate'}"
    assert "conda activate py39" in activation("py39")


def test_sbatch_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    env = execution_environment(None, "somewhere", queue=("debug", 2))
    from parsl_flows.workflow import new_workflow

    flow = new_workflow("f").then(flows.step(lambda x: x, returns="y"))
    with pytest.raises(RuntimeError, match="'sbatch' is not on PATH"):
        flows.submit(flows.workflow.build(flow.on(env), x=1), store=tmp_path)
    assert not (tmp_path / "runs").exists()


def test_from_file_and_from_config(tmp_path):
    here = Path(__file__).resolve().parents[1]
    env = flows.engine.execution_environment.from_file(here / "configs" / "local.py")
    assert env.config().executors[0].label == "local"
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no 'config'"):
        flows.engine.execution_environment.from_file(bad)
    cfg = Config()
    assert flows.engine.execution_environment.from_config(cfg).config() is cfg
