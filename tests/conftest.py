"""Shared fixtures: one real local HighThroughputExecutor per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can import seed_flows

import parsl_flows as flows


@pytest.fixture(scope="session")
def local_env() -> flows.engine.ExecutionEnvironment:
    """The library's default environment: a real local HTEX, started once per session."""
    return flows.engine.execution_environment(None, "localhost")


@pytest.fixture(scope="session")
def thread_env() -> flows.engine.ExecutionEnvironment:
    return flows.engine.execution_environment(None, "threads")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"
