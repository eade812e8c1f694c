"""BadCLIP (Liang et al., "BadCLIP: Dual-Embedding Guided Backdoor Attack on Multimodal Contrastive Learning",
CVPR 2024): a patch optimised on a surrogate CLIP so that triggered images embed next to the target's captions
and the target's images, then pasted on randomly chosen pairs whose captions are replaced by target captions.

Code: ``LiangSiyuan21/BadCLIP`` @ ``a7b1876d292e1fb2b500b65cb96eb4f832cb6a27``; the patch optimiser
``src/embeding_optimize_patch.py``, the poison builder ``backdoor/create_backdoor_data.py`` (reference §1). The
released trigger's configuration, read from its file name (``tnature_eda_aug_bs64_ep50_16_middle_01_05_pos_neg_
tri*500``), is what this module implements:

* the patch ``p ~ clip(N(0.5, 0.25²), 0, 1)`` (3 × s × s) is pasted, clipped to [0, 1], in the middle of the
  image (``location = "middle"``; the corners are also offered);
* Adam on ``p`` alone (the surrogate is frozen, in eval mode) minimises, per batch of natural target pairs,
  ``L_T + w·TripletMargin(z̃, P, N; margin 1, p = 2)``, with ``L_T`` the CLIP loss between the triggered images
  and their own captions (at the surrogate's logit scale), ``P`` random rows of the bank of clean target-image
  embeddings and ``N`` the batch's clean, un-triggered embeddings in a random order; ``w = 500``;
* with probability ½ a batch is replaced by its AutoAugment views (CleanCLIP's batched ImageNet policy,
  :mod:`benchmark.augment.image`) before the trigger is pasted;
* poisoning is the dirty-label recipe: ``count`` pairs drawn uniformly at random get the trigger and a caption
  naming the target (:class:`attacks.base.Attack`'s default).

Deviations, on purpose:

* Surrogate: the authors optimise against OpenAI's pretrained RN50, the model their victim is then finetuned
  from. cleanbench's victims are trained from scratch, so the surrogate is, as for label-consistent's PGD
  (:mod:`attacks.surrogate`), a CLIP of the victim's architecture trained from a seed on the clean pairs of the
  attack context (disjoint from the victim's data), never the victim.
* Data: the authors optimise on 10,000 CC3M pairs whose captions contain "banana" and take the positives from
  1,922 other banana pairs. Here the target pairs of the clean set (label = target, or a caption naming the
  target or a synonym) are split at random, ``positive_fraction`` (default 0.16 = 1,922 / 11,922) for the
  positive bank and the rest for optimisation, so the two stay disjoint as in the code.
* Scale: the 16 px patch on 224 px images becomes ``patch_size`` (default ``None``: 16·size/224, at least 4 px;
  4 px on 32 px images, the size of this preset's BadNet patch, since 2.3 px would hardly be a pattern). The
  authors' 50 epochs of 64-pair batches over 10,000 pairs make 7,800 Adam steps at lr 1e-3; a preset's clean
  set holds a few hundred target pairs, so 50 epochs make a few hundred steps, and the default lr is 1e-2
  (``lr``) so the patch can travel as far.
* Captions: the authors poison with natural banana captions (128 drawn from their positive file); here the
  preset's target captions (``target.caption``), the only natural target captions a preset has.
* Not reproduced: EDA of the captions (a no-op in their code: only the attention mask changes, which the text
  tower ignores); ``autocast`` without a grad scaler (float32 here); the cv2 write of the patch as a BGR JPEG
  (the optimised tensor itself is the trigger here, stored losslessly); the unseeded ``np.random`` draw.
* Randomness comes from generators seeded by the attack's seed.

The optimised patch is expensive and is needed at poisoning, at every cell's evaluation and by the gallery, so
it is made on first use (building the attack stays cheap: the planner builds every attack) and, when the
context has a ``cache_dir``, stored there under a content key of everything that determines it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attacks import ATTACKS
from attacks.base import Attack, Pairs, PoisonManifest, PoisonTarget, target_pair_indices
from attacks.surrogate import train_surrogate
from benchmark.config import check_range, config_dict
from benchmark.data.pairs import PairSet, to_float
from benchmark.errors import UserError
from benchmark.seeding import derive_seed
from benchmark.storage import atomic_path, content_key

PATCH_FILE = "patch.safetensors"


@dataclass(frozen=True)
class BadClipConfig:
    patch_size: int | None = None  # None: the authors' 16 px at 224 px, scaled to the image size (≥ 4 px)
    location: Literal["middle", "top-left", "top-right", "bottom-left", "bottom-right"] = "middle"
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-2
    text_weight: float = 1.0  # weight of L_T, the CLIP loss of the triggered images and their captions
    triplet_weight: float = 500.0
    margin: float = 1.0
    augment_prob: float = 0.5  # chance that a batch is replaced by its AutoAugment views
    positive_fraction: float = 0.16  # share of the target pairs that form the positive bank
    surrogate_epochs: int = 3
    surrogate_lr: float = 1e-3
    surrogate_batch_size: int = 128

    def __post_init__(self) -> None:
        if self.patch_size is not None:
            check_range("patch_size", self.patch_size, 1, 1024)
        check_range("epochs", self.epochs, 1, 10_000)
        check_range("batch_size", self.batch_size, 2, 100_000)
        check_range("lr", self.lr, 0.0, 1.0, low_inclusive=False)
        check_range("text_weight", self.text_weight, 0.0, 1e6)
        check_range("triplet_weight", self.triplet_weight, 0.0, 1e6)
        check_range("margin", self.margin, 0.0, 100.0)
        check_range("augment_prob", self.augment_prob, 0.0, 1.0)
        check_range("positive_fraction", self.positive_fraction, 0.0, 1.0, low_inclusive=False,
                    high_inclusive=False)
        check_range("surrogate_epochs", self.surrogate_epochs, 1, 1_000)
        check_range("surrogate_lr", self.surrogate_lr, 0.0, 1.0, low_inclusive=False)
        check_range("surrogate_batch_size", self.surrogate_batch_size, 2, 1_000_000)


@dataclass(frozen=True)
class OptimisedPatch:
    """The trigger (float32, 3 × s × s, in [0, 1]) and how its optimisation went, as stored in the cache."""

    patch: torch.Tensor
    record: dict = field(default_factory=dict)  # losses, pair counts, the surrogate's final loss


@ATTACKS.register()
class BadClip(Attack):
    """A patch optimised on a surrogate CLIP towards the target's captions and images; dirty-label poisoning."""

    name = "badclip"
    version = "1"
    Config = BadClipConfig

    def setup(self) -> None:
        size = self.context.image_size
        self.patch_size = self.config.patch_size or max(4, round(16 * size / 224))
        if self.patch_size > size:
            raise UserError(f"attacks.{self.name}.patch_size = {self.patch_size} does not fit in {size}x{size} "
                            f"images; allowed: [1, {size}]")
        self._optimised: OptimisedPatch | None = None  # made or loaded on first use: planning stays cheap

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        patch = self.optimised().patch
        return paste(images, patch.to(images.device, images.dtype), self.config.location)

    def poison_selected(self, chosen: PairSet, indices: torch.Tensor, target: PoisonTarget,
                        generator: torch.Generator) -> tuple[PairSet, PoisonManifest]:
        """The default dirty-label poisoning; the manifest also records the patch's key and optimisation."""
        poisoned, manifest = super().poison_selected(chosen, indices, target, generator)
        manifest.extra.update(patch_key=self.cache_key(), patch_size=self.patch_size, **self.optimised().record)
        return poisoned, manifest

    def cache_key(self) -> str:
        """The content key of the patch: everything that determines it (attack, config, seed, model, clean data,
        target, image size)."""
        context, target = self.context, self.context.target
        described = None if target is None else [target.index, target.name, list(target.synonyms)]
        return content_key("attack-artifact", self.name, self.version, config_dict(self.config), context.seed,
                           context.model_name, context.clean_data_key, context.image_size, described)

    def cache_path(self) -> Path | None:
        """Where the patch is stored; None without a cache folder or without a key of the clean data."""
        if self.context.cache_dir is None or not self.context.clean_data_key:
            return None
        return Path(self.context.cache_dir) / self.cache_key() / PATCH_FILE

    def optimised(self) -> OptimisedPatch:
        """The optimised patch: from memory, from the cache, or optimised now (and then cached)."""
        if self._optimised is None:
            path = self.cache_path()
            found = load_patch(path, self.patch_size) if path is not None else None
            if found is None:
                found = self._optimise()
                if path is not None:
                    save_patch(path, found)
            self._optimised = found
        return self._optimised

    def _optimise(self) -> OptimisedPatch:
        context, config = self.context, self.config
        if context.target is None:
            raise UserError(f"attacks.{self.name} needs the target in the attack context (the runner provides it)")
        surrogate, tokenizer, surrogate_loss = train_surrogate(
            context, tag=self.name, purpose=f"attacks.{self.name}", epochs=config.surrogate_epochs,
            lr=config.surrogate_lr, batch_size=config.surrogate_batch_size)
        generator = torch.Generator().manual_seed(derive_seed(context.seed, self.name, "patch"))
        optimise_set, bank = split_target_pairs(context.clean_pairs, context.target, config.positive_fraction,
                                                generator, self.name)
        patch, losses = optimise_patch(surrogate, tokenizer, optimise_set, bank.images, config, self.patch_size,
                                       generator, context.device)
        record = {"patch_loss_first_epoch": losses[0], "patch_loss_last_epoch": losses[-1],
                  "patch_pairs": len(optimise_set), "patch_positives": len(bank),
                  "surrogate_final_loss": surrogate_loss}
        return OptimisedPatch(patch, record)


def paste(images: torch.Tensor, patch: torch.Tensor, location: str) -> torch.Tensor:
    """``images`` (B, C, H, W) with ``patch`` (C, s, s) pasted at ``location``; the input is not modified and
    the result is differentiable in ``patch``."""
    height, width = images.shape[-2:]
    size = patch.shape[-1]
    if location == "middle":  # the authors' [c - s/2, c + s/2) around c = (H/2, W/2)
        top, left = height // 2 - size // 2, width // 2 - size // 2
    else:
        top = 0 if location.startswith("top") else height - size
        left = 0 if location.endswith("left") else width - size
    out = images.clone()
    out[:, :, top : top + size, left : left + size] = patch
    return out


def badclip_loss(triggered: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor, positives: torch.Tensor,
                 negatives: torch.Tensor, *, text_weight: float, triplet_weight: float,
                 margin: float) -> torch.Tensor:
    """``text_weight·L_T + triplet_weight·TripletMargin(triggered, positives, negatives)`` on normalised
    embeddings: ``L_T`` is the symmetric CLIP loss of the triggered images and their captions
    (``src/embeding_optimize_patch.py:L108-126``), the triplet term pulls them to the target's image
    embeddings and pushes them from the clean ones (``L140-165``)."""
    from open_clip import ClipLoss

    text_loss = ClipLoss()(triggered, texts, logit_scale)
    triplet = F.triplet_margin_loss(triggered, positives, negatives, margin=margin, p=2)
    return text_weight * text_loss + triplet_weight * triplet


def split_target_pairs(pairs: Pairs | None, target: PoisonTarget, positive_fraction: float,
                       generator: torch.Generator, name: str) -> tuple[PairSet, PairSet]:
    """The target pairs of ``pairs`` (label = target, or a caption naming it), split at random into the pairs
    the patch is optimised on and the disjoint positive bank (``positive_fraction`` of them, at least one)."""
    if pairs is None:
        raise UserError(f"attacks.{name} needs the clean pairs in the attack context (the runner provides them)")
    found = target_pair_indices(pairs, target).tolist()
    if len(found) < 2:
        raise UserError(f"attacks.{name}: the clean pairs hold {len(found)} pairs of the target '{target.name}'; "
                        "the patch needs at least 2 (one to optimise on, one positive)")
    order = torch.tensor(found)[torch.randperm(len(found), generator=generator)]
    positives = min(len(found) - 1, max(1, round(positive_fraction * len(found))))
    chosen = [order[positives:].sort().values, order[:positives].sort().values]
    if isinstance(pairs, PairSet):
        return pairs.subset(chosen[0]), pairs.subset(chosen[1])
    return pairs.take(chosen[0])[0], pairs.take(chosen[1])[0]


def optimise_patch(model: nn.Module, tokenizer, pairs: PairSet, positive_images: torch.Tensor,
                   config: BadClipConfig, patch_size: int, generator: torch.Generator,
                   device: torch.device) -> tuple[torch.Tensor, list[float]]:
    """Optimise the trigger on the frozen ``model``; returns the patch (float32, CPU, in [0, 1]) and the mean
    loss of each epoch."""
    from benchmark.augment.image import BatchAutoAugment
    from benchmark.data.batches import Normalizer

    normalize = Normalizer(model)
    augment = BatchAutoAugment()

    def embed(images: torch.Tensor) -> torch.Tensor:
        return model.encode_image(normalize(images), normalize=True)

    with torch.no_grad():
        bank = torch.cat([embed(to_float(chunk).to(device)) for chunk in positive_images.split(256)])
    tokens = tokenizer(pairs.captions)
    channels = pairs.images.shape[1]
    start = (0.5 + 0.25 * torch.randn(channels, patch_size, patch_size, generator=generator)).clamp(0.0, 1.0)
    patch = start.to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([patch], lr=config.lr)
    batch_size = min(config.batch_size, len(pairs))
    epoch_losses = []
    for _ in range(config.epochs):
        order, total, steps = torch.randperm(len(pairs), generator=generator), 0.0, len(pairs) // batch_size
        for step in range(steps):
            index = order[step * batch_size : (step + 1) * batch_size]
            images = pairs.images[index]
            if float(torch.rand(1, generator=generator)) < config.augment_prob:
                images = augment(images, generator)
            images = to_float(images).to(device)
            rows = (torch.randperm(len(bank), generator=generator)[:batch_size] if len(bank) >= batch_size
                    else torch.randint(len(bank), (batch_size,), generator=generator))
            with torch.no_grad():
                negatives = embed(images)[torch.randperm(batch_size, generator=generator).to(device)]
                texts = model.encode_text(tokens[index].to(device), normalize=True)
            triggered = embed(paste(images, patch.clamp(0.0, 1.0), config.location))
            loss = badclip_loss(triggered, texts, model.logit_scale.exp(), bank[rows.to(device)], negatives,
                                text_weight=config.text_weight, triplet_weight=config.triplet_weight,
                                margin=config.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        epoch_losses.append(total / steps)
    return patch.detach().clamp(0.0, 1.0).float().cpu(), epoch_losses


def save_patch(path: Path, optimised: OptimisedPatch) -> None:
    """Write the patch and its record atomically (safetensors: tensors and strings, nothing executable)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"patch": optimised.patch.contiguous()}, str(tmp), metadata={"record": json.dumps(optimised.record)})


def load_patch(path: Path, patch_size: int) -> OptimisedPatch | None:
    """The cached patch at ``path``; None when missing or damaged (then it is optimised again, never trusted)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            patch = handle.get_tensor("patch")
            record = json.loads((handle.metadata() or {})["record"])
    except Exception:  # noqa: BLE001 - any unreadable file is recomputed
        return None
    shape_ok = patch.ndim == 3 and tuple(patch.shape[1:]) == (patch_size, patch_size)
    if not shape_ok or patch.dtype != torch.float32 or not bool(((patch >= 0) & (patch <= 1)).all()):
        return None
    return OptimisedPatch(patch, record)
