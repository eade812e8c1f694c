"""The model a training- or data-stage defense produces for its cell, trained once and cached under the cell's
``trained_key``.

* ``training``: the defense's :meth:`~defenses.base.TrainingDefense.train` gets a model initialised exactly as
  the victim was (:func:`benchmark.runner.pretrained.initial_model`: the same seed, or the same pretrained
  model), the poisoned training pairs as the victim got them, and the victim's recipe.
* ``data``: the detector's :meth:`~defenses.base.Detector.score` gets the no-defense victim of the same attack
  and seed (the group's, already trained) and the poisoned pairs; the runner removes the highest-scored
  ``removal_rate`` of the pairs, retrains the victim from the same initialisation with its own objective and
  recipe on the rest, and scores the detection against the poison manifest (which the detector never sees).
  When the budget removes nothing (``removal_rate`` 0: detection only, as Huang et al. evaluate), the model is
  the no-defense victim itself, since retraining on every pair would repeat its run: the cell costs the scoring.

The model, its meta (training time, and for a detector what was removed) and a detector's scores are saved
under ``victims/<trained_key>/`` like a victim, complete only once the meta exists, so a rerun after a kill
reuses them and does not train again. The defense's time is everything it cost: scoring and retraining.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from benchmark.checkpoints import read_state_dict, save_state_dict
from benchmark.data.pairs import PairSet
from benchmark.detection_metrics import DetectionMetrics, detection_metrics, removed_indices
from benchmark.distributed import world
from benchmark.models import model_from_spec, tokenizer_for
from benchmark.runner.plan import CellSpec
from benchmark.runner.pretrained import initial_model
from benchmark.storage import atomic_path
from benchmark.victim_training import train_victim
from defenses.base import DefenseContext

SCORES_FILE = "scores.safetensors"


class StageRun:
    """One training- or data-stage cell's model: from the cache, or trained and saved."""

    def __init__(self, group: Any, cell: CellSpec, victim: Any) -> None:
        """``group``: the :class:`~benchmark.runner.execute.GroupRun` running the cell (a layer above, so not
        imported here); ``victim``: its no-defense victim (state, meta, attack)."""
        self.group, self.cell, self.victim = group, cell, victim
        self.folder = group.store.victim_dir(cell.trained_key)

    def model(self, defense: Any, victim_model: nn.Module,
              context: DefenseContext) -> tuple[nn.Module, float, DetectionMetrics | None]:
        """The cell's model, the defense's time in seconds (its scoring and training, also when reused from the
        cache) and, for a detector, its detection metrics."""
        meta = self.group.store.victim_meta(self.cell.trained_key)
        if meta is None:
            meta = self.train(defense, victim_model, context)
        else:
            self.group.reporter.log(f"defense {self.cell.defense} on {self.cell.victim.attack} seed "
                                    f"{self.cell.victim.seed}: model reused from cache ({self.cell.trained_key})")
        model = model_from_spec(self.group.plan.preset.model)
        model.load_state_dict(read_state_dict(self.folder / "model.safetensors"))
        model.to(self.group.device).eval()
        detection = None
        if self.cell.stage == "data":
            scores = load_file(str(self.folder / SCORES_FILE))["scores"]
            poisoned = self.group.store.manifest(self.cell.victim.key) or {"indices": []}
            removed = torch.tensor(meta["removed"], dtype=torch.int64)
            detection = detection_metrics(scores, poisoned["indices"], removed)
        return model, float(meta["time_defense_s"]), detection

    def train(self, defense: Any, victim_model: nn.Module, context: DefenseContext) -> dict[str, Any]:
        """Train the cell's model (scoring first, for a detector), save it with its meta, and return the meta."""
        group, cell, spec = self.group, self.cell, self.cell.victim
        preset = group.plan.preset
        start = time.perf_counter()
        pairs = group.poisoned_pairs(spec, self.victim.attack)
        trains = cell.trains_model(len(pairs))  # a detector removing nothing keeps the victim (module docstring)
        model = initial_model(preset, spec.seed, group.store)
        model.to(group.device)
        meta: dict[str, Any] = {"attack": spec.attack, "seed": spec.seed, "defense": cell.defense,
                                "stage": cell.stage, "objective": preset.victim.label, "init": preset.victim.init,
                                "device": str(group.device)}
        if cell.stage == "training":
            torch.manual_seed(context.seed)
            model = defense.train(model, pairs, context)
            if not isinstance(model, nn.Module):
                raise TypeError(f"defense {cell.defense}: train() returned {type(model).__name__}, not a model")
        else:
            scores = self.scores(defense, victim_model, pairs, context)
            removed = removed_indices(scores, cell.removal_rate)
            meta["removed"] = removed.tolist()
            if trains:
                keep = torch.ones(len(pairs), dtype=torch.bool)
                keep[removed] = False
                stats = train_victim(model, pairs.subset(torch.nonzero(keep).squeeze(1)), preset.victim,
                                     tokenizer_for(preset.model.name), spec.seed, group.device,
                                     reporter=group.reporter, description=f"victim {spec.attack} s{spec.seed} "
                                                                          f"without {cell.defense}'s top "
                                                                          f"{cell.removal_rate:.0%}")
                meta["images_per_second"] = stats.images_per_second
            else:
                model.load_state_dict(victim_model.state_dict())
            if world().is_main:
                with atomic_path(self.folder / SCORES_FILE) as tmp:
                    save_file({"scores": scores.contiguous()}, str(tmp))
        meta["time_defense_s"] = time.perf_counter() - start
        if world().is_main:
            save_state_dict(model, self.folder / "model.safetensors")
            group.store.save_victim_meta(cell.trained_key, meta)
        group.summary.victims_trained += trains
        return meta

    def scores(self, defense: Any, victim_model: nn.Module, pairs: Any, context: DefenseContext) -> torch.Tensor:
        """The detector's scores, checked: one finite number per training pair."""
        if not isinstance(pairs, PairSet):
            raise TypeError(f"defense {self.cell.defense} removes training pairs, which needs the training split in "
                            "memory; this preset streams it: raise data.memory_gb so it fits")
        victim_model.eval()
        scores = defense.score(victim_model, pairs, context)
        if not isinstance(scores, torch.Tensor) or scores.shape != (len(pairs),):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"detector {self.cell.defense} returned scores of shape {shape}; expected one score per "
                             f"training pair, shape ({len(pairs)},)")
        scores = scores.detach().double().cpu()
        if not torch.isfinite(scores).all():
            raise ValueError(f"detector {self.cell.defense} returned {int((~torch.isfinite(scores)).sum())} "
                             "non-finite scores (NaN or inf); every pair needs a finite score")
        return scores

