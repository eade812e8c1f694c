"""What a run records of each cell: its ``results.csv`` row, the run's summary, and the one path by which a cell
is recorded as ``failed``, whether it raised in a worker (:mod:`benchmark.runner.execute`) or its worker died
before writing its row (:mod:`benchmark.runner.executors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from attacks import ATTACKS
from benchmark import __version__
from benchmark.detection_metrics import DETECTION_FIELDS, DetectionMetrics
from benchmark.device import cpu_kind
from benchmark.metrics import Metrics
from benchmark.progress import Reporter
from benchmark.provenance import git_commit, origin_of
from benchmark.results import BENIGN_ATTACK, SCHEMA_VERSION, sweep_json
from benchmark.runner.lock import SharedResults
from benchmark.runner.plan import CellSpec, Plan
from defenses import DEFENSES

METRIC_FIELDS = ("ca", "ca_low", "ca_high", "ca_top5", "n_clean", "asr", "asr_low", "asr_high", "n_triggered")
TIMING_FIELDS = ("time_poison_s", "time_victim_s", "time_defense_s", "time_eval_s")
# The columns :func:`planned_columns` fills: what a row claims about its cell that planning it again can check.
PLANNED_COLUMNS = ("cell_id", "cache_key", "sweep", "preset", "attack", "defense", "seed", "target", "n_classes",
                   "poison_count", "attack_version", "attack_config", "defense_version", "defense_config",
                   "defense_recipe", "stage", "removal_rate", "model", "victim_objective", "victim_init",
                   "victim_key", "attack_package", "attack_package_version", "attack_source_sha256",
                   "defense_package", "defense_package_version", "defense_source_sha256")


@dataclass
class RunSummary:
    """What a run did, for the CLI's closing line and for tests of the cache."""

    pretrained_trained: int = 0  # clean models pretrained victims start from (at most one per preset)
    victims_trained: int = 0
    victims_loaded: int = 0
    cells_run: int = 0
    cells_reused: int = 0
    cells_skipped: int = 0
    cells_failed: int = 0
    failures: list[str] = field(default_factory=list)

    def merge(self, other: RunSummary) -> None:
        """Add a worker's summary to this one."""
        for name in ("pretrained_trained", "victims_trained", "victims_loaded", "cells_run", "cells_reused", "cells_skipped",
                     "cells_failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures += other.failures


def cell_label(cell: CellSpec) -> str:
    """How logs and failure lists name a cell: ``badnet × finetune seed 0``."""
    return f"{cell.victim.attack} × {cell.defense} seed {cell.victim.seed}"


UNRECORDED_MACHINE = {"device": "", "torch_threads": "", "cpu": ""}  # a cached cell that did not save where it ran


def ran_on(device: Any) -> dict[str, Any]:
    """The columns that say where a cell runs: its device, torch's CPU threads and the kind of CPU, all three of
    which ``verify`` needs to expect a bitwise repeat. Saved with the cell's cached metrics, so that a row rebuilt
    from the cache says where the cell ran, not where the row was rebuilt."""
    return {"device": str(device), "torch_threads": torch.get_num_threads(), "cpu": cpu_kind()}


def cell_row(plan: Plan, cell: CellSpec, metrics: Metrics | None, timing: dict[str, float], where: dict[str, Any],
             status: str, reason: str, detection: DetectionMetrics | None = None) -> dict[str, Any]:
    """The ``results.csv`` row of ``cell`` (columns in :mod:`benchmark.results`), run where :func:`ran_on` says; no
    metrics for a failed cell, detection metrics for a data-stage cell only."""
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, **planned_columns(plan, cell), "status": status, "reason": reason,
        "cleanbench_version": __version__, "git_commit": git_commit(), **where,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    row.update(metrics.as_row() if metrics is not None else dict.fromkeys(METRIC_FIELDS))
    row.update(detection.as_row() if detection is not None else dict.fromkeys(DETECTION_FIELDS))
    for key in TIMING_FIELDS:
        row[key] = timing.get(key)
    return row


def planned_columns(plan: Plan, cell: CellSpec) -> dict[str, Any]:
    """The columns of ``cell``'s row that its plan alone decides (ids and keys, preset, model, victim and defense
    settings, versions and source provenance), before anything runs: ``verify`` checks a bundle's rows against
    them (:data:`PLANNED_COLUMNS`)."""
    preset, victim = plan.preset, cell.victim
    return {
        "cell_id": cell.row_id, "cache_key": cell.key, "sweep": sweep_json(dict(cell.sweep)), "preset": preset.name,
        "attack": victim.attack, "defense": cell.defense, "seed": victim.seed,
        "target": preset.text.target, "n_classes": len(preset.text.classnames) or None,
        "poison_count": victim.poison_count,
        "attack_version": victim.attack_version, "attack_config": json.dumps(victim.attack_config, sort_keys=True),
        "defense_version": cell.defense_version, "defense_config": json.dumps(cell.defense_config, sort_keys=True),
        "defense_recipe": json.dumps(cell.recipe, sort_keys=True) if cell.recipe else "",
        "stage": cell.stage, "removal_rate": cell.removal_rate,
        "model": preset.model.name, "victim_objective": preset.victim.label,
        "victim_init": preset.victim.init, "victim_key": victim.key,
        **origin_columns(victim.attack, cell.defense),
    }


def origin_columns(attack: str, defense: str) -> dict[str, str]:
    """The provenance columns of a row: package, version and source hash of its attack and its defense (empty for
    the benign control's attack, which is no code)."""
    columns = origin_of(DEFENSES.get(defense)).columns("defense")
    if attack == BENIGN_ATTACK:
        return {**dict.fromkeys(("attack_package", "attack_package_version", "attack_source_sha256"), ""), **columns}
    return {**origin_of(ATTACKS.get(attack)).columns("attack"), **columns}


def record_failed(plan: Plan, cell: CellSpec, reason: str, results: SharedResults, summary: RunSummary,
                  reporter: Reporter, *, device: Any = "cpu", note: str = "") -> None:
    """Record ``cell`` as ``failed`` for ``reason`` (its first 300 characters in the row) and count and log it;
    ``note`` ends the log line (where its traceback was saved). A rerun redoes the cell."""
    results.upsert(cell_row(plan, cell, None, {}, ran_on(device), "failed", reason[:300]))
    summary.cells_failed += 1
    summary.failures.append(f"{cell_label(cell)}: {reason}")
    reporter.log(f"cell {cell_label(cell)} FAILED: {reason}{note}")
