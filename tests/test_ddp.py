"""DistributedDataParallel on the CPU (gloo, 2 processes): the loss curve and the weights match one process
training on the same global batches, because each rank takes its share of every global batch and the CLIP loss
(and CleanCLIP's self-supervised loss) gathers the features, so its logits span the whole batch.

Tolerance: per-step losses within 1e-5 absolute and final weights within 1e-4 (1e-3 for CleanCLIP, see
WEIGHT_TOLERANCE): two ranks sum the gradient in another order than one process does; float32 rounding is all
that differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmark.models import create_model, tokenizer_for
from benchmark.training import clip_loss, clip_ssl_loss, train
from benchmark.training_recipe import TrainRecipe
from tests.helpers import MODEL, TRAIN_BATCH_SIZE, learnable_batches

WORLD_SIZE = 2
RECIPE = TrainRecipe(epochs=2, batch_size=TRAIN_BATCH_SIZE, lr=3e-3, warmup_steps=1)  # 4 steps per epoch, 8 in all
LOSS_TOLERANCE = 1e-5
# CleanCLIP's 4N-sample steps leave some parameters with near-zero gradients, and AdamW divides by their root
# mean square, so float32 rounding in the gathered sums moves those weights by up to ~lr/10 (3e-4) while every
# step's loss still agrees to 1e-5.
WEIGHT_TOLERANCE = {"sharded": 1e-4, "plain": 1e-4, "cleanclip": 1e-3}


def _run(batches_of, loss_fn=clip_loss) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train the tiny model from one seed; returns the loss of every step and the final weights."""
    model = create_model(MODEL, seed=0)
    losses: list[float] = []

    def recording_loss(net, batch):
        loss = loss_fn(net, batch)
        losses.append(loss.item())
        return loss

    train(model, batches_of(model), RECIPE, loss_fn=recording_loss)
    return losses, model.state_dict()


def _global_batches(model: torch.nn.Module) -> "_Replay":
    """The same global batches as plain dicts, one list per epoch: the training loop must shard them itself."""
    batches = learnable_batches(model)
    with _single_process():
        return _Replay([list(batches) for _ in range(RECIPE.epochs)])


def _cleanclip_batches(model: torch.nn.Module) -> "_Replay":
    """Global batches with fixed augmented views (flipped images, other captions) for CleanCLIP's loss."""
    replay = _global_batches(model)
    tokens = tokenizer_for(MODEL)
    for epoch in replay.epochs:
        for batch in epoch:
            batch["augmented_images"] = batch["images"].flip(-1)
            batch["augmented_texts"] = tokens(["a picture of something."] * len(batch["texts"]))
            batch["augmented_texts"][:, 1] = batch["texts"][:, 4]  # one word from the caption: views differ
    return replay


class _Replay:
    """Batches with no ``sharded`` flag: each pass yields the next epoch's precomputed global batches."""

    def __init__(self, epochs: list[list[dict[str, torch.Tensor]]]) -> None:
        self.epochs = epochs

    def __len__(self) -> int:
        return len(self.epochs[0])

    def __iter__(self):
        return iter(self.epochs.pop(0))


class _single_process:
    """Build batches as one process would (the global batch), even inside a process group."""

    def __enter__(self):
        import benchmark.distributed as distributed

        self.module, self.world = distributed, distributed.world
        distributed.world = lambda: distributed.World()
        return self

    def __exit__(self, *exc):
        self.module.world = self.world


RUNS = (("sharded", learnable_batches, clip_loss), ("plain", _global_batches, clip_loss),
        ("cleanclip", _cleanclip_batches, clip_ssl_loss))


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        for name, batches_of, loss_fn in RUNS:
            losses, state = _run(batches_of, loss_fn)
            if rank == 0:
                torch.save(state, Path(out_dir) / f"{name}.pt")
                (Path(out_dir) / f"{name}.json").write_text(json.dumps(losses))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    clip_reference = _run(learnable_batches)
    references = {"sharded": clip_reference, "plain": clip_reference,
                  "cleanclip": _run(_cleanclip_batches, clip_ssl_loss)}
    for name, (reference_losses, reference_state) in references.items():
        assert len(reference_losses) == 8
        losses = json.loads((tmp_path / f"{name}.json").read_text())
        state = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert len(losses) == len(reference_losses)
        assert max(abs(a - b) for a, b in zip(losses, reference_losses)) < LOSS_TOLERANCE, (name, losses)
        worst = max(state, key=lambda k: (state[k] - reference_state[k]).abs().max().item())
        gap = (state[worst] - reference_state[worst]).abs().max().item()
        assert gap < WEIGHT_TOLERANCE[name], (name, worst, gap)
    # Training moved the weights and the loss far beyond the tolerances, so the agreement above is not vacuous.
    reference_losses, reference_state = clip_reference
    initial = create_model(MODEL, seed=0).state_dict()
    assert max((reference_state[k] - initial[k]).abs().max().item() for k in initial) > 100 * WEIGHT_TOLERANCE["plain"]
    assert max(reference_losses) - min(reference_losses) > 1000 * LOSS_TOLERANCE
