"""Epoch time of ``cleanclip`` against ``finetune`` on the same clean pairs, model and recipe, in one run.

CleanCLIP forwards 2N images and 2N texts per step and AutoAugments N images, so it cannot be cheaper than about
twice plain finetuning; the budget is a ratio of at most 2.2 (issue 4). The first epoch includes warming up (and
starting augmentation workers, if any), so the ratio is taken over the later epochs, and the first-epoch figures are
printed alongside. Exits with status 1 when the ratio is over budget.

    python benchmarks/cleanclip_epoch_time.py [--preset fmnist-tiny] [--epochs 3] [--workers N]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import replace
from typing import Iterator

import torch

from benchmark.models import create_model, tokenizer_for
from benchmark.presets import load_preset
from benchmark.progress import Advance, Reporter
from benchmark.task import build_task
from defenses import DEFENSES
from defenses.base import DefenseContext

BUDGET = 2.2


class StepClock(Reporter):
    """A silent reporter that timestamps every optimizer step of the training loop."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.stamps: list[float] = []

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        self.stamps = [time.perf_counter()]
        yield lambda n=1, **fields: self.stamps.append(time.perf_counter())


def epoch_times(name: str, settings: dict, preset_name: str, epochs: int) -> list[float]:
    """Seconds per epoch of defense ``name`` trained on the preset's clean pairs."""
    preset = load_preset(preset_name)
    task = build_task(preset)
    clock = StepClock()
    recipe = replace(preset.finetune, epochs=epochs)
    context = DefenseContext(torch.device("cpu"), 0, recipe, tokenizer_for(preset.model.name), task.val_set, clock)
    DEFENSES.get(name).from_settings(settings).apply(create_model(preset.model.name, seed=0), task.clean_pairs,
                                                     context)
    steps = (len(clock.stamps) - 1) // epochs
    return [clock.stamps[(e + 1) * steps] - clock.stamps[e * steps] for e in range(epochs)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fmnist-tiny")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per defense (at least 2)")
    parser.add_argument("--workers", type=int, default=None,
                        help="cleanclip's augmentation workers (default: the defense's own, 0 on the CPU)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch includes starting the workers")
    preset = load_preset(args.preset)
    workers = "default" if args.workers is None else args.workers
    print(f"preset {preset.name}: {preset.data.clean_pairs} clean pairs, batch {preset.finetune.batch_size}, "
          f"{args.epochs} epochs each, torch threads {torch.get_num_threads()}, cleanclip workers {workers}")
    results = {"finetune": epoch_times("finetune", {}, args.preset, args.epochs),
               "cleanclip": epoch_times("cleanclip", {} if args.workers is None else {"num_workers": args.workers},
                                        args.preset, args.epochs)}
    for name, times in results.items():
        print(f"{name:>10}: first epoch {times[0]:7.2f}s, later epochs (median) {statistics.median(times[1:]):7.2f}s"
              f"  [{', '.join(f'{t:.2f}' for t in times)}]")
    ratio = statistics.median(results["cleanclip"][1:]) / statistics.median(results["finetune"][1:])
    first = results["cleanclip"][0] / results["finetune"][0]
    verdict = "within" if ratio <= BUDGET else "OVER"
    print(f"epoch-time ratio cleanclip / finetune: {ratio:.2f} (first epoch {first:.2f}); {verdict} budget {BUDGET}")
    return 0 if ratio <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
