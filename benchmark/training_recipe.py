"""The hyperparameters of one contrastive training run (victim training or a finetuning defense)."""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.config import check_range


@dataclass(frozen=True)
class TrainRecipe:
    """AdamW + cosine schedule with linear warmup, as open_clip's trainer and the CleanCLIP code use.

    ``warmup_steps`` counts optimizer steps from step 0 (the official CleanCLIP code starts at step
    ``num_batches`` and so skips warmup, reference §3; cleanbench does not copy that quirk).
    """

    epochs: int = 1
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 0
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip_norm: float = 0.0

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 1, 10_000)
        check_range("batch_size", self.batch_size, 2, 1_000_000)
        check_range("lr", self.lr, 0.0, 1.0, low_inclusive=False)
        check_range("weight_decay", self.weight_decay, 0.0, 10.0)
        check_range("warmup_steps", self.warmup_steps, 0, None)
        check_range("beta1", self.beta1, 0.0, 1.0, high_inclusive=False)
        check_range("beta2", self.beta2, 0.0, 1.0, high_inclusive=False)
        check_range("eps", self.eps, 0.0, 1.0, low_inclusive=False)
        check_range("grad_clip_norm", self.grad_clip_norm, 0.0, None)
