"""Running one victim group (a victim and its pending cells): the victim trained (or loaded) once, every cell
defended, evaluated and recorded. This is the unit of work an executor (:mod:`benchmark.runner.executors`)
hands to this process, a local worker or a Slurm job; :func:`benchmark.runner.grid.run_plan` runs a whole plan.

A cell's row is written the moment it finishes; a failing cell becomes a ``failed`` row (its traceback saved
in its folder) and the group goes on. Cells whose metrics a crashed run left in the cache get their row from
the cache, so a rerun redoes only what a crash interrupted. Under torchrun every rank runs the same groups in
the same order, so the training loops meet; only rank 0 writes files and evaluates.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attacks import ATTACKS
from benchmark.checkpoints import read_state_dict, save_state_dict
from benchmark.data.loader import Pairs
from benchmark.detection_metrics import DetectionMetrics
from benchmark.distributed import world
from benchmark.faults import failpoint
from benchmark.metrics import Metrics, classifier_for, evaluate_with_predictions
from benchmark.models import create_model, tokenizer_for
from benchmark.poisoning import poison_split
from benchmark.progress import Reporter
from benchmark.results import BENIGN_ATTACK, RESULTS_FILE
from benchmark.runner.lock import SharedResults
from benchmark.runner.plan import CellSpec, Plan, VictimSpec, attack_context
from benchmark.runner.pretrained import initial_model
from benchmark.runner.record import UNRECORDED_MACHINE, RunSummary, cell_label, cell_row, ran_on, record_failed
from benchmark.runner.stages import CellInputs
from benchmark.runner.store import ArtifactStore
from benchmark.stages import STAGES
from benchmark.seeding import derive_seed
from benchmark.task import Task, build_task
from benchmark.victim_training import train_victim
from defenses import DEFENSES
from defenses.base import DefenseContext

PARTS = ("all", "victim", "cells")  # which part of a group a worker runs (:func:`run_group`)


def run_group(plan: Plan, spec: VictimSpec, cells: list[CellSpec], out_dir: Path, device: torch.device,
              reporter: Reporter, advance: Callable[..., Any] | None = None, *, part: str = "all") -> RunSummary:
    """One victim and its pending cells: the unit of work an executor hands to a worker. Rows go into the
    shared ``results.csv`` as cells finish, under a short lock, so workers may run side by side.

    ``part`` lets a pool of workers split a group so that its cells need not wait for one worker:
    ``"victim"`` trains (or finds) the victim and settles the cells that do not need it (metrics cached by a
    crashed run; all of them as failed if the victim cannot be trained), ``"cells"`` runs cells whose victim
    the cache already holds, ``"all"`` does both in turn.
    """
    if part not in PARTS:
        raise ValueError(f"part {part!r}: choose all, victim or cells")
    group = GroupRun(plan, build_task(plan.preset), ArtifactStore.of_run(out_dir),
                     SharedResults(Path(out_dir) / RESULTS_FILE), device, reporter,
                     advance or (lambda *args, **kwargs: None))
    group.run(spec, cells, part)
    return group.summary


@dataclass
class _Victim:
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    attack: Any  # the Attack instance (None for the benign control)


@dataclass
class GroupRun:
    """A victim group being run: what each of its steps needs (the plan, its task, the cache, the shared results,
    the device, the reporter, the progress callback) and the summary they add to."""

    plan: Plan
    task: Task
    store: ArtifactStore
    results: SharedResults
    device: torch.device
    reporter: Reporter
    advance: Callable[..., Any]
    summary: RunSummary = field(default_factory=RunSummary)

    def run(self, spec: VictimSpec, cells: list[CellSpec], part: str) -> None:
        """The victim ``spec`` and those of ``cells`` that ``part`` covers (see :func:`run_group`)."""
        cached = {cell.key: self.store.cell_metrics(cell.key) for cell in cells}
        for cell in cells:  # metrics that survived a crash which came before the row was written
            if cached[cell.key] is not None:
                record = cached[cell.key]
                detection = DetectionMetrics.from_json(record["detection"]) if "detection" in record else None
                where = record.get("ran_on", UNRECORDED_MACHINE)  # caches written before it was saved
                self.results.upsert(cell_row(self.plan, cell, Metrics.from_json(record["metrics"]), record["timing"],
                                             where, "ok", "", detection))
                self.summary.cells_reused += 1
                self.advance(1)
        cells = [cell for cell in cells if cached[cell.key] is None]
        if not cells:
            return
        try:
            # a "cells" part reads the victim its "victim" part already trained (or reused) and counted
            victim = self.victim(spec, counted=part != "cells")
        except Exception as error:  # noqa: BLE001 - recorded per cell, the grid goes on
            for cell in cells:
                self.fail(cell, error, step="victim")
                self.advance(1)
            return
        if part == "victim":
            return
        for cell in cells:
            try:
                self.cell(cell, victim)
                self.summary.cells_run += 1
            except Exception as error:  # noqa: BLE001
                self.fail(cell, error, step="defense")
            self.advance(1)

    def victim(self, spec: VictimSpec, counted: bool = True) -> _Victim:
        """The victim ``spec`` from the cache, or poisoned, trained and saved; ``counted`` adds it to the summary."""
        preset, task, store, device, reporter = self.plan.preset, self.task, self.store, self.device, self.reporter
        attack = None
        if spec.attack != BENIGN_ATTACK:
            context = attack_context(preset, task, spec.seed, device, store.attacks_dir)
            attack = ATTACKS.get(spec.attack).from_settings(spec.attack_settings, context=context)
        meta = store.victim_meta(spec.key)
        if meta is not None:
            if counted:
                self.summary.victims_loaded += 1
                reporter.log(f"victim {spec.attack} seed {spec.seed}: reused from cache ({spec.key})")
            return _Victim(read_state_dict(store.victim_dir(spec.key) / "model.safetensors"), meta, attack)

        start = time.perf_counter()
        pairs = self.poisoned_pairs(spec, attack)
        time_poison = time.perf_counter() - start

        model = initial_model(preset, spec.seed, store)
        model.to(device)
        stats = train_victim(model, pairs, preset.victim, tokenizer_for(preset.model.name), spec.seed, device,
                             reporter=reporter, description=f"victim {spec.attack} s{spec.seed}")
        meta = {"attack": spec.attack, "seed": spec.seed, "poison_count": spec.poison_count,
                "objective": preset.victim.label, "init": preset.victim.init,
                "time_poison_s": time_poison, "time_victim_s": stats.seconds, "final_loss": stats.final_loss,
                "images_per_second": stats.images_per_second, "device": str(device), "processes": world().size}
        if world().is_main:
            save_state_dict(model, store.victim_dir(spec.key) / "model.safetensors")
            failpoint("checkpoint-saved")  # checkpoint in place, its meta.json (with the checksum) not yet written
            store.save_victim_meta(spec.key, meta)
        self.summary.victims_trained += 1
        reporter.log(f"victim {spec.attack} seed {spec.seed}: trained in {stats.seconds:.0f}s "
                     f"({stats.images_per_second:.0f} img/s, final loss {stats.final_loss:.3f})")
        return _Victim({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, meta, attack)

    def poisoned_pairs(self, spec: VictimSpec, attack: Any) -> Pairs:
        """The training pairs of ``spec`` as its victim gets them: poisoned by ``attack`` (none for the benign
        control) with the seed's generator, so every call returns the same pairs. The manifest is saved the
        first time; a later call that poisons other pairs than it lists is refused (the attack is not
        reproducible, and the victim in the cache was not trained on these pairs)."""
        pairs = self.task.train_pairs
        if attack is None:
            return pairs
        generator = torch.Generator().manual_seed(derive_seed(spec.seed, "poison"))
        pairs, manifest = poison_split(attack, pairs, attack.context.target, spec.poison_count, generator,
                                       self.plan.preset.data.memory_gb)
        saved = self.store.manifest(spec.key)
        if saved is not None and saved.get("indices") != manifest.indices:
            raise RuntimeError(f"attack {spec.attack} seed {spec.seed} poisoned other pairs than its cached victim's "
                               "manifest lists: the attack is not reproducible from its seed")
        if saved is None and world().is_main:
            self.store.save_manifest(spec.key, manifest.to_json())
        return pairs

    def cell(self, cell: CellSpec, victim: _Victim) -> None:
        """Defend ``victim`` with ``cell``'s defense, evaluate it and record the cell (metrics, predictions, row)."""
        preset, task, device = self.plan.preset, self.task, self.device
        tokenizer = tokenizer_for(preset.model.name)
        model = create_model(preset.model.name)
        model.load_state_dict(victim.state)  # copies the values: the shared victim state is never modified
        model.to(device).eval()
        defense = DEFENSES.get(cell.defense).from_settings(cell.defense_settings)
        seed = derive_seed(cell.victim.seed, "defense", cell.defense)
        torch.manual_seed(seed)
        context = DefenseContext(device, seed, cell.train_recipe, tokenizer, task.val_set, self.reporter)
        inputs = CellInputs(preset, self.store, device, self.reporter, model, task.clean_pairs,
                            lambda: self.poisoned_pairs(cell.victim, victim.attack))
        outcome = STAGES[cell.stage].runner().outcome(cell, defense, inputs, context)
        self.summary.victims_trained += outcome.victims_trained
        defended, time_defense, detection = outcome.model, outcome.time_defense_s, outcome.detection
        if not world().is_main:  # under torchrun the other ranks only help train; rank 0 evaluates and records
            return

        start = time.perf_counter()
        classifier = classifier_for(defended, tokenizer, task.test_set, device)
        trigger = victim.attack.apply if victim.attack is not None else None
        metrics, predictions = evaluate_with_predictions(classifier, task.test_set, target=task.target_index,
                                                         trigger=trigger,
                                                         seed=derive_seed(cell.victim.seed, "eval-trigger"),
                                                         device=device)
        timing = {"time_poison_s": victim.meta["time_poison_s"], "time_victim_s": victim.meta["time_victim_s"],
                  "time_defense_s": time_defense, "time_eval_s": time.perf_counter() - start}
        self.store.save_cell_predictions(cell.key, predictions)
        record = {"metrics": metrics.to_json(), "timing": timing, "ran_on": ran_on(device)}
        if detection is not None:
            record["detection"] = detection.as_row()
        self.store.save_cell_metrics(cell.key, record)
        self.results.upsert(cell_row(self.plan, cell, metrics, timing, record["ran_on"], "ok", "", detection))
        asr = "" if metrics.asr is None else f", ASR {metrics.asr.value:.3f}"
        self.reporter.log(f"cell {cell_label(cell)}: CA {metrics.ca.value:.3f}{asr} (defense {time_defense:.0f}s)")

    def fail(self, cell: CellSpec, error: BaseException, step: str) -> None:
        """Record ``cell`` as failed at ``step`` with ``error``'s traceback saved in its folder (rank 0 only)."""
        reason = f"{step}: {type(error).__name__}: {error}".splitlines()[0][:300]
        if not world().is_main:
            return
        path = self.store.save_cell_error(cell.key, "".join(traceback.format_exception(error)))
        record_failed(self.plan, cell, reason, self.results, self.summary, self.reporter, device=self.device,
                      note=f" (traceback in {path})")
