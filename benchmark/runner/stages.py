"""How a cell of each stage runs: its cache keys, the model it evaluates, what it costs and how ``validate``
describes it. :data:`benchmark.stages.STAGES` names one of these classes for each stage.

* :class:`DefendedVictim` (post-training): the defense gets a copy of the trained victim and the data its stage
  receives and returns the defended model; nothing is cached but the cell's metrics.
* :class:`TrainedInstead` (training): the defense gets a model initialised exactly as the victim was
  (:func:`benchmark.runner.pretrained.initial_model`: the same seed, or the same pretrained model), the poisoned
  training pairs as the victim got them, and the victim's recipe.
* :class:`RetrainedWithout` (data): the detector gets the no-defense victim of the same attack and seed and the
  poisoned pairs; the runner removes the highest-scored ``removal_rate`` of the pairs, retrains the victim from
  the same initialisation with its own objective and recipe on the rest, and scores the detection against the
  poison manifest (which the detector never sees). When the budget removes nothing (``removal_rate`` 0: detection
  only, as Huang et al. evaluate), the model is the no-defense victim itself, since retraining on every pair would
  repeat its run: the cell costs the scoring.

A training- or data-stage model, its meta (training time, and for a detector what was removed) and a detector's
scores are saved under ``victims/<trained_key>/`` like a victim, complete only once the meta exists, so a rerun
after a kill reuses them and does not train again. The defense's time is everything it cost: scoring and
retraining.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from benchmark.checkpoints import read_state_dict, save_state_dict
from benchmark.config import config_dict
from benchmark.data.loader import Pairs
from benchmark.data.pairs import PairSet
from benchmark.data.source_splits import streamed_splits
from benchmark.detection_metrics import DetectionMetrics, detection_metrics, removal_count, removed_indices
from benchmark.distributed import world
from benchmark.models import model_from_spec, tokenizer_for
from benchmark.presets import Preset
from benchmark.progress import Reporter
from benchmark.runner.cost import EVAL_PASS_COST, victim_passes
from benchmark.runner.plan import ENGINE_VERSION, CellSpec, VictimSpec, later_splits
from benchmark.runner.pretrained import initial_model
from benchmark.runner.store import ArtifactStore
from benchmark.stages import Stage
from benchmark.storage import atomic_path, content_key
from benchmark.victim_training import train_victim
from defenses.base import Defense, DefenseContext

SCORES_FILE = "scores.safetensors"


@dataclass
class CellInputs:
    """What the runner hands a stage to produce one cell's model: the victim (a copy, in eval mode, on the
    device) and the data, with the cache and the reporter. The poisoned training pairs are computed on demand:
    a cell whose model is cached needs none."""

    preset: Preset
    store: ArtifactStore
    device: torch.device
    reporter: Reporter
    victim_model: nn.Module
    clean_pairs: Pairs
    training_pairs: Callable[[], Pairs]


@dataclass
class StageOutcome:
    """A cell's model, the defense's time in seconds (also when its model came from the cache), its detection
    metrics (stages that score pairs) and how many victims it trained (0 or 1)."""

    model: nn.Module
    time_defense_s: float
    detection: DetectionMetrics | None = None
    victims_trained: int = 0


class StageRuns:
    """How the cells of one stage run. Subclasses say how a cell is keyed, gets its model, costs and is
    described; the stage's facts (what it receives, returns and trains with) come from its table entry."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def keys(self, preset: Preset, victim: VictimSpec, defense: str, version: str,
             config: dict[str, Any]) -> tuple[str, str | None, float | None]:
        """The cell's cache key, the key of the model it trains (None: none cached) and its removal rate."""
        raise NotImplementedError

    def trains_victim(self, cell: CellSpec, train_pairs: int) -> bool:
        """Whether the cell trains a victim-sized model of its own (counted with the victims)."""
        return False

    def outcome(self, cell: CellSpec, defense: Defense, inputs: CellInputs, context: DefenseContext) -> StageOutcome:
        """The cell's model: ``defense`` run at this stage with ``context``."""
        raise NotImplementedError

    def passes(self, preset: Preset, cell: CellSpec, defense: Defense) -> float:
        """The training passes the defense of ``cell`` costs (its evaluation is counted by the caller)."""
        raise NotImplementedError

    def describe(self, preset: Preset, name: str, defense: Defense, cells: int) -> tuple[str, int]:
        """``validate``'s line for the defense ``name`` over ``cells`` cells, and its optimizer steps per cell."""
        raise NotImplementedError

    def received(self, inputs: CellInputs) -> Pairs:
        """The data the stage's defense receives."""
        return inputs.clean_pairs if self.stage.receives == "clean" else inputs.training_pairs()

    def call(self, defense: Defense, model: nn.Module, data: Pairs, context: DefenseContext) -> Any:
        """The stage's method of ``defense`` (its table entry's ``method``)."""
        return getattr(defense, self.stage.method)(model, data, context)


class DefendedVictim(StageRuns):
    """The defense returns the defended victim; the model is not cached (a rerun repeats the defense)."""

    def keys(self, preset: Preset, victim: VictimSpec, defense: str, version: str,
             config: dict[str, Any]) -> tuple[str, str | None, float | None]:
        # the key of a cell as it was before stages existed
        streamed = ("clean streamed",) if "clean" in streamed_splits(preset.data) else ()
        key = content_key("cell", ENGINE_VERSION, victim.key, defense, version, config, config_dict(preset.finetune),
                          preset.text.eval_templates, preset.data.test_images, *streamed, *later_splits(preset.data))
        return key, None, None

    def outcome(self, cell: CellSpec, defense: Defense, inputs: CellInputs, context: DefenseContext) -> StageOutcome:
        start = time.perf_counter()
        defended = self.call(defense, inputs.victim_model, self.received(inputs), context)
        return StageOutcome(_checked_model(cell, self.stage, defended), time.perf_counter() - start)

    def passes(self, preset: Preset, cell: CellSpec, defense: Defense) -> float:
        return preset.data.clean_pairs * cell.train_recipe.epochs * defense.passes_per_pair()

    def describe(self, preset: Preset, name: str, defense: Defense, cells: int) -> tuple[str, int]:
        epochs = getattr(defense.config, "epochs", None) or preset.finetune.epochs
        batch = getattr(defense.config, "batch_size", None) or preset.finetune.batch_size
        steps = preset.data.clean_pairs // batch * epochs
        return (f"defense {name}: {preset.data.clean_pairs:,} clean pairs / batch {batch} × {epochs} epochs "
                f"≈ {steps:,} steps per cell × {cells} cells"), steps


class CachedModel(StageRuns):
    """A stage whose cell trains a model of its own, cached under the cell's ``trained_key`` like a victim."""

    def keys(self, preset: Preset, victim: VictimSpec, defense: str, version: str,
             config: dict[str, Any]) -> tuple[str, str | None, float | None]:
        removal_rate = self.removal_rate(preset)
        trained_key = content_key("stage-victim", ENGINE_VERSION, victim.key, defense, version, config,
                                  self.stage.name, removal_rate, *later_splits(preset.data))
        key = content_key("cell", ENGINE_VERSION, trained_key, preset.text.eval_templates, preset.data.test_images)
        return key, trained_key, removal_rate

    def removal_rate(self, preset: Preset) -> float | None:
        """The share of training pairs the stage removes (None: it removes none)."""
        return None

    def outcome(self, cell: CellSpec, defense: Defense, inputs: CellInputs, context: DefenseContext) -> StageOutcome:
        store, folder = inputs.store, inputs.store.victim_dir(cell.trained_key)
        meta = store.victim_meta(cell.trained_key)
        trained = 0
        if meta is None:
            meta, trained = self.train(cell, defense, inputs, context)
        else:
            inputs.reporter.log(f"defense {cell.defense} on {cell.victim.attack} seed {cell.victim.seed}: model "
                                f"reused from cache ({cell.trained_key})")
        model = model_from_spec(inputs.preset.model)
        model.load_state_dict(read_state_dict(folder / "model.safetensors"))
        model.to(inputs.device).eval()
        return StageOutcome(model, float(meta["time_defense_s"]), self.detection(cell, store, meta), trained)

    def train(self, cell: CellSpec, defense: Defense, inputs: CellInputs,
              context: DefenseContext) -> tuple[dict[str, Any], int]:
        """Make the cell's model, save it with its meta; return the meta and the victims trained (0 or 1)."""
        spec, preset = cell.victim, inputs.preset
        start = time.perf_counter()
        pairs = inputs.training_pairs()
        trains = self.trains_victim(cell, len(pairs))
        model = initial_model(preset, spec.seed, inputs.store)
        model.to(inputs.device)
        meta: dict[str, Any] = {"attack": spec.attack, "seed": spec.seed, "defense": cell.defense,
                                "stage": cell.stage, "objective": preset.victim.label, "init": preset.victim.init,
                                "device": str(inputs.device)}
        model = self.make(cell, defense, model, pairs, inputs, context, meta)
        meta["time_defense_s"] = time.perf_counter() - start
        if world().is_main:
            save_state_dict(model, inputs.store.victim_dir(cell.trained_key) / "model.safetensors")
            inputs.store.save_victim_meta(cell.trained_key, meta)
        return meta, int(trains)

    def make(self, cell: CellSpec, defense: Defense, initial: nn.Module, pairs: Pairs, inputs: CellInputs,
             context: DefenseContext, meta: dict[str, Any]) -> nn.Module:
        """The cell's model from the ``initial`` one (initialised as the victim was); what to record goes in
        ``meta``."""
        raise NotImplementedError

    def detection(self, cell: CellSpec, store: ArtifactStore, meta: dict[str, Any]) -> DetectionMetrics | None:
        """The cell's detection metrics (None: the stage detects nothing)."""
        return None


class TrainedInstead(CachedModel):
    """The defense trains the victim itself, from the victim's initialisation, on the poisoned training pairs."""

    def trains_victim(self, cell: CellSpec, train_pairs: int) -> bool:
        return True

    def make(self, cell: CellSpec, defense: Defense, initial: nn.Module, pairs: Pairs, inputs: CellInputs,
             context: DefenseContext, meta: dict[str, Any]) -> nn.Module:
        torch.manual_seed(context.seed)
        return _checked_model(cell, self.stage, self.call(defense, initial, pairs, context))

    def passes(self, preset: Preset, cell: CellSpec, defense: Defense) -> float:
        return preset.data.train_pairs * preset.victim.epochs * defense.passes_per_pair()

    def describe(self, preset: Preset, name: str, defense: Defense, cells: int) -> tuple[str, int]:
        return _retraining_line(preset, name, self.stage, "trains the victim", preset.data.train_pairs, cells)


class RetrainedWithout(CachedModel):
    """The detector scores the training pairs; the victim is retrained without the most suspicious ones."""

    def removal_rate(self, preset: Preset) -> float | None:
        return preset.detection.removal_rate

    def trains_victim(self, cell: CellSpec, train_pairs: int) -> bool:
        return removal_count(cell.removal_rate or 0.0, train_pairs) > 0

    def make(self, cell: CellSpec, defense: Defense, initial: nn.Module, pairs: Pairs, inputs: CellInputs,
             context: DefenseContext, meta: dict[str, Any]) -> nn.Module:
        spec, preset = cell.victim, inputs.preset
        scores = self.scores(cell, defense, inputs.victim_model, pairs, context)
        removed = removed_indices(scores, cell.removal_rate)
        meta["removed"] = removed.tolist()
        if self.trains_victim(cell, len(pairs)):
            keep = torch.ones(len(pairs), dtype=torch.bool)
            keep[removed] = False
            stats = train_victim(initial, pairs.subset(torch.nonzero(keep).squeeze(1)), preset.victim,
                                 tokenizer_for(preset.model.name), spec.seed, inputs.device, reporter=inputs.reporter,
                                 description=f"victim {spec.attack} s{spec.seed} without {cell.defense}'s top "
                                             f"{cell.removal_rate:.0%}")
            meta["images_per_second"] = stats.images_per_second
        else:  # a detector removing nothing keeps the victim (module docstring)
            initial.load_state_dict(inputs.victim_model.state_dict())
        if world().is_main:
            with atomic_path(inputs.store.victim_dir(cell.trained_key) / SCORES_FILE) as tmp:
                save_file({"scores": scores.contiguous()}, str(tmp))
        return initial

    def scores(self, cell: CellSpec, defense: Defense, victim_model: nn.Module, pairs: Pairs,
               context: DefenseContext) -> torch.Tensor:
        """The detector's scores, checked: one finite number per training pair."""
        if not isinstance(pairs, PairSet):
            raise TypeError(f"defense {cell.defense} removes training pairs, which needs the training split in "
                            "memory; this preset streams it: raise data.memory_gb so it fits")
        victim_model.eval()
        scores = self.call(defense, victim_model, pairs, context)
        if not isinstance(scores, torch.Tensor) or scores.shape != (len(pairs),):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"detector {cell.defense} returned scores of shape {shape}; expected one score per "
                             f"training pair, shape ({len(pairs)},)")
        scores = scores.detach().double().cpu()
        if not torch.isfinite(scores).all():
            raise ValueError(f"detector {cell.defense} returned {int((~torch.isfinite(scores)).sum())} "
                             "non-finite scores (NaN or inf); every pair needs a finite score")
        return scores

    def detection(self, cell: CellSpec, store: ArtifactStore, meta: dict[str, Any]) -> DetectionMetrics | None:
        scores = load_file(str(store.victim_dir(cell.trained_key) / SCORES_FILE))["scores"]
        poisoned = store.manifest(cell.victim.key) or {"indices": []}
        return detection_metrics(scores, poisoned["indices"], torch.tensor(meta["removed"], dtype=torch.int64))

    def passes(self, preset: Preset, cell: CellSpec, defense: Defense) -> float:
        retraining = victim_passes(preset) * (1 - cell.removal_rate) if self.trains_victim(
            cell, preset.data.train_pairs) else 0.0
        return preset.data.train_pairs * EVAL_PASS_COST + retraining

    def describe(self, preset: Preset, name: str, defense: Defense, cells: int) -> tuple[str, int]:
        rate = preset.detection.removal_rate
        removes = removal_count(rate, preset.data.train_pairs)
        streamed = (" (needs the training split in memory: this preset streams it, so these cells will fail)"
                    if "train" in streamed_splits(preset.data) else "")
        if not removes:
            return (f"defense {name} (data stage): scores the {preset.data.train_pairs:,} training pairs and "
                    f"removes none (detection.removal_rate {rate:g}: detection only, the model is the victim)"
                    f"{streamed} × {cells} cells"), 0
        pairs = preset.data.train_pairs - removes
        return _retraining_line(preset, name, self.stage, f"scores the training pairs, removes the top {rate:.0%}, "
                                f"retrains the victim", pairs, cells, streamed)


def _retraining_line(preset: Preset, name: str, stage: Stage, what: str, pairs: int, cells: int,
                     note: str = "") -> tuple[str, int]:
    steps = pairs // preset.victim.batch_size * preset.victim.epochs
    return (f"defense {name} ({stage.name} stage): {what} on {pairs:,} pairs{note} / batch "
            f"{preset.victim.batch_size} × {preset.victim.epochs} epochs ≈ {steps:,} steps per cell × {cells} "
            "cells"), steps


def _checked_model(cell: CellSpec, stage: Stage, model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"defense {cell.defense}: {stage.method}() returned {type(model).__name__}, not a model")
    return model
