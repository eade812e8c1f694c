"""Clean accuracy (CA) and attack success rate (ASR), each with its count and a 95% Wilson interval.

CA is top-1 (and top-5) on the clean test set. ASR is the share of test images whose true class is *not* the
target that the model assigns to the target once the trigger is applied; excluding target-class images is the
reference's recommendation (§5) and avoids counting correct answers as attack successes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from benchmark.data.batches import Normalizer
from benchmark.data.pairs import EvalSet, to_float, to_uint8
from benchmark.device import current_runtime
from benchmark.predictions import Predictions

Trigger = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Proportion:
    """k successes out of n, with a Wilson score interval."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")


def wilson(k: int, n: int, confidence: float = 0.95) -> Proportion:
    """``k``/``n`` with scipy's Wilson score interval (NaN bounds when n = 0)."""
    if n == 0:
        return Proportion(0, 0, float("nan"), float("nan"))
    from scipy.stats import binomtest

    interval = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Proportion(k, n, float(interval.low), float(interval.high))


@runtime_checkable
class ImageClassifier(Protocol):
    """Anything that maps a batch of float images in [0, 1], (B, 3, H, W), to class logits (B, classes)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class BringsOwnClassifier(Protocol):
    """A defended model with its own head (e.g. supervised finetuning) builds its classifier itself."""

    def image_classifier(self, eval_set: EvalSet, device: torch.device) -> ImageClassifier: ...


class ZeroShotClassifier:
    """open_clip's zero-shot classifier: mean of normalised template embeddings per class, cosine similarity."""

    def __init__(self, model: nn.Module, tokenizer, eval_set: EvalSet, device: torch.device) -> None:
        from open_clip import build_zero_shot_classifier

        self.model = model.eval()
        self.normalize = Normalizer(model)
        with torch.no_grad():
            self.weights = build_zero_shot_classifier(model, tokenizer, eval_set.classnames, eval_set.templates,
                                                      num_classes_per_batch=None, device=device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.encode_image(self.normalize(images), normalize=True)
        return features @ self.weights


def classifier_for(model: nn.Module, tokenizer, eval_set: EvalSet, device: torch.device) -> ImageClassifier:
    """The model's own classifier if it brings one, else the zero-shot classifier over the eval set's classes."""
    with current_runtime().autocast(device):  # the class embeddings as training computes features
        if isinstance(model, BringsOwnClassifier):
            return model.image_classifier(eval_set, device)
        return ZeroShotClassifier(model, tokenizer, eval_set, device)


@dataclass(frozen=True)
class Metrics:
    ca: Proportion
    ca_top5: Proportion
    asr: Proportion | None

    def as_row(self) -> dict[str, float | int]:
        asr = self.asr or Proportion(0, 0, float("nan"), float("nan"))
        return {
            "ca": self.ca.value, "ca_low": self.ca.low, "ca_high": self.ca.high, "n_clean": self.ca.n,
            "ca_top5": self.ca_top5.value,
            "asr": asr.value, "asr_low": asr.low, "asr_high": asr.high, "n_triggered": asr.n,
        }

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Metrics":
        return cls(Proportion(**data["ca"]), Proportion(**data["ca_top5"]),
                   Proportion(**data["asr"]) if data.get("asr") else None)


def forward_batch_size(device: torch.device) -> int:
    """Images per forward pass when evaluating. On the CPU small batches keep a layer's activations in cache,
    so the tiny default's ``encode_image`` runs markedly faster in batches of 128 than of 1,000 (the evaluation's
    latest speed: ``benchmarks/results/perf-2026-11-28.md``). A GPU wants large batches."""
    return 1000 if device.type == "cuda" else 128


@torch.no_grad()
def evaluate(classifier: ImageClassifier, eval_set: EvalSet, *, target: int, trigger: Trigger | None, seed: int,
             device: torch.device, batch_size: int = 1000) -> Metrics:
    """CA on all images; ASR (if a trigger is given) on non-target images with the trigger applied (see
    :func:`evaluate_with_predictions`, which also returns the per-image predictions)."""
    return evaluate_with_predictions(classifier, eval_set, target=target, trigger=trigger, seed=seed, device=device,
                                     batch_size=batch_size)[0]


@torch.no_grad()
def evaluate_with_predictions(classifier: ImageClassifier, eval_set: EvalSet, *, target: int,
                              trigger: Trigger | None, seed: int, device: torch.device,
                              batch_size: int = 1000) -> tuple[Metrics, Predictions]:
    """CA on all images; ASR (if a trigger is given) on non-target images with the trigger applied; and the
    top-1 prediction behind every count, so CA and ASR are by construction the means of the predictions.

    Triggered images are quantised to uint8, like stored poisoned images, and the trigger's randomness comes
    from a generator seeded with ``seed`` so the ASR of a cell is reproducible. The trigger is drawn for
    ``batch_size`` images at a time (the draws, and so the ASR, depend on it); the classifier then takes them in
    batches of :func:`forward_batch_size`, under the configured runtime's autocast as in training (bf16 on CUDA
    by default; nothing on the CPU unless ``--precision bf16``, :class:`benchmark.device.Runtime`).
    """
    step = forward_batch_size(device)

    def classify(images: torch.Tensor) -> torch.Tensor:
        with current_runtime().autocast(device):
            return torch.cat([classifier(part.to(device)) for part in images.split(step)])

    labels = eval_set.labels
    top5 = 0
    clean_pred, triggered_pred = [], []
    generator = torch.Generator().manual_seed(seed)
    non_target = torch.nonzero(labels != target).squeeze(1)
    for start in range(0, len(labels), batch_size):
        logits = classify(to_float(eval_set.images[start : start + batch_size]))
        truth = labels[start : start + batch_size].to(device)
        clean_pred.append(logits.argmax(1).cpu())
        k = min(5, logits.shape[1])
        top5 += int((logits.topk(k, dim=1).indices == truth[:, None]).any(1).sum())
    if trigger is not None:
        for start in range(0, len(non_target), batch_size):
            idx = non_target[start : start + batch_size]
            triggered = to_uint8(trigger(to_float(eval_set.images[idx]), generator))
            triggered_pred.append(classify(to_float(triggered)).argmax(1).cpu())
    predictions = Predictions(
        n_classes=len(eval_set.classnames), target=target if trigger is not None else -1,
        clean_label=labels.numpy(), clean_pred=torch.cat(clean_pred).numpy(),
        triggered_index=(non_target if trigger is not None else non_target[:0]).numpy(),
        triggered_pred=torch.cat(triggered_pred).numpy() if triggered_pred else np.zeros(0, dtype=np.int64))
    n = len(labels)
    top1 = int(predictions.clean_correct.sum())
    asr = wilson(int(predictions.triggered_success.sum()), len(non_target)) if trigger is not None else None
    return Metrics(wilson(top1, n), wilson(top5, n), asr), predictions
