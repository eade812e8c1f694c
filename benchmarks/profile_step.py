"""Where a training step's time goes: torch.profiler over victim-training steps of a preset's model (issue 7).

    python benchmarks/profile_step.py [--preset fmnist-tiny] [--threads 1] [--steps 10]

Runs the victim's own step (cleanbench's model, ClipLoss, fused AdamW, the preset's batch size) on real
captions of the preset, after warm-up steps, and prints the operators by self CPU time, grouped by shape, with
the share of forward, backward and optimizer in the step: first by operator, then by operator and shape.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.data.batches import Normalizer  # noqa: E402
from benchmark.models import model_from_spec, tokenizer_for  # noqa: E402
from benchmark.presets import load_preset  # noqa: E402
from benchmark.task import build_task  # noqa: E402
from benchmark.training import clip_loss, parameter_groups  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fmnist-tiny")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU workers use 1)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = load_preset(args.preset)
    task = build_task(preset)
    model = model_from_spec(preset.model, seed=0).train()
    size = preset.victim.batch_size
    batch = {"images": Normalizer(model)(task.train_pairs.images[:size]),
             "texts": tokenizer_for(preset.model.name)(list(task.train_pairs.captions[:size]))}
    optimizer = torch.optim.AdamW(parameter_groups(model, preset.victim.weight_decay), lr=preset.victim.lr,
                                  fused=True)
    parts = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def step(timed: bool) -> None:
        start = time.perf_counter()
        loss = clip_loss(model, batch)
        forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        if timed:
            parts["forward"] += forward - start
            parts["backward"] += backward - forward
            parts["optimizer"] += time.perf_counter() - backward

    for _ in range(3):
        step(False)
    for _ in range(args.steps):
        step(True)
    total = sum(parts.values())
    print(f"preset {preset.name}, model {preset.model.name}, batch {size}, {args.threads} thread(s): "
          f"{total / args.steps * 1000:.1f} ms/step, {size * args.steps / total:.0f} images/s; "
          + ", ".join(f"{name} {seconds / total:.0%}" for name, seconds in parts.items()))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(args.steps):
            step(False)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                        max_name_column_width=50))
    print(profiler.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40, max_shapes_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
