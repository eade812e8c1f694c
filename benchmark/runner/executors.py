"""Where the grid's work runs: in this process, in a pool of local workers (one per GPU), or as Slurm jobs.

The unit of work is a *victim group*: one victim and its pending cells. A victim is trained once and shared by
all its defenses, so two workers never train the same victim; a Slurm job is a group (the CleanCLIP-scale grid,
5 victims × 5 defenses, is 5 jobs), while local workers split each group into its victim and then its cells
(see :class:`LocalPool`).

Workers write every finished cell straight into the shared output folder: artifacts under their own content
keys (atomic renames), and their row into ``results.csv`` through :class:`~benchmark.runner.lock.SharedResults`
(a lock held only for the row's read-merge-write). The coordinator (``cleanbench run``) holds the folder's
:class:`~benchmark.runner.lock.OutputLock` for the whole run, gathers each worker's summary, and records the
cells of a worker that died (killed, out of memory, out of requeues) as ``failed``; a rerun redoes them.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from benchmark import distributed
from benchmark import plugins as plugin_loader
from benchmark.device import Runtime, current_runtime, resolve_device, set_runtime
from benchmark.errors import UserError
from benchmark.progress import Reporter
from benchmark.results import RESULTS_FILE, ResultsFile
from benchmark.runner.execute import run_group
from benchmark.runner.lock import SharedResults
from benchmark.runner.plan import CellSpec, Plan, VictimSpec
from benchmark.runner.record import RunSummary, record_failed

Group = tuple[VictimSpec, list[CellSpec]]
EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class WorkerSetup:
    """What a fresh worker process needs to act like the CLI process: plugins and runtime settings."""

    plugins: tuple[str, ...] = ()
    no_plugin_autoload: bool = False
    runtime: Runtime = field(default_factory=current_runtime)

    def apply(self) -> None:
        """Load the plugins (reporting each that fails) and set the runtime, as the CLI process did."""
        for failure in plugin_loader.register_plugins(self.plugins, self.no_plugin_autoload):
            Reporter().log(f"warning: {failure.message()}")
        set_runtime(self.runtime)


class Executor(Protocol):
    """Runs victim groups and returns the merged summary; rows land in ``out_dir/results.csv`` as cells finish."""

    def run(self, plan: Plan, groups: list[Group], out_dir: Path, device: torch.device,
            reporter: Reporter) -> RunSummary:
        ...


class InProcess:
    """Every group in this process, one after another (the CPU default, and each rank's loop under torchrun)."""

    def run(self, plan: Plan, groups: list[Group], out_dir: Path, device: torch.device,
            reporter: Reporter) -> RunSummary:
        summary = RunSummary()
        with reporter.task(GRID_BAR, total=grid_jobs(groups)) as advance:
            for spec, cells in groups:
                summary.merge(run_group(plan, spec, cells, out_dir, device, reporter, advance))
                advance(1)  # the group's victim, trained or loaded
        return summary


GRID_BAR = "grid: victims + cells"  # the one bar the coordinator shows for the whole grid, whatever the executor


def grid_jobs(groups: list[Group]) -> int:
    """The bar's total: one step per victim and one per cell."""
    return len(groups) + sum(len(cells) for _, cells in groups)


class LocalPool:
    """``workers`` processes on this machine, each with its own device (GPU i, or a share of the CPU cores).

    Each group is split in two parts (``run_group``'s ``part``): the victims are queued first, and as each
    one is in the cache its cells are queued one by one, so any free worker takes them. Five victims and 25
    cells on two workers thus keep both busy to the end, where whole groups would leave one idle for the last
    group. Worker processes start fresh (``spawn``), so CUDA and plugins initialise cleanly in each; each keeps
    its loaded dataset between jobs.
    """

    def __init__(self, workers: int, setup: WorkerSetup) -> None:
        self.workers = workers
        self.setup = setup

    def run(self, plan: Plan, groups: list[Group], out_dir: Path, device: torch.device,
            reporter: Reporter) -> RunSummary:
        if len(groups) == 1 and len(groups[0][1]) == 1:  # one job: nothing to spread, no processes to start
            return InProcess().run(plan, groups, out_dir, device, reporter)
        devices = _worker_devices(device, self.workers)
        context = multiprocessing.get_context("spawn")
        queue, lines = context.Queue(), context.Queue()
        for name in devices:
            queue.put(name)
        summary = RunSummary()
        # CPU workers split the cores: two OpenMP teams on the same cores spin-wait each other to a crawl.
        threads = max(1, cpu_cores() // len(devices)) if device.type == "cpu" else 0
        reporter.log(f"executor local: {len(groups)} victims, {sum(len(cells) for _, cells in groups)} cells on "
                     f"{len(devices)} workers ({', '.join(devices)}{f', {threads} thread(s) each' if threads else ''})")
        with _printing(lines, reporter), \
                futures.ProcessPoolExecutor(len(devices), mp_context=context, initializer=_init_worker,
                                            initargs=(queue, lines, self.setup, threads, os.getpid())) as pool, \
                reporter.task(GRID_BAR, total=grid_jobs(groups)) as advance:
            jobs = {pool.submit(_run_in_worker, plan, spec, cells, str(out_dir), "victim"): ("victim", spec, cells)
                    for spec, cells in groups}
            while jobs:
                finished, _ = futures.wait(jobs, return_when=futures.FIRST_COMPLETED)
                for job in finished:
                    part, spec, cells = jobs.pop(job)
                    gathered = _gather(plan, (spec, cells), job, out_dir, summary, reporter)
                    if part == "cells":
                        advance(len(cells))
                        continue
                    if not gathered:  # the victim failed: its cells are recorded as failed, none is queued
                        advance(1 + len(cells))
                        continue
                    results = ResultsFile(Path(out_dir) / RESULTS_FILE)  # cells the victim part did not settle
                    pending = [cell for cell in cells if not results.done(cell.row_id)]
                    advance(1 + len(cells) - len(pending))  # the victim, and cells its part took from the cache
                    for cell in pending:
                        try:
                            job = pool.submit(_run_in_worker, plan, spec, [cell], str(out_dir), "cells")
                        except futures.process.BrokenProcessPool as error:  # a worker was killed: no new jobs
                            job = futures.Future()
                            job.set_exception(error)
                        jobs[job] = ("cells", spec, [cell])
        return summary


def _worker_devices(device: torch.device, workers: int) -> list[str]:
    """The device of each local worker: under ``--device cuda`` the visible GPUs in turn, so more workers than
    GPUs share them (``--workers 2`` on one GPU puts both on ``cuda:0``, as ``--device cuda:0`` does)."""
    if device.type == "cuda" and device.index is None:
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError(f"--workers {workers}: no GPU is visible")
        return [f"cuda:{i % count}" for i in range(workers)]
    return [str(device)] * workers


_worker_device: torch.device | None = None
_worker_lines: Any = None  # the queue a worker's log lines go to (the coordinator prints them: _printing)


class _ForwardingReporter(Reporter):
    """A worker's reporter: each line goes to the coordinator, which prints it above its bar (a worker printing to
    the terminal itself would draw over the bar)."""

    def __init__(self, lines: Any) -> None:
        super().__init__(live=False)
        self.lines = lines

    def write(self, line: str) -> None:
        self.lines.put(line)


class _printing:
    """While open, a thread of the coordinator prints the lines its workers send through ``lines`` with
    ``reporter``; on closing it prints what is left and stops (it never waits on a dead worker)."""

    def __init__(self, lines: Any, reporter: Reporter) -> None:
        self.lines, self.reporter = lines, reporter
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._print, name="worker-lines", daemon=True)

    def __enter__(self) -> "_printing":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _print(self) -> None:
        while True:
            try:
                line = self.lines.get(timeout=0.1)
            except Exception:  # noqa: BLE001 - empty, or a message torn by a killed worker (its lines are lost)
                if self.stop.is_set():
                    return
                continue
            if not self.reporter.quiet:
                self.reporter.write(str(line))


def _init_worker(queue, lines, setup: WorkerSetup, threads: int, coordinator: int) -> None:
    global _worker_device, _worker_lines
    _die_with(coordinator)
    _worker_device = torch.device(queue.get())
    _worker_lines = lines
    if threads:
        torch.set_num_threads(threads)
    if _worker_device.type == "cuda":
        torch.cuda.set_device(_worker_device)
    setup.apply()


def _die_with(coordinator: int) -> None:
    """Have the kernel kill this worker when the coordinator dies (Linux ``PR_SET_PDEATHSIG``): a worker left
    running after ``cleanbench run`` was killed would go on writing into the folder that the rerun now owns."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != coordinator:  # it died before the request was in place
        os.kill(os.getpid(), signal.SIGKILL)


def _run_in_worker(plan: Plan, spec: VictimSpec, cells: list[CellSpec], out_dir: str, part: str) -> RunSummary:
    return run_group(plan, spec, cells, Path(out_dir), _worker_device, _ForwardingReporter(_worker_lines), part=part)


@dataclass(frozen=True)
class SlurmOptions:
    """Slurm settings of each job (one job per victim group, submitted as one job array)."""

    partition: str = ""
    timeout_min: int = 240
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int = 64
    max_requeue: int = 3
    array_parallelism: int = 64
    extra: tuple[tuple[str, str], ...] = ()  # sbatch options: (("account", "abc"), ("qos", "high"))


class SlurmExecutor:
    """Each victim group as a task of one Slurm job array, through ``submitit``.

    A job that hits its time limit or is preempted is requeued (at most ``max_requeue`` times for time-outs,
    submitit's ``max_num_timeout``) and resumes from the cache: finished victims and cells are not redone, a
    victim whose training was cut off is trained again from the start. ``gpus_per_job`` > 1 runs each job as
    that many tasks training with DDP (submitit exports the torchrun variables). ``cluster="local"`` runs the
    jobs as local processes through submitit's local executor (tests, a workstation).
    """

    def __init__(self, folder: Path, options: SlurmOptions, setup: WorkerSetup, device_name: str,
                 cluster: str | None = None) -> None:
        self.folder = Path(folder)
        self.options = options
        self.setup = setup
        self.device_name = device_name
        self.cluster = cluster

    def run(self, plan: Plan, groups: list[Group], out_dir: Path, device: torch.device,
            reporter: Reporter) -> RunSummary:
        import submitit  # an optional dependency, needed only here

        options = self.options
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster,
                                         slurm_max_num_timeout=options.max_requeue)
        parameters: dict[str, Any] = {
            "name": f"cleanbench-{plan.preset.name}", "timeout_min": options.timeout_min,
            "gpus_per_node": options.gpus_per_job if self.device_name != "cpu" else 0,
            "tasks_per_node": max(1, options.gpus_per_job),  # one task per GPU (on the CPU: gloo processes)
            "cpus_per_task": options.cpus_per_job, "mem_gb": options.mem_gb,
            "slurm_array_parallelism": options.array_parallelism,
        }
        if options.partition:
            parameters["slurm_partition"] = options.partition
        if options.extra:
            parameters["slurm_additional_parameters"] = dict(options.extra)
        executor.update_parameters(**parameters)
        job = GroupJob(self.setup, self.device_name, str(out_dir))
        jobs = executor.map_array(job, [plan] * len(groups), [spec for spec, _ in groups],
                                  [cells for _, cells in groups])
        reporter.log(f"executor slurm: {len(jobs)} jobs ({jobs[0].job_id.split('_')[0] if jobs else '-'}), "
                     f"logs in {self.folder}")
        if self.cluster == "slurm":
            states = slurm_states()
            for submitted in jobs:  # sacct, or scontrol where the cluster keeps no accounting
                submitted.watcher = states
        summary = RunSummary()
        for submitted, (spec, cells) in zip(jobs, groups):
            _gather(plan, (spec, cells), submitted, out_dir, summary, reporter)
            if self.cluster == "slurm":
                state = submitted.watcher.get_state(submitted.job_id, mode="force")
                result = "result in" if submitted.paths.result_pickle.exists() else "no result"
                reporter.log(f"slurm job {submitted.job_id} (victim {spec.attack} seed {spec.seed}): {result}, "
                             f"Slurm state {state}")
        return summary


def slurm_states():
    """A submitit watcher of Slurm job states: ``sacct``'s (submitit's own), or, on a cluster that keeps no
    accounting (``AccountingStorageType=accounting_storage/none``, where ``sacct`` fails), ``scontrol show job``'s.
    Without it a job that ends without a result (cancelled, timed out, its node lost) would be waited on for ever
    on such a cluster. A job ``scontrol`` no longer knows (ended longer than ``MinJobAge`` ago) counts as ended."""
    import subprocess
    import time

    from submitit.core import logger
    from submitit.slurm.slurm import SlurmInfoWatcher

    class States(SlurmInfoWatcher):
        accounting = True

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            if self.accounting:
                done = subprocess.run(command, capture_output=True)
                if done.returncode == 0:
                    self._info_dict.update(self.read_info(done.stdout))
                elif b"accounting storage is disabled" in done.stderr:
                    self.accounting = False
                else:
                    logger.get_logger().warning(f"sacct failed ({done.stderr.decode().strip()}); states may lag")
            if not self.accounting:
                for main in {job.split("_")[0] for job in self._registered - self._finished}:
                    self._info_dict.update(self._scontrol(main))
            self._last_status_check = time.time()
            for job in self._registered - self._finished:
                if self.is_done(job, mode="cache"):
                    self._finished.add(job)

        def _scontrol(self, main: str) -> dict[str, dict[str, str]]:
            done = subprocess.run(["scontrol", "show", "job", "-o", main], capture_output=True, text=True)
            if done.returncode != 0:
                if "Invalid job id" in done.stderr:  # purged from slurmctld: it ended
                    return {job: {"State": "ENDED", "JobID": job} for job in self._registered
                            if job.split("_")[0] == main and job not in self._finished}
                logger.get_logger().warning(f"scontrol failed ({done.stderr.strip()}); states may lag")
                return {}
            found: dict[str, dict[str, str]] = {}
            for line in done.stdout.splitlines():
                fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
                state = {"State": fields.get("JobState", "UNKNOWN"), "JobID": fields.get("JobId", ""),
                         "Reason": fields.get("Reason", "")}
                task = fields.get("ArrayTaskId")
                if not task:
                    found[fields.get("JobId", main)] = state
                    continue
                for part in task.split("%")[0].split(","):  # 3, or a pending range: 0-4%2, 0,3-5
                    first, _, last = part.partition("-")
                    for index in range(int(first), int(last or first) + 1):
                        found[f"{fields.get('ArrayJobId', main)}_{index}"] = state
            return found

    return States(delay_s=60)


class GroupJob:
    """One victim group in a Slurm job; requeued by submitit on time-out or preemption (see ``checkpoint``)."""

    def __init__(self, setup: WorkerSetup, device_name: str, out_dir: str) -> None:
        self.setup = setup
        self.device_name = device_name
        self.out_dir = out_dir

    def __call__(self, plan: Plan, spec: VictimSpec, cells: list[CellSpec]) -> RunSummary:
        import submitit

        self.setup.apply()
        device = resolve_device(self.device_name)
        if submitit.JobEnvironment().num_tasks > 1:  # several GPUs for this group: DDP across the job's tasks
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            device = distributed.init_from_env(device)
        reporter = Reporter(live=False, quiet=not distributed.world().is_main)
        return run_group(plan, spec, cells, Path(self.out_dir), device, reporter)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Requeue with the same arguments: the cache makes the rerun resume where this one stopped."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _gather(plan: Plan, group: Group, job: Any, out_dir: Path, summary: RunSummary, reporter: Reporter) -> bool:
    """Merge a finished job's summary; a job that died has the cells it did not write recorded as failed (a
    rerun redoes them). True when the job finished and none of its cells failed."""
    spec, cells = group
    try:
        # a submitit job with several tasks (DDP) returns one summary per task: rank 0's counts the group once
        finished = job.results()[0] if hasattr(job, "results") else job.result()
    except Exception as error:  # noqa: BLE001 - the worker died; its cells are reported and the grid goes on
        message = " ".join(str(error).splitlines()[:2])  # submitit adds the job's error log: see its files
        reason = f"worker for victim {spec.attack} seed {spec.seed} died: {type(error).__name__}: {message}"
        written = ResultsFile(Path(out_dir) / RESULTS_FILE).rows
        results = SharedResults(Path(out_dir) / RESULTS_FILE)
        for cell in (cell for cell in cells if cell.row_id not in written):
            record_failed(plan, cell, reason, results, summary, reporter)
        return False
    summary.merge(finished)
    return finished.cells_failed == 0


MAX_CPU_WORKERS = 4  # each holds its own copy of the dataset (~0.7 GB for the default)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and Slurm narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_executor(name: str, *, workers: int, device: torch.device, device_name: str, out_dir: Path,
                  slurm: SlurmOptions, setup: WorkerSetup) -> Executor:
    """The executor ``--executor`` names. ``local`` with ``workers`` 0 means one worker per visible GPU, or on
    the CPU one single-threaded worker per core (at most ``MAX_CPU_WORKERS``).

    Why one thread per worker on the CPU: the default model's matrices are too small for a second OpenMP
    thread to pay, so single-threaded workers side by side, one victim each, train more images per second in
    all than one process with a thread per core (the default grid's latest wall time:
    ``benchmarks/results/perf-2026-11-28.md``).
    """
    if name == "local":
        if workers == 0:
            if device.type == "cuda" and device.index is None:
                workers = torch.cuda.device_count()
            else:
                workers = min(cpu_cores(), MAX_CPU_WORKERS) if device.type == "cpu" else 1
        return InProcess() if workers <= 1 else LocalPool(workers, setup)
    if name == "slurm":
        if shutil.which("sbatch") is None:
            raise UserError("--executor slurm: there is no `sbatch` on this machine; run from a Slurm login node")
        return SlurmExecutor(out_dir / "slurm", slurm, setup, device_name, cluster="slurm")
    raise UserError(f"--executor {name!r} is not known; choose one of: {', '.join(EXECUTORS)}")
