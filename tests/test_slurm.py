"""The Slurm executor against a real one-node Slurm cluster on localhost (``benchmarks/slurm/start.sh``: munge,
slurmctld and slurmd, installed with apt-get where missing). The grid's jobs go through ``sbatch`` and run on
this machine with this Python, and give the rows of the local executor.

Skipped, with the reason, where the cluster cannot be had: not root, no apt-get, the packages would not
install, or the daemons did not come up. Where it can be had, the tests run (they are marked slow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmark.results import METRIC_COLUMNS
from tests.helpers import write_small_preset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
SCRIPTS = ROOT / "benchmarks" / "slurm"
SLURM = ["--executor", "slurm", "--slurm-partition", "debug", "--slurm-timeout-min", "10",
         "--slurm-option", "cpus_per_task=1", "--slurm-option", "mem=1G"]  # the test node: 2 cores, memory not enforced


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node cluster (started by the script, stopped after the session if this started it)."""
    if os.geteuid() != 0:
        pytest.skip("a local Slurm cluster needs root (benchmarks/slurm/start.sh installs and starts daemons)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    was_up = shutil.which("scontrol") is not None and subprocess.run(
        ["scontrol", "ping"], capture_output=True, text=True).stdout.count("is UP") > 0
    started = subprocess.run(["bash", str(SCRIPTS / "start.sh")], capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.skip(f"no local Slurm cluster: start.sh exited {started.returncode}: "
                    f"{(started.stderr or started.stdout).strip()[-500:]}")
    yield
    if not was_up:
        subprocess.run(["bash", str(SCRIPTS / "stop.sh")], capture_output=True, timeout=120)


def _metrics(out: Path) -> pd.DataFrame:
    rows = pd.read_csv(out / "results.csv").sort_values("cell_id").reset_index(drop=True)
    assert (rows.status == "ok").all(), rows[["cell_id", "status", "reason"]]
    return rows[["cell_id", *METRIC_COLUMNS]]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The smallest preset's grid (the benign control and badnet, no defense: two victims, two cells) and the
    rows of the local executor."""
    from typer.testing import CliRunner

    from benchmark.cli import app

    folder = tmp_path_factory.mktemp("slurm-grid")
    preset = write_small_preset(folder / "small.toml", "fmnist-slurm")

    def run(out: Path, *options: str, preset: str | Path = preset):
        result = CliRunner().invoke(app, ["run", "--preset", str(preset), "--attacks", "badnet", "--defenses",
                                          "none", "--seeds", "0", "--device", "cpu", "--out", str(out), *options])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    local = run(folder / "local", "--workers", "1")
    assert local.exit_code == 0, local.stderr
    run.preset = preset
    return run, _metrics(folder / "local")


def grid_preset(grid) -> Path:
    return grid[0].preset


def test_a_grid_through_slurm_gives_the_rows_of_the_local_executor(slurm_cluster, grid, tmp_path):
    run, reference = grid
    out = tmp_path / "run"
    result = run(out, *SLURM)
    assert result.exit_code == 0, result.stderr
    assert "executor slurm: 2 jobs" in result.stderr + result.stdout
    pd.testing.assert_frame_equal(_metrics(out), reference)
    scripts = list((out / "slurm").glob("*_submission.sh"))
    assert scripts and "#SBATCH --partition=debug" in scripts[0].read_text()
    assert len(list((out / "slurm").glob("*_result.pkl"))) == 2  # one job per victim, each finished


def _start(preset: Path, out: Path) -> subprocess.Popen:
    """``cleanbench run --executor slurm`` in a process of its own, so that the test can act on its jobs."""
    return subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", "--preset", str(preset), "--attacks",
                             "badnet", "--defenses", "none", "--seeds", "0", "--device", "cpu", "--out", str(out),
                             *SLURM], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _a_running_job(run: subprocess.Popen, out: Path, deadline_s: float = 240) -> str:
    """The id (``ARRAY_TASK``) of one of this grid's jobs once it runs (submitit names its files after it)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and run.poll() is None:
        arrays = {path.name.split("_")[0] for path in (out / "slurm").glob("*_submission.sh")}
        if not arrays:
            time.sleep(0.2)
            continue
        listed = subprocess.run(["squeue", "-h", "-t", "R", "-j", arrays.pop(), "-r", "-o", "%i"],
                                capture_output=True, text=True).stdout.split()
        if listed:
            return listed[0]
        time.sleep(0.2)
    raise AssertionError(f"no job of the grid ran (exit {run.poll()})")


def _scontrol(job: str) -> dict[str, str]:
    line = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def test_a_cancelled_job_is_recorded_failed_and_the_same_command_redoes_it(slurm_cluster, grid, tmp_path):
    """``scancel`` of a running job mid-grid: its cell is recorded failed, naming the state, the other job's
    row is written; the same command again redoes the failed cell only: nothing lost, nothing duplicated."""
    run, reference = grid
    out = tmp_path / "run"
    first = _start(grid_preset(grid), out)
    job = _a_running_job(first, out)
    subprocess.run(["scancel", job], check=True)
    log, _ = first.communicate(timeout=300)
    assert first.returncode == 1, log  # a cell failed
    assert f"slurm job {job} " in log and "CANCELLED" in log, log
    rows = pd.read_csv(out / "results.csv")
    assert sorted(rows.status) == ["failed", "ok"], rows
    failed = rows[rows.status == "failed"].iloc[0]
    assert "died: UncompletedJobError" in failed.reason and "CANCELLED" in failed.reason, failed.reason
    again = run(out, *SLURM)
    assert again.exit_code == 0, again.stderr
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 2 and rows.cell_id.is_unique
    pd.testing.assert_frame_equal(_metrics(out), reference)


def test_a_requeued_job_runs_again_and_the_grid_finishes(slurm_cluster, grid, tmp_path):
    """``scontrol requeue`` of a running job: Slurm starts it again, it resumes from the cache, the grid ends
    with every row as the local executor's."""
    _, reference = grid
    out = tmp_path / "run"
    first = _start(grid_preset(grid), out)
    job = _a_running_job(first, out)
    subprocess.run(["scontrol", "requeue", job], check=True)
    log, _ = first.communicate(timeout=300)
    assert first.returncode == 0, log
    assert _scontrol(job).get("Restarts") == "1", _scontrol(job)
    pd.testing.assert_frame_equal(_metrics(out), reference)


def test_a_job_past_its_time_limit_is_recorded_failed_with_the_reason_and_the_grid_goes_on(slurm_cluster, grid,
                                                                                            tmp_path):
    """A one-minute limit and no requeue on the default preset (minutes of training per victim): Slurm signals
    each job that its time is up, the job stops, and its cells are recorded failed with the reason; the command
    ends, with a row for every cell. submitit asks for the signal 90 s before the limit, at once here, maybe
    before the job's Python has its handler: ``signal=USR2@10`` has it come 10 s before the minute is up."""
    run, _ = grid
    out = tmp_path / "run"
    limited = [*SLURM[:SLURM.index("--slurm-timeout-min")], "--slurm-timeout-min", "1", "--slurm-max-requeue", "0",
               *SLURM[SLURM.index("--slurm-timeout-min") + 2:], "--slurm-option", "signal=USR2@10"]
    result = run(out, *limited, preset="fmnist-tiny")
    assert result.exit_code == 1, result.stdout + result.stderr
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 2 and (rows.status == "failed").all(), rows
    for reason in rows.reason:
        assert "timed-out" in reason or "TIMEOUT" in reason, reason
