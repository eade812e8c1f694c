"""The runner's executors: victim groups as submitit jobs (its local executor stands in for Slurm) and as a
pool of local worker processes give the same rows as each other, gathered in the one shared results.csv, and
concurrent writers never lose a row."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark.results import COLUMNS, METRIC_COLUMNS, SCHEMA_VERSION, ResultsFile
from benchmark.runner import plan_grid, run_plan
from benchmark.progress import Reporter
from benchmark.runner.executors import GRID_BAR, LocalPool, SlurmExecutor, SlurmOptions, WorkerSetup
from benchmark.runner.lock import SharedResults
from tests.helpers import small_plan

CPU = torch.device("cpu")
SETUP = WorkerSetup(no_plugin_autoload=True)


def _metrics(out: Path) -> pd.DataFrame:
    rows = pd.read_csv(out / "results.csv").sort_values("cell_id").reset_index(drop=True)
    assert (rows.status == "ok").all()
    return rows[["cell_id", *METRIC_COLUMNS]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    """The rows of the same plan run in this process, one group after the other."""
    out = tmp_path_factory.mktemp("in-process")
    run_plan(small_plan(), out, CPU)
    return _metrics(out)


def test_submitit_jobs_run_one_victim_each_and_gather_rows_into_the_shared_results(reference, tmp_path):
    plan, out = small_plan(), tmp_path / "run"
    executor = SlurmExecutor(out / "slurm", SlurmOptions(timeout_min=5, cpus_per_job=1, mem_gb=4), SETUP, "cpu",
                             cluster="local")
    summary = run_plan(plan, out, CPU, executor=executor)
    assert (summary.victims_trained, summary.cells_run, summary.cells_failed) == (2, 2, 0)
    assert len(list((out / "slurm").glob("*_0_result.pkl"))) == 2  # one submitit job per victim group
    assert set(_metrics(out).cell_id) == {cell.key for cell in plan.cells}
    pd.testing.assert_frame_equal(_metrics(out), reference)


def test_local_workers_give_the_rows_of_one_process(reference, tmp_path):
    plan, out = small_plan(), tmp_path / "run"
    summary = run_plan(plan, out, CPU, executor=LocalPool(2, SETUP))
    assert (summary.victims_trained, summary.cells_run, summary.cells_failed) == (2, 2, 0)
    pd.testing.assert_frame_equal(_metrics(out), reference)
    again = run_plan(plan, out, CPU, executor=LocalPool(2, SETUP))  # a rerun finds everything done
    assert (again.victims_trained, again.cells_run, again.cells_skipped) == (0, 0, 2)


class BarRecorder(Reporter):
    """A silent reporter that records, for every bar, the steps advanced against its total."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.bars: list[tuple[str, int, int]] = []

    @contextlib.contextmanager
    def task(self, description: str, total: int):
        done = [0]

        def advance(n: int = 1, **fields) -> None:
            done[0] += n

        yield advance
        self.bars.append((description, done[0], total))


class LineRecorder(BarRecorder):
    """A :class:`BarRecorder` that also records every line it would print."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet = False  # still no live bar (set up as quiet); lines are recorded, not printed
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


def test_local_workers_share_a_victims_cells(tmp_path, capfd):
    """Each victim is trained once, then its cells go to whichever worker is free; rows as in one process. The
    coordinator's one bar for the grid counts every victim and cell, with workers as in one process, and the
    workers' lines reach the terminal through the coordinator's reporter (which prints them above its bar), never
    straight from the worker (which would print over the bar)."""
    plan = plan_grid(small_plan().preset, ["badnet"], ["none", "finetune"], [0])
    reference, out = tmp_path / "in-process", tmp_path / "run"
    in_process, pooled = BarRecorder(), LineRecorder()
    run_plan(plan, reference, CPU, reporter=in_process)
    summary = run_plan(plan, out, CPU, reporter=pooled, executor=LocalPool(2, SETUP))
    assert (summary.victims_trained, summary.victims_loaded, summary.cells_run, summary.cells_failed) == (2, 0, 4, 0)
    pd.testing.assert_frame_equal(_metrics(out), _metrics(reference))
    for recorder in (in_process, pooled):
        grid_bars = [bar for bar in recorder.bars if bar[0] == GRID_BAR]
        assert grid_bars == [(GRID_BAR, 6, 6)]  # 2 victims + 4 cells, all done
    worker_lines = [line for line in pooled.lines if "victim badnet seed 0: trained in" in line]
    assert len(worker_lines) == 1 and worker_lines[0].startswith("[")  # timestamped in the worker
    assert sum("cell badnet × finetune seed 0: CA" in line for line in pooled.lines) == 1
    assert "trained in" not in capfd.readouterr().err


def test_cells_of_a_killed_worker_are_recorded_as_failed_and_the_grid_goes_on(tmp_path, monkeypatch):
    """A worker SIGKILLed in its first training step (as by the OOM killer): the coordinator records the cells it
    did not write as ``failed``, naming the dead worker, and returns; a rerun redoes them."""
    from benchmark.faults import ENV

    plan, out = small_plan(), tmp_path / "run"
    monkeypatch.setenv(ENV, "train-step:1")  # the workers inherit it; the coordinator trains nothing
    recorder = BarRecorder()
    summary = run_plan(plan, out, CPU, reporter=recorder, executor=LocalPool(2, SETUP))
    assert (summary.victims_trained, summary.cells_run, summary.cells_failed) == (0, 0, 2)
    assert recorder.bars == [(GRID_BAR, 4, 4)]  # failed victims and their cells still complete the bar
    rows = ResultsFile(out / "results.csv").rows
    assert sorted(rows) == sorted(cell.key for cell in plan.cells)
    for row in rows.values():
        assert row["status"] == "failed" and row["ca"] in ("", None), row
        assert row["reason"].startswith(f"worker for victim {row['attack']} seed 0 died: "), row["reason"]
    assert len(summary.failures) == 2 and all(" died: " in failure for failure in summary.failures)
    assert not any(ResultsFile(out / "results.csv").done(cell.key) for cell in plan.cells)  # a rerun redoes them


COORDINATOR = """
import sys, torch
from benchmark.runner import run_plan
from benchmark.runner.executors import LocalPool, WorkerSetup
from tests.helpers import small_plan
run_plan(small_plan(), sys.argv[1], torch.device("cpu"), executor=LocalPool(2, WorkerSetup(no_plugin_autoload=True)))
"""


def _workers_of(pid: int) -> list[int]:
    """The pool workers among ``pid``'s children (``spawn`` starts them with ``spawn_main`` on their command
    line; the resource tracker, also a child, has ``resource_tracker`` on its own)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):  # the process ended while we looked
            continue
        if parent == pid and b"spawn_main" in command and b"resource_tracker" not in command:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_die_with_a_killed_coordinator(tmp_path):
    """A killed ``cleanbench run`` leaves no worker writing into the folder that its rerun takes over."""
    import os
    import signal
    import subprocess
    import sys
    import time

    coordinator = subprocess.Popen([sys.executable, "-c", COORDINATOR, str(tmp_path / "run")],
                                   cwd=Path(__file__).parents[1], stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and len(workers) < 2:
        workers = _workers_of(coordinator.pid)
        time.sleep(0.2)
    assert len(workers) == 2, "the pool never started"
    time.sleep(2)  # let them start their jobs
    os.kill(coordinator.pid, signal.SIGKILL)
    coordinator.wait()
    # A worker still importing torch when the coordinator dies kills itself once it reaches _die_with: on a loaded
    # machine that can take a minute or more, so the wait is generous (it ends as soon as they are gone).
    deadline = time.time() + 180
    while time.time() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(_running(pid) for pid in workers)


@pytest.mark.slow
def test_a_job_with_two_tasks_trains_its_victim_with_ddp(reference, tmp_path):
    """``--gpus 2`` with Slurm: each job runs two tasks that train together (gloo on the CPU here)."""
    plan, out = small_plan(), tmp_path / "run"
    options = SlurmOptions(timeout_min=5, cpus_per_job=1, mem_gb=4, gpus_per_job=2)
    summary = run_plan(plan, out, CPU, executor=SlurmExecutor(out / "slurm", options, SETUP, "cpu", cluster="local"))
    assert (summary.victims_trained, summary.cells_run, summary.cells_failed) == (2, 2, 0)
    metas = [json.loads(path.read_text()) for path in (out / "cache" / "victims").glob("*/meta.json")]
    assert [meta["processes"] for meta in metas] == [2, 2]
    assert set(_metrics(out).cell_id) == set(reference.cell_id)


def _write_rows(path: str, writer: int) -> None:
    results = SharedResults(Path(path))
    for index in range(8):
        row = dict.fromkeys(COLUMNS, "")
        row.update(schema_version=SCHEMA_VERSION, cell_id=f"{writer}-{index}", status="ok")
        results.upsert(row)


def test_concurrent_writers_never_lose_rows(tmp_path):
    path = tmp_path / "results.csv"
    context = multiprocessing.get_context("fork")  # separate processes, each with its own lock handle
    writers = [context.Process(target=_write_rows, args=(str(path), writer)) for writer in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    assert set(ResultsFile(path).rows) == {f"{writer}-{index}" for writer in range(4) for index in range(8)}


def test_executor_choices_are_checked(monkeypatch, tmp_path):
    from benchmark.errors import UserError
    from benchmark.runner.executors import InProcess, make_executor

    options = dict(workers=0, device=CPU, device_name="cpu", out_dir=tmp_path, slurm=SlurmOptions(), setup=SETUP)
    for cores, expected in ((1, None), (2, 2), (16, 4)):  # the CPU default: a single-threaded worker per core
        monkeypatch.setattr("benchmark.runner.executors.cpu_cores", lambda: cores)
        executor = make_executor("local", **options)
        assert isinstance(executor, InProcess) if expected is None else executor.workers == expected
    assert isinstance(make_executor("local", **{**options, "workers": 1}), InProcess)
    with pytest.raises(UserError, match="--executor 'lsf' is not known"):
        make_executor("lsf", **options)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(UserError, match="no `sbatch` on this machine"):
        make_executor("slurm", **options)


def test_more_local_workers_than_gpus_share_them(monkeypatch):
    """``--device cuda --workers 2`` on one GPU puts both workers on cuda:0 (it was refused: "only 1 GPUs")."""
    from benchmark.runner.executors import _worker_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _worker_devices(torch.device("cuda"), 2) == ["cuda:0", "cuda:0"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _worker_devices(torch.device("cuda"), 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert _worker_devices(torch.device("cuda", 1), 2) == ["cuda:1", "cuda:1"]
