"""Where a victim starts (the preset's ``[victim] init``), and the clean model pretrained victims start from.

* ``scratch``: a random initialisation drawn from the run seed (``derive_seed(seed, "init")``), as always.
* ``pretrained``: the model's own weights (``[model] pretrained``: OpenAI's RN50 in ``openai-rn50``), or, when it
  has none, a clean CLIP trained here with the CLIP loss on the preset's ``[pretrain]`` pairs (disjoint from every
  other split, :mod:`benchmark.task`) with the ``[pretrain]`` recipe: the CleanCLIP paper's second setting at CPU
  scale (``fmnist-tiny-pretrained``).

:func:`initial_model` is the one place a victim's starting model comes from: the victim itself
(:mod:`benchmark.runner.execute`), a training-stage defense's victim and a detector's retrained victim
(:mod:`benchmark.runner.stages`) all start there. The clean model is trained once per run, by the coordinator in
:func:`benchmark.runner.grid.run_plan` before any work is dispatched (:func:`prepare_clean_model`), so parallel
workers never train it twice: they only load it. It is saved like a victim, under
``cache/pretrained/<key>/`` (safetensors checkpoint, then ``meta.json`` with the checkpoint's SHA-256, written
last), and its key (:func:`~benchmark.runner.plan.pretrained_key`) is part of every victim key. It does not depend
on the run's seeds: its initialisation and batch order come from ``[pretrain] seed``.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.checkpoints import read_state_dict, save_state_dict
from benchmark.config import config_dict
from benchmark.distributed import barrier, world
from benchmark.metrics import classifier_for, evaluate
from benchmark.models import create_model, model_from_spec, tokenizer_for
from benchmark.presets import Preset
from benchmark.progress import Reporter
from benchmark.runner.plan import CellSpec, pretrained_key
from benchmark.runner.store import ArtifactStore
from benchmark.seeding import derive_seed
from benchmark.task import Task
from benchmark.victim_training import train_victim

CHECKPOINT = "model.safetensors"


def initial_model(preset: Preset, seed: int, store: ArtifactStore) -> nn.Module:
    """The model a victim of ``preset`` with run seed ``seed`` starts from, on the CPU: a random initialisation,
    the model's own weights, or the clean model this run trained (read from ``store``; it must be there)."""
    if not preset.trains_clean_model:
        return model_from_spec(preset.model, seed=derive_seed(seed, "init"))
    key = pretrained_key(preset)
    if store.pretrained_meta(key) is None:
        raise RuntimeError(f"the clean pretrained model is not in the cache ({store.pretrained_dir(key)}): a run "
                           "trains it before any victim; rerun to train it")
    model = create_model(preset.model.name)
    model.load_state_dict(read_state_dict(store.pretrained_dir(key) / CHECKPOINT))
    return model


def needs_clean_model(preset: Preset, pending: list[CellSpec], store: ArtifactStore) -> bool:
    """Whether a pending cell still has a model to train from the clean model: its victim, or its training- or
    data-stage model (a rerun whose victims are all cached trains no clean model)."""
    if not preset.trains_clean_model:
        return False
    return any(store.cell_metrics(cell.key) is None
               and (store.victim_meta(cell.victim.key) is None
                    or (cell.trained_key is not None and store.victim_meta(cell.trained_key) is None))
               for cell in pending)


def prepare_clean_model(preset: Preset, task: Task, store: ArtifactStore, device: torch.device,
                        reporter: Reporter) -> bool:
    """Train and save the clean model unless ``store`` holds it; True when it was trained. Under torchrun every
    rank trains it together (the training loop meets) and rank 0 saves it before any rank goes on."""
    key = pretrained_key(preset)
    if store.pretrained_meta(key) is not None:
        reporter.log(f"pretrained model: reused from cache ({key})")
        return False
    if task.pretrain_pairs is None:
        raise RuntimeError(f"preset {preset.name}: the task holds no pretraining pairs")
    spec, pairs = preset.pretrain, task.pretrain_pairs
    reporter.log(f"pretrained model: training a clean {preset.model.name} on {len(pairs):,} disjoint pairs "
                 f"({spec.epochs} epochs, lr {spec.lr:g}), once for every victim of the run")
    model = create_model(preset.model.name, seed=derive_seed(spec.seed, "pretrain", "init")).to(device)
    tokenizer = tokenizer_for(preset.model.name)
    stats = train_victim(model, pairs, spec.recipe, tokenizer, derive_seed(spec.seed, "pretrain"), device,
                         reporter=reporter, description="pretrained model")
    meta = {"key": key, "pairs": len(pairs), "pretrain": config_dict(spec), "model": preset.model.name,
            "time_s": stats.seconds, "final_loss": stats.final_loss, "images_per_second": stats.images_per_second,
            "device": str(device), "processes": world().size}
    if world().is_main:
        if len(task.val_set):  # how good a start it is: zero-shot CA on the validation pairs (never triggered)
            classifier = classifier_for(model.eval(), tokenizer, task.val_set, device)
            meta["val_ca"] = evaluate(classifier, task.val_set, target=task.target_index, trigger=None, seed=0,
                                      device=device).ca.value
        save_state_dict(model, store.pretrained_dir(key) / CHECKPOINT)
        store.save_pretrained_meta(key, meta)  # last: the model counts as there only from now on
    barrier()
    ca = f", validation CA {meta['val_ca']:.3f}" if "val_ca" in meta else ""
    reporter.log(f"pretrained model: trained in {stats.seconds:.0f}s (final loss {stats.final_loss:.3f}{ca}; {key})")
    return True
