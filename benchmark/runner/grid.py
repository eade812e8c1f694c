"""Running a plan: the output folder checked and locked, the cells already recorded as ``ok`` skipped, and the
pending ones grouped by victim and handed to an executor (:mod:`benchmark.runner.executors`), which runs each
group (:func:`benchmark.runner.execute.run_group`) where it belongs. The clean model that pretrained victims
start from (:mod:`benchmark.runner.pretrained`) is trained here first, once, so workers only load it.

Imports run one way: ``grid`` → ``executors`` → ``execute`` → ``record``, ``pretrained`` → ``plan``, ``store``,
``lock``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from benchmark.distributed import barrier, world
from benchmark.progress import Reporter
from benchmark.results import RESULTS_FILE, ResultsFile, sweep_json, sweep_label
from benchmark.runner.cost import grid_cost
from benchmark.runner.executors import Executor, InProcess, cpu_cores
from benchmark.runner.lock import OutputLock
from benchmark.runner.plan import Plan
from benchmark.runner.pretrained import needs_clean_model, prepare_clean_model
from benchmark.runner.record import RunSummary
from benchmark.runner.store import ArtifactStore
from benchmark.storage import check_output_folder, remove_stale_temporaries
from benchmark.task import build_task


def run_plan(plan: Plan, out_dir: Path, device: torch.device, reporter: Reporter | None = None,
             executor: Executor | None = None) -> RunSummary:
    """Run every cell of ``plan`` not already recorded as ``ok`` in ``out_dir/results.csv``, one victim group
    after another in this process unless ``executor`` (:mod:`benchmark.runner.executors`) spreads them out."""
    reporter = reporter or Reporter.silent()
    out_dir = Path(out_dir)
    summary = RunSummary()
    check_output_folder(out_dir)
    # Refuse a foreign, other-version or other-config results file before writing anything.
    ResultsFile(out_dir / RESULTS_FILE).refuse_changed_configs(
        [(plan.preset.name, c.victim.attack, c.defense, c.victim.seed, sweep_json(dict(c.sweep)), c.row_id)
         for c in plan.cells])
    task = build_task(plan.preset)  # a missing or too small dataset fails here, before anything is written
    executor = executor if executor is not None else InProcess()
    with OutputLock(out_dir) if world().is_main else contextlib.nullcontext():
        point = f" [sweep {sweep_label(dict(plan.sweep))}]" if plan.sweep else ""
        reporter.log(f"plan: preset {plan.preset.name}{point}, {len(plan.victims)} victims, {len(plan.cells)} cells, "
                     f"device {device}, output {out_dir}")
        if not reporter.quiet:
            workers = getattr(executor, "workers", 1)
            reporter.log(grid_cost(plan, out_dir, workers, len(task.test_set.labels), device,
                                   threads=max(1, cpu_cores() // workers)).describe())
        results = ResultsFile(out_dir / RESULTS_FILE)
        barrier()  # under torchrun every rank has read the results before rank 0 writes
        if world().is_main and remove_stale_temporaries(out_dir):
            reporter.log("removed temporary files left by a killed run")
        pending = [cell for cell in plan.cells if not results.done(cell.row_id)]
        summary.cells_skipped = len(plan.cells) - len(pending)
        if summary.cells_skipped:
            reporter.log(f"{summary.cells_skipped} of {len(plan.cells)} cells already done; skipping them")
        if not pending:
            return summary
        store = ArtifactStore.of_run(out_dir)
        if needs_clean_model(plan.preset, pending, store):  # before any worker needs it: trained once, here
            summary.pretrained_trained += prepare_clean_model(plan.preset, task, store, device, reporter)
        groups = [(spec, [cell for cell in pending if cell.victim.key == spec.key]) for spec in plan.victims]
        summary.merge(executor.run(plan, [group for group in groups if group[1]], out_dir, device, reporter))
    return summary
