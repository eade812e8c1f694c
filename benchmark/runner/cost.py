"""Before a grid starts: how much it will train and about how long that takes on this machine.

The work is counted in training passes (one image forward and backward through the model under the CLIP loss):
a victim is ``train_pairs × epochs`` passes (twice that for a ``clip+ssl`` victim, which forwards an augmented
view of every pair), a cell is its evaluation (every test image twice, forward only, counted as a third of a
pass each) plus what its stage says its defense costs (:meth:`benchmark.runner.stages.StageRuns.passes`: a
post-training defense ``clean_pairs × epochs × passes_per_pair``; a training-stage defense a victim of its own;
a detector a forward pass over the training pairs and the victim retrained on those it keeps). A model a cell
trains for itself and caches is counted once, with the victims (a detector whose budget removes nothing only
scores: its model is the victim itself). A preset
whose victims start from a clean model trained here adds that model once per run (``[pretrain] pairs × epochs``
passes, before any victim, so on one worker). What the output folder already
holds (recorded rows, cached victims and cells) is not counted. The speed is this machine's: the victims this
folder already trained (their recorded images per second), or else a few training steps of the preset's model
measured on the spot. Jobs spread over the workers, so the estimate divides by the workers that have a job; it
is a planning figure, not a promise.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.data.batches import Normalizer
from benchmark.models import create_model, tokenizer_for
from benchmark.presets import Preset
from benchmark.results import RESULTS_FILE, ResultsFile
from benchmark.runner.plan import Plan, pretrained_key
from benchmark.runner.store import ArtifactStore
from benchmark.stages import STAGES
from benchmark.training import clip_loss, parameter_groups
from defenses import DEFENSES

EVAL_PASS_COST = 1 / 3  # a forward pass without backward, relative to a training pass
MEASURED_STEPS = 3
MEASURED_BATCH = 32


@dataclass(frozen=True)
class GridCost:
    """What a plan still has to do, and the time that takes at ``images_per_second`` per worker."""

    victims: int  # all victims to train, those of training- and data-stage cells included
    cells: int
    passes: float
    images_per_second: float
    speed_source: str
    workers: int
    stage_victims: int = 0  # of ``victims``: trained by training- and data-stage cells
    pretrained: int = 0  # clean models to pretrain (one per run of a preset that trains one), before the rest
    pretrain_passes: float = 0.0  # their passes, on one worker

    @property
    def seconds(self) -> float:
        busy = max(1, min(self.workers, self.victims + self.cells))
        speed = max(self.images_per_second, 1e-9)
        return self.pretrain_passes / speed + self.passes / speed / busy

    def __add__(self, other: "GridCost") -> "GridCost":
        """Two plans' costs as one (a sweep's points), at this one's speed."""
        return GridCost(self.victims + other.victims, self.cells + other.cells, self.passes + other.passes,
                        self.images_per_second, self.speed_source, self.workers,
                        self.stage_victims + other.stage_victims, self.pretrained + other.pretrained,
                        self.pretrain_passes + other.pretrain_passes)

    def describe(self) -> str:
        if not self.victims and not self.cells:
            return "estimate: nothing to train; every victim and cell is already in the cache"
        stages = f" ({self.stage_victims} of them by training- and data-stage defenses)" if self.stage_victims else ""
        clean = (f"{self.pretrained} clean model{'s' * (self.pretrained != 1)} to pretrain first (once per run, "
                 "shared by its victims), " if self.pretrained else "")
        return (f"estimate: {clean}{self.victims} victims to train{stages}, {self.cells} cells to run; about "
                f"{_duration(self.seconds)} on {self.workers} worker{'s' * (self.workers != 1)} at "
                f"{self.images_per_second:.0f} training images/s each ({self.speed_source})")


def grid_cost(plan: Plan, out_dir: Path | None, workers: int, test_images: int,
              device: torch.device = torch.device("cpu"), threads: int = 1,
              counted: set[str] | None = None) -> GridCost:
    """The cost of what ``plan`` has not done yet in ``out_dir`` (everything, when ``out_dir`` is None), with
    ``test_images`` clean test images per evaluation; a speed to measure is measured at ``threads`` threads (a
    worker's share of the CPU). ``counted``: keys of victims and cells another plan's estimate already counts
    (a sweep's points share them); the keys counted here are added to it."""
    preset = plan.preset
    counted = counted if counted is not None else set()
    store = ArtifactStore.of_run(out_dir) if out_dir is not None else None
    results = ResultsFile(out_dir / RESULTS_FILE) if out_dir is not None and (out_dir / RESULTS_FILE).exists() else None
    cells = [cell for cell in plan.cells if not (results is not None and results.done(cell.row_id))
             and not (store is not None and store.cell_metrics(cell.key) is not None) and cell.key not in counted]
    cells = list({cell.key: cell for cell in cells}.values())
    needed = {cell.victim.key for cell in cells}
    victims = [spec for spec in plan.victims if spec.key in needed and spec.key not in counted
               and (store is None or store.victim_meta(spec.key) is None)]
    counted |= {cell.key for cell in cells} | {spec.key for spec in victims}
    passes = len(victims) * victim_passes(preset)
    stage_victims = 0
    for cell in cells:
        passes += 2 * test_images * EVAL_PASS_COST
        if cell.trained_key is not None:  # a model of its own, cached: counted once, unless the folder holds it
            if cell.trained_key in counted or (store is not None and store.victim_meta(cell.trained_key) is not None):
                continue
            counted.add(cell.trained_key)
            stage_victims += cell.trains_model(preset.data.train_pairs)
        defense = DEFENSES.get(cell.defense).from_settings(cell.defense_settings)
        passes += STAGES[cell.stage].runner().passes(preset, cell, defense)
    pretrained, pretrain_passes = 0, 0.0
    if preset.trains_clean_model and (victims or stage_victims):
        key = pretrained_key(preset)
        if key not in counted and (store is None or store.pretrained_meta(key) is None):
            counted.add(key)
            pretrained, pretrain_passes = 1, preset.pretrain.pairs * preset.pretrain.epochs
    speed, source = recorded_speed(store) if store is not None else (None, "")
    if speed is None:
        speed, source = measure_speed(preset, threads, device), f"measured: {MEASURED_STEPS} training steps just now"
    return GridCost(len(victims) + stage_victims, len(cells), passes, speed, source, workers, stage_victims,
                    pretrained, pretrain_passes)


def victim_passes(preset: Preset) -> float:
    """Training passes of one victim: its pairs × epochs, twice over for a clip+ssl victim."""
    views = 1 if preset.victim.objective == "clip" else 2
    return preset.data.train_pairs * preset.victim.epochs * views


def recorded_speed(store: ArtifactStore) -> tuple[float | None, str]:
    """The median training speed (passes per second, per worker) of the victims ``store`` already holds."""
    speeds = []
    for meta_path in sorted(store.root.glob("victims/*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
            speed = float(meta["images_per_second"]) * (1 if meta.get("objective", "clip") == "clip" else 2)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if speed > 0:
            speeds.append(speed)
    if not speeds:
        return None, ""
    return statistics.median(speeds), f"median of {len(speeds)} victims this folder trained"


def measure_speed(preset: Preset, threads: int, device: torch.device = torch.device("cpu")) -> float:
    """Training images per second of the preset's model on ``device`` with ``threads`` CPU threads: a few CLIP-loss steps on random images and captions (batches of at most ``MEASURED_BATCH``, so a
    large model on a CPU is measured in seconds), after one untimed step."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        model = create_model(preset.model.name, seed=0).to(device)
        size, batch_size = preset.data.image_size, min(preset.victim.batch_size, MEASURED_BATCH)
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator)
        batch = {"images": Normalizer(model)(images.to(device)),
                 "texts": tokenizer_for(preset.model.name)([preset.text.target] * batch_size).to(device)}
        optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-4)
        model.train()
        for step in range(MEASURED_STEPS + 1):
            if step == 1:
                start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            clip_loss(model, batch).backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return MEASURED_STEPS * batch_size / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
