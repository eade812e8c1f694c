"""Executing a plan: each victim trained (or loaded) once, every pending cell defended, evaluated and recorded.

A cell's row is written the moment it finishes; a failing cell becomes a ``failed`` row (its traceback saved
in its folder) and the grid goes on. Reruns skip cells whose ``ok`` row exists, reuse cached victims and cell
metrics, and so redo only what a crash interrupted.

Victim groups (a victim and its cells) run where the executor puts them (:mod:`benchmark.runner.executors`:
this process, local workers, Slurm jobs). Under torchrun every rank runs the same groups in the same order, so
the training loops meet; only rank 0 writes files and evaluates.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks import ATTACKS
from attacks.base import AttackContext, PoisonTarget
from benchmark import __version__
from benchmark.checkpoints import read_state_dict, save_state_dict
from benchmark.data.batches import Normalizer, pair_batches
from benchmark.distributed import barrier, world
from benchmark.errors import UserError
from benchmark.faults import failpoint
from benchmark.metrics import Metrics, classifier_for, evaluate_with_predictions
from benchmark.models import create_model, model_from_spec, tokenizer_for
from benchmark.poisoning import poison_split
from benchmark.progress import Reporter
from benchmark.provenance import git_commit
from benchmark.results import BENIGN_ATTACK, RESULTS_FILE, SCHEMA_VERSION, ResultsFile
from benchmark.runner.lock import OutputLock, SharedResults
from benchmark.runner.plan import CellSpec, Plan, VictimSpec
from benchmark.runner.store import ArtifactStore
from benchmark.seeding import derive_seed
from benchmark.storage import remove_stale_temporaries
from benchmark.task import Task, build_task
from benchmark.training import train
from defenses import DEFENSES
from defenses.base import DefenseContext


@dataclass
class RunSummary:
    """What a run did, for the CLI's closing line and for tests of the cache."""

    victims_trained: int = 0
    victims_loaded: int = 0
    cells_run: int = 0
    cells_reused: int = 0
    cells_skipped: int = 0
    cells_failed: int = 0
    failures: list[str] = field(default_factory=list)

    def merge(self, other: "RunSummary") -> None:
        """Add a worker's summary to this one."""
        for name in ("victims_trained", "victims_loaded", "cells_run", "cells_reused", "cells_skipped",
                     "cells_failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures += other.failures


@dataclass
class _Victim:
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    attack: Any  # the Attack instance (None for the benign control)


def run_plan(plan: Plan, out_dir: Path, device: torch.device, reporter: Reporter | None = None,
             executor=None) -> RunSummary:
    """Run every cell of ``plan`` not already recorded as ``ok`` in ``out_dir/results.csv``, one victim group
    after another in this process unless ``executor`` (:mod:`benchmark.runner.executors`) spreads them out."""
    reporter = reporter or Reporter.silent()
    out_dir = Path(out_dir)
    summary = RunSummary()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder (it is created if missing)")
    # Refuse a foreign, other-version or other-config results file before writing anything.
    ResultsFile(out_dir / RESULTS_FILE).refuse_changed_configs(
        [(plan.preset.name, c.victim.attack, c.defense, c.victim.seed, c.key) for c in plan.cells])
    build_task(plan.preset)  # a missing or too small dataset fails here, before anything is written
    with OutputLock(out_dir) if world().is_main else contextlib.nullcontext():
        reporter.log(f"plan: preset {plan.preset.name}, {len(plan.victims)} victims, {len(plan.cells)} cells, "
                     f"device {device}, output {out_dir}")
        results = ResultsFile(out_dir / RESULTS_FILE)
        barrier()  # under torchrun every rank has read the results before rank 0 writes
        if world().is_main and remove_stale_temporaries(out_dir):
            reporter.log("removed temporary files left by a killed run")
        pending = [cell for cell in plan.cells if not results.done(cell.key)]
        summary.cells_skipped = len(plan.cells) - len(pending)
        if summary.cells_skipped:
            reporter.log(f"{summary.cells_skipped} of {len(plan.cells)} cells already done; skipping them")
        if not pending:
            return summary
        groups = [(spec, [cell for cell in pending if cell.victim.key == spec.key]) for spec in plan.victims]
        if executor is None:
            from benchmark.runner.executors import InProcess

            executor = InProcess()
        summary.merge(executor.run(plan, [group for group in groups if group[1]], out_dir, device, reporter))
    return summary


def run_group(plan: Plan, spec: VictimSpec, cells: list[CellSpec], out_dir: Path, device: torch.device,
              reporter: Reporter, advance=None, *, stage: str = "all") -> RunSummary:
    """One victim and its pending cells: the unit of work an executor hands to a worker. Rows go into the
    shared ``results.csv`` as cells finish, under a short lock, so workers may run side by side.

    ``stage`` lets a pool of workers split a group so that its cells need not wait for one worker:
    ``"victim"`` trains (or finds) the victim and settles the cells that do not need it (metrics cached by a
    crashed run; all of them as failed if the victim cannot be trained), ``"cells"`` runs cells whose victim
    the cache already holds, ``"all"`` does both in turn.
    """
    if stage not in ("all", "victim", "cells"):
        raise ValueError(f"stage {stage!r}: choose all, victim or cells")
    summary = RunSummary()
    store, results = ArtifactStore(Path(out_dir) / "cache"), SharedResults(Path(out_dir) / RESULTS_FILE)
    _run_victim(plan, build_task(plan.preset), spec, cells, store, results, device, reporter, summary,
                advance or (lambda *args, **kwargs: None), stage)
    return summary


def record_lost_cells(plan: Plan, cells: list[CellSpec], reason: str, out_dir: Path, summary: RunSummary,
                      reporter: Reporter) -> None:
    """Record as ``failed`` the cells of a worker that died before writing their rows (a rerun redoes them)."""
    written = ResultsFile(Path(out_dir) / RESULTS_FILE).rows
    for cell in cells:
        if cell.key not in written:
            SharedResults(Path(out_dir) / RESULTS_FILE).upsert(_row(plan, cell, None, {}, torch.device("cpu"),
                                                                     "failed", reason[:300]))
            summary.cells_failed += 1
            summary.failures.append(f"{cell.victim.attack} × {cell.defense} seed {cell.victim.seed}: {reason}")
            reporter.log(f"cell {cell.victim.attack} × {cell.defense} seed {cell.victim.seed} FAILED: {reason}")


def _run_victim(plan, task, spec, cells, store, results, device, reporter, summary, advance, stage: str) -> None:
    cached = {cell.key: store.cell_metrics(cell.key) for cell in cells}
    for cell in cells:  # metrics that survived a crash which came before the row was written
        if cached[cell.key] is not None:
            record = cached[cell.key]
            results.upsert(_row(plan, cell, Metrics.from_json(record["metrics"]), record["timing"], device, "ok", ""))
            summary.cells_reused += 1
            advance(1)
    cells = [cell for cell in cells if cached[cell.key] is None]
    if not cells:
        return
    try:
        # a "cells" stage reads the victim its "victim" stage already trained (or reused) and counted
        victim = _ensure_victim(plan, task, spec, store, device, reporter, summary, counted=stage != "cells")
    except Exception as error:  # noqa: BLE001 - recorded per cell, the grid goes on
        for cell in cells:
            _record_failure(plan, cell, error, store, results, device, reporter, summary, stage="victim")
            advance(1)
        return
    if stage == "victim":
        return
    for cell in cells:
        try:
            _run_cell(plan, task, cell, victim, store, results, device, reporter)
            summary.cells_run += 1
        except Exception as error:  # noqa: BLE001
            _record_failure(plan, cell, error, store, results, device, reporter, summary, stage="defense")
        advance(1)


def _ensure_victim(plan: Plan, task: Task, spec: VictimSpec, store: ArtifactStore, device: torch.device,
                   reporter: Reporter, summary: RunSummary, counted: bool = True) -> _Victim:
    preset = plan.preset
    attack = None
    if spec.attack != BENIGN_ATTACK:
        context = AttackContext(preset.data.image_size, spec.seed, device, clean_pairs=task.clean_pairs,
                                model_name=preset.model.name)
        attack = ATTACKS.get(spec.attack).from_settings(spec.attack_settings, context=context)
    meta = store.victim_meta(spec.key)
    if meta is not None:
        if counted:
            summary.victims_loaded += 1
            reporter.log(f"victim {spec.attack} seed {spec.seed}: reused from cache ({spec.key})")
        return _Victim(read_state_dict(store.victim_dir(spec.key) / "model.safetensors"), meta, attack)

    start = time.perf_counter()
    pairs = task.train_pairs
    if attack is not None:
        target = PoisonTarget(task.target_index, preset.text.target,
                              lambda generator: task.captions.caption(task.target_index, generator),
                              synonyms=tuple(preset.text.synonyms[task.target_index]))
        generator = torch.Generator().manual_seed(derive_seed(spec.seed, "poison"))
        pairs, manifest = poison_split(attack, pairs, target, spec.poison_count, generator, preset.data.memory_gb)
        if world().is_main:
            store.save_manifest(spec.key, manifest.to_json())
    time_poison = time.perf_counter() - start

    model = model_from_spec(preset.model, seed=derive_seed(spec.seed, "init"))
    model.to(device)
    tokenizer = tokenizer_for(preset.model.name)
    generator = torch.Generator().manual_seed(derive_seed(spec.seed, "victim-batches"))
    batches = pair_batches(pairs, tokenizer, Normalizer(model), preset.victim.batch_size, generator, device)
    stats = train(model, batches, preset.victim, reporter=reporter, description=f"victim {spec.attack} s{spec.seed}")
    meta = {"attack": spec.attack, "seed": spec.seed, "poison_count": spec.poison_count,
            "time_poison_s": time_poison, "time_victim_s": stats.seconds, "final_loss": stats.final_loss,
            "images_per_second": stats.images_per_second, "device": str(device), "processes": world().size}
    if world().is_main:
        save_state_dict(model, store.victim_dir(spec.key) / "model.safetensors")
        failpoint("checkpoint-saved")  # checkpoint in place, its meta.json (with the checksum) not yet written
        store.save_victim_meta(spec.key, meta)
    summary.victims_trained += 1
    reporter.log(f"victim {spec.attack} seed {spec.seed}: trained in {stats.seconds:.0f}s "
                 f"({stats.images_per_second:.0f} img/s, final loss {stats.final_loss:.3f})")
    return _Victim({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, meta, attack)


def _run_cell(plan: Plan, task: Task, cell: CellSpec, victim: _Victim, store: ArtifactStore, results: SharedResults,
              device: torch.device, reporter: Reporter) -> None:
    preset = plan.preset
    tokenizer = tokenizer_for(preset.model.name)
    model = create_model(preset.model.name)
    model.load_state_dict(victim.state)  # copies the values: the shared victim state is never modified
    model.to(device).eval()
    defense = DEFENSES.get(cell.defense).from_settings(cell.defense_settings)
    seed = derive_seed(cell.victim.seed, "defense", cell.defense)
    torch.manual_seed(seed)
    context = DefenseContext(device, seed, cell.train_recipe, tokenizer, task.val_set, reporter)
    start = time.perf_counter()
    defended: nn.Module = defense.apply(model, task.clean_pairs, context)
    time_defense = time.perf_counter() - start
    if not world().is_main:  # under torchrun the other ranks only help train; rank 0 evaluates and records
        return

    start = time.perf_counter()
    classifier = classifier_for(defended, tokenizer, task.test_set, device)
    trigger = victim.attack.apply if victim.attack is not None else None
    metrics, predictions = evaluate_with_predictions(classifier, task.test_set, target=task.target_index,
                                                     trigger=trigger, seed=derive_seed(cell.victim.seed, "eval-trigger"),
                                                     device=device)
    timing = {"time_poison_s": victim.meta["time_poison_s"], "time_victim_s": victim.meta["time_victim_s"],
              "time_defense_s": time_defense, "time_eval_s": time.perf_counter() - start}
    store.save_cell_predictions(cell.key, predictions)
    store.save_cell_metrics(cell.key, {"metrics": metrics.to_json(), "timing": timing})
    results.upsert(_row(plan, cell, metrics, timing, device, "ok", ""))
    asr = "" if metrics.asr is None else f", ASR {metrics.asr.value:.3f}"
    reporter.log(f"cell {cell.victim.attack} × {cell.defense} seed {cell.victim.seed}: "
                 f"CA {metrics.ca.value:.3f}{asr} (defense {time_defense:.0f}s)")


def _record_failure(plan, cell, error, store, results, device, reporter, summary, stage: str) -> None:
    reason = f"{stage}: {type(error).__name__}: {error}".splitlines()[0][:300]
    if not world().is_main:
        return
    path = store.save_cell_error(cell.key, "".join(traceback.format_exception(error)))
    results.upsert(_row(plan, cell, None, {}, device, "failed", reason))
    summary.cells_failed += 1
    summary.failures.append(f"{cell.victim.attack} × {cell.defense} seed {cell.victim.seed}: {reason}")
    reporter.log(f"cell {cell.victim.attack} × {cell.defense} seed {cell.victim.seed} FAILED: {reason} "
                 f"(traceback in {path})")


def _row(plan: Plan, cell: CellSpec, metrics: Metrics | None, timing: dict[str, float], device: torch.device,
         status: str, reason: str) -> dict[str, Any]:
    preset, victim = plan.preset, cell.victim
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "cell_id": cell.key, "preset": preset.name, "attack": victim.attack,
        "defense": cell.defense, "seed": victim.seed, "status": status, "reason": reason,
        "target": preset.text.target, "n_classes": len(preset.text.classnames) or None,
        "poison_count": victim.poison_count,
        "attack_version": victim.attack_version, "attack_config": json.dumps(victim.attack_config, sort_keys=True),
        "defense_version": cell.defense_version, "defense_config": json.dumps(cell.defense_config, sort_keys=True),
        "defense_recipe": json.dumps(cell.recipe, sort_keys=True) if cell.recipe else "",
        "model": preset.model.name, "victim_key": victim.key, "cleanbench_version": __version__,
        "git_commit": git_commit(), "device": str(device),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    empty = dict.fromkeys(["ca", "ca_low", "ca_high", "ca_top5", "n_clean", "asr", "asr_low", "asr_high",
                           "n_triggered"])
    row.update(metrics.as_row() if metrics is not None else empty)
    for key in ("time_poison_s", "time_victim_s", "time_defense_s", "time_eval_s"):
        row[key] = timing.get(key)
    return row
