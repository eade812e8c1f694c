"""The contrastive training loop shared by victim training and the finetuning defenses.

open_clip's ``ClipLoss`` and its trainer's ``cosine_lr`` schedule are reused as they are. The batches come from
:mod:`benchmark.data.batches` (their old path here is answered by :mod:`benchmark.deprecations`). A defense with its own objective (CleanCLIP) passes its own ``loss_fn`` and batches; everything else (optimizer groups, schedule, logit-scale
clamp, NaN guard, progress) stays in one place. Besides the CLIP loss, :func:`clip_ssl_loss` is CLIP plus the
in-modal self-supervised term on batches of augmented views (:mod:`benchmark.augment.views`): CleanCLIP's
objective, which SSL-only, SafeCLIP and the ``clip+ssl`` victim objective share.

Scale (see :mod:`benchmark.device` and :mod:`benchmark.distributed`): on CUDA the step runs under bf16 autocast
and convolutional models in channels-last format, ``torch.compile`` is opt-in, and under ``torchrun`` the model is
wrapped in DistributedDataParallel, each rank takes its share of every global batch, and the CLIP loss gathers
features across ranks. None of this changes the single-process CPU path. Each epoch logs its images per second.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import distributed
from benchmark.data.batches import Batch
from benchmark.deprecations import moved_names
from benchmark.device import current_runtime
from benchmark.faults import failpoint
from benchmark.progress import Reporter
from benchmark.training_recipe import TrainRecipe

__getattr__ = moved_names(__name__)  # names that lived here once
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
MAX_LOGIT_SCALE = math.log(100.0)
SYNC_EVERY = 50  # steps between reading the losses back from the device (the log and the NaN guard)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run is stopped rather than producing a meaningless model."""


@dataclass
class TrainStats:
    steps: int
    final_loss: float
    seconds: float
    images_per_second: float
    epoch_images_per_second: list[float] = field(default_factory=list)


def clip_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The symmetric InfoNCE loss of CLIP, computed by open_clip's ``ClipLoss`` (over the global batch under DDP)."""
    from open_clip import ClipLoss

    out = model(batch["images"], batch["texts"])
    return ClipLoss(**distributed.clip_loss_options())(out["image_features"], out["text_features"], out["logit_scale"])


def self_supervised_loss(images: torch.Tensor, augmented_images: torch.Tensor, texts: torch.Tensor,
                         augmented_texts: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CleanCLIP's L_SS on L2-normalised embeddings: original → augmented, negatives = other augmented views."""
    targets = torch.arange(len(images), device=images.device)
    image_term = F.cross_entropy(logit_scale * images @ augmented_images.T, targets)
    text_term = F.cross_entropy(logit_scale * texts @ augmented_texts.T, targets)
    return (image_term + text_term) / 2


def clip_ssl_loss(model: nn.Module, batch: Batch, clip_weight: float = 1.0,
                  inmodal_weight: float = 1.0) -> torch.Tensor:
    """``λ1·L_CLIP + λ2·L_SS`` for a batch with ``images``/``texts`` and ``augmented_images``/``augmented_texts``
    (CleanCLIP's loss, github.com/nishadsinghi/CleanCLIP @ d6e2f1dbf0ad952c05b816c6024d8205682a0674,
    ``src/train.py`` L66-71)."""
    if inmodal_weight == 0:
        return clip_weight * clip_loss(model, batch)
    from open_clip import ClipLoss

    n = len(batch["images"])
    # Captions cut to their length on the CPU (benchmark.text_context.cut_tokens) and full-width augmented ones
    # (or the other way round) are padded to one width with the pad token 0: the encoder then reads the lengths
    # as it did before any cut, so nothing changes numerically; two inputs of one width are left as they are.
    width = max(batch["texts"].shape[1], batch["augmented_texts"].shape[1])
    texts = [F.pad(tokens, (0, width - tokens.shape[1])) for tokens in (batch["texts"], batch["augmented_texts"])]
    out = model(torch.cat([batch["images"], batch["augmented_images"]]), torch.cat(texts))
    images, augmented_images = out["image_features"].split(n)
    texts, augmented_texts = out["text_features"].split(n)
    scale = out["logit_scale"]
    # Under DDP both terms span the global batch: L_SS's negatives are every rank's augmented views.
    loss = inmodal_weight * self_supervised_loss(*distributed.gather_global(images, augmented_images, texts,
                                                                            augmented_texts), scale)
    if clip_weight > 0:
        loss = loss + clip_weight * ClipLoss(**distributed.clip_loss_options())(images, texts, scale)
    return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: not on gains, biases, norms or the logit scale (open_clip, CleanCLIP)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if skip else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def train(
    model: nn.Module,
    batches: Iterable[Batch] | Sequence[Batch],
    recipe: TrainRecipe,
    *,
    loss_fn: LossFn = clip_loss,
    reporter: Reporter | None = None,
    description: str = "train",
) -> TrainStats:
    """Train ``model`` in place for ``recipe.epochs`` passes over ``batches`` (re-iterated every epoch).

    Under DDP, ``batches`` yields global batches (every rank the same) unless it declares ``sharded = True``
    and yields each rank's share itself; the loss is averaged over ranks for the log and the NaN guard, so every
    rank stops together.

    The losses stay on the device between sync points (every ``SYNC_EVERY`` steps and at the end of each
    epoch), where they are read back in one copy: a step never waits for the device. The NaN guard checks at
    those points, so a run with a non-finite loss stops there (at most ``SYNC_EVERY`` steps later, or at the
    epoch's end), naming the first step whose loss was not finite; the progress bar's loss is the last sync's.
    """
    from open_clip_train.scheduler import cosine_lr

    reporter = reporter or Reporter.silent()
    runtime, world = current_runtime(), distributed.world()
    device = next(model.parameters()).device
    channels_last = runtime.channels_last(model, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(batches)  # type: ignore[arg-type]
    total_steps = steps_per_epoch * recipe.epochs
    # The fused kernel updates all parameters in one pass: more images/s than the per-tensor loop on CPU, where
    # the 3.2M-entry token embedding of the tiny model dominates the parameter count (benchmarks/profile_step.py
    # shows the optimizer's share of a step; training speed: benchmarks/results/perf-2026-11-28.md).
    optimizer = torch.optim.AdamW(parameter_groups(model, recipe.weight_decay), lr=recipe.lr,
                                  betas=(recipe.beta1, recipe.beta2), eps=recipe.eps, fused=True)
    schedule = cosine_lr(optimizer, recipe.lr, min(recipe.warmup_steps, max(0, total_steps - 1)), total_steps)
    model.train()
    stepper = distributed.wrap(model, device)
    if runtime.compile:
        # Under DDP the wrapper is compiled itself (each run's own); otherwise one compile serves every model of
        # the same configuration in this process (every victim and every cell), see compiled().
        stepper = torch.compile(stepper) if world.distributed else compiled(model)
    shard = not getattr(batches, "sharded", False)
    step, loss_value, seen, start = 0, float("nan"), 0, time.perf_counter()
    epoch_rates = []
    pending: list[torch.Tensor] = []  # the losses (on the device) of the steps since the last sync point

    def sync(epoch: int) -> float:
        """Read the pending losses back in one copy; stop on the first non-finite one; the last one."""
        values = torch.stack(pending).tolist()
        first = step - len(values)
        pending.clear()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise NonFiniteLossError(f"{description}: loss is {value} at step {first + offset} (epoch {epoch + 1})")
        return values[-1]

    with reporter.task(description, total=total_steps) as advance:
        for epoch in range(recipe.epochs):
            epoch_seen, epoch_start = 0, time.perf_counter()
            for batch in batches:
                if shard:
                    batch = distributed.shard(batch)
                if channels_last:
                    batch = _channels_last(batch)
                schedule(step)
                with runtime.autocast(device):
                    loss = loss_fn(stepper, batch)
                pending.append(distributed.mean_over_ranks(loss.detach()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                failpoint("train-step")  # a test kills here: mid-step, weights not yet updated
                if recipe.grad_clip_norm > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip_norm)
                optimizer.step()
                _clamp_logit_scale(model)
                epoch_seen += len(next(iter(batch.values()))) * world.size
                step += 1
                if len(pending) >= SYNC_EVERY:
                    loss_value = sync(epoch)
                    advance(1, loss=loss_value)
                else:
                    advance(1)
            if pending:
                loss_value = sync(epoch)
            epoch_rates.append(epoch_seen / max(time.perf_counter() - epoch_start, 1e-9))
            seen += epoch_seen
            reporter.log(f"{description}: epoch {epoch + 1}/{recipe.epochs}, loss {loss_value:.4f}, "
                         f"{epoch_rates[-1]:.0f} images/s")
    seconds = time.perf_counter() - start
    model.eval()
    return TrainStats(step, loss_value, seconds, seen / max(seconds, 1e-9), epoch_rates)


_compiled_forwards: dict[tuple, Callable] = {}


def _forward(module: nn.Module, *args, **kwargs):
    return module(*args, **kwargs)


def model_configuration(model: nn.Module) -> tuple:
    """What a compiled forward depends on: the model's class and its parameters' names, shapes and dtypes."""
    return (type(model).__module__, type(model).__qualname__,
            tuple((name, tuple(param.shape), param.dtype) for name, param in model.named_parameters()))


class CompiledModel:
    """``model`` called through the compiled forward of its configuration; its other attributes are its own
    (as ``torch.compile``'s wrapper forwards them)."""

    def __init__(self, model: nn.Module, forward: Callable) -> None:
        self.__dict__.update(_orig_mod=model, _forward=forward)

    def __call__(self, *args, **kwargs):
        return self._forward(self._orig_mod, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["_orig_mod"], name)


def compiled(model: nn.Module) -> CompiledModel:
    """``model`` with a ``torch.compile``'d forward, compiled once per process and model configuration: the
    compiled function takes the module as an argument (dynamo treats its parameters as inputs), so the next
    victim or cell of the same configuration reuses it rather than compiling again."""
    key = model_configuration(model)
    forward = _compiled_forwards.get(key)
    if forward is None:
        forward = _compiled_forwards[key] = torch.compile(_forward)
    return CompiledModel(model, forward)


def _channels_last(batch: Batch) -> Batch:
    """The batch's image tensors (4-D float) in channels-last format, to match a channels-last model."""
    return {key: value.contiguous(memory_format=torch.channels_last) if value.ndim == 4 and value.is_floating_point()
            else value for key, value in batch.items()}


def _clamp_logit_scale(model: nn.Module) -> None:
    """Keep exp(logit_scale) ≤ 100, as CLIP and the CleanCLIP code do after every step."""
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        with torch.no_grad():
            scale.clamp_(0, MAX_LOGIT_SCALE)
