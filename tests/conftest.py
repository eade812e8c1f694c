"""Shared fixtures: the test-sized preset, offline hub settings, and a helper to run the CLI. Shared helpers that
are not fixtures live in plain modules (``tests/helpers.py``, ``tests/results_rows.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model or dataset hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Under pytest-xdist (``make test`` runs one worker per core) each worker, and every process it starts, computes on
# one thread: two workers of two threads each on two cores run the tiny model several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def test_preset() -> Path:
    """A copy of the default preset with tiny sizes: same data and model, seconds instead of minutes."""
    from tests.helpers import TEST_PRESET

    return TEST_PRESET


@pytest.fixture
def one_thread():
    """Torch on one thread in this process, as in a pool worker or a process run with ``OMP_NUM_THREADS=1``:
    bitwise equality holds for one thread count (a parallel reduction may add in another order), and one thread is
    also the fastest for the tiny model on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
