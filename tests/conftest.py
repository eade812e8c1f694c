"""Shared fixtures: the test-sized preset, offline hub settings, and a helper to run the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model or dataset hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TEST_PRESET = Path(__file__).parent / "data" / "fmnist-test.toml"


@pytest.fixture
def test_preset() -> Path:
    """A copy of the default preset with tiny sizes: same data and model, seconds instead of minutes."""
    return TEST_PRESET


@pytest.fixture
def cli():
    """Invoke the cleanbench CLI in-process; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from benchmark.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    return invoke
