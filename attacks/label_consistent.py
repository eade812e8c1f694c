"""Label-consistent backdoor: poison only pairs that already belong to the target, and keep their captions.

Two variants, chosen with ``perturbation``:

* ``"none"`` (default), the CleanCLIP paper's attack (reference §2.4): among the pairs whose caption names the
  target, ``count`` are drawn at random and get the BadNet trigger (the patch of :mod:`attacks.badnet`, with
  the same config keys and defaults); the caption is kept. No adversarial perturbation.
* ``"pgd"``, the idea of Turner, Tsipras & Madry, "Label-Consistent Backdoor Attacks" (2019), adapted to
  CLIP: before the trigger, each chosen image gets a PGD perturbation within an L∞ ball of radius
  ``epsilon`` (default 8/255) that lowers the cosine similarity between the image's embedding and its own
  caption's embedding under a surrogate CLIP trained on the clean pairs. The image's own content then
  explains its caption less well, so the trigger becomes the easiest feature to associate with the caption.

Which pairs count as target pairs: those whose label is the target class, or whose caption contains the
target's name or one of its synonyms (a case-sensitive substring test, as the CleanCLIP code's
``"banana" in caption``, so plurals match too). The poison count can be at most the number of such pairs.

Deviations, on purpose:

* The CleanCLIP code matches the word ``banana`` only; cleanbench also matches the preset's synonyms of the
  target and, where labels are known, the target label (captions of labelled presets always name a synonym).
* Turner et al. perturb against a classifier's loss on the true label (or interpolate in a GAN's latent
  space); here the surrogate is a CLIP model and the loss is the image–caption cosine similarity. PGD starts
  at the clean image (no random start), takes ``pgd_steps`` signed-gradient steps of ``pgd_step_size``, and is
  not followed by Turner et al.'s reduced-visibility trigger.
* The surrogate has the victim's architecture and is trained from a seed on the defender-disjoint clean pairs
  of the preset (``AttackContext.clean_pairs``) for ``surrogate_epochs``: an attacker with data like the
  victim's, not the victim itself.
* All randomness comes from seeded generators (the CleanCLIP code sets no seed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attacks import ATTACKS
from attacks.badnet import BadNet, BadNetConfig
from attacks.base import Attack, Pairs, PoisonManifest, PoisonTarget, target_pair_indices
from attacks.surrogate import train_surrogate
from benchmark.config import check_range
from benchmark.data.pairs import PairSet, to_float, to_uint8
from benchmark.errors import UserError


@dataclass(frozen=True)
class LabelConsistentConfig(BadNetConfig):
    perturbation: Literal["none", "pgd"] = "none"
    epsilon: float = 8 / 255
    pgd_steps: int = 10
    pgd_step_size: float = 2 / 255
    surrogate_epochs: int = 3
    surrogate_lr: float = 1e-3
    surrogate_batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("epsilon", self.epsilon, 0.0, 1.0, low_inclusive=False)
        check_range("pgd_steps", self.pgd_steps, 1, 10_000)
        check_range("pgd_step_size", self.pgd_step_size, 0.0, 1.0, low_inclusive=False)
        check_range("surrogate_epochs", self.surrogate_epochs, 1, 1_000)
        check_range("surrogate_lr", self.surrogate_lr, 0.0, 1.0, low_inclusive=False)
        check_range("surrogate_batch_size", self.surrogate_batch_size, 2, 1_000_000)


@ATTACKS.register()
class LabelConsistent(Attack):
    """BadNet patch on target-class pairs that keep their captions; optionally after a PGD push away from them."""

    name = "label-consistent"
    version = "1"
    Config = LabelConsistentConfig
    dirty_label = False

    def setup(self) -> None:
        fields = {f.name for f in dataclasses.fields(BadNetConfig)}
        trigger_config = BadNetConfig(**{key: getattr(self.config, key) for key in fields})
        self.trigger = BadNet(trigger_config, context=self.context)

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.trigger.apply(images, generator)

    def select(self, pairs: Pairs, target: PoisonTarget, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` pairs drawn at random among those whose label or caption is the target."""
        return select_target_pairs(self.name, pairs, target, count, generator)

    def poison_selected(self, chosen: PairSet, indices: torch.Tensor, target: PoisonTarget,
                        generator: torch.Generator) -> tuple[PairSet, PoisonManifest]:
        """Trigger the chosen target pairs (after PGD, if configured); captions stay as they are."""
        captions = list(chosen.captions)
        images = to_float(chosen.images)
        extra: dict = {"perturbation": self.config.perturbation, "captions": "kept"}
        if self.config.perturbation == "pgd" and len(indices):
            surrogate, tokenizer, loss = self._surrogate()
            perturbed, before, after = pgd_away_from_captions(
                surrogate, tokenizer(captions), images, self.config.epsilon, self.config.pgd_steps,
                self.config.pgd_step_size, self.context.device)
            extra.update(epsilon=self.config.epsilon, linf=float((perturbed - images).abs().max()),
                         similarity_before=before, similarity_after=after, surrogate_final_loss=loss)
            images = perturbed
        poisoned = chosen.images.clone()
        if len(indices):
            poisoned = to_uint8(self.apply(images, generator))
        return (PairSet(poisoned, captions, chosen.labels.clone()),
                self.manifest(indices, target, captions, list(captions), extra))

    def _surrogate(self) -> tuple[nn.Module, object, float]:
        """A CLIP of the victim's architecture trained, from a seed, on the clean pairs: the attacker's stand-in."""
        config = self.config
        return train_surrogate(self.context, tag="label-consistent",
                               purpose="attacks.label-consistent: perturbation = 'pgd'",
                               epochs=config.surrogate_epochs, lr=config.surrogate_lr,
                               batch_size=config.surrogate_batch_size)


def select_target_pairs(attack: str, pairs: Pairs, target: PoisonTarget, count: int,
                        generator: torch.Generator) -> torch.Tensor:
    """The selection of every clean-label attack (this one, ``sig``): ``count`` indices drawn at random among
    the pairs whose label is the target or whose caption names it or a synonym (module docstring). ``attack``
    names the attack in the error raised when there are fewer such pairs than ``count``."""
    candidates = target_pair_indices(pairs, target)
    if count > len(candidates):
        raise UserError(f"attacks.{attack}: poison count {count} is larger than the {len(candidates)} training "
                        f"pairs of the target '{target.name}' (of {len(pairs)}); a clean-label attack can poison at "
                        f"most those: lower the poison rate to ≤ {len(candidates) / len(pairs):.4f}")
    return candidates[torch.randperm(len(candidates), generator=generator)[:count]].sort().values


def pgd_away_from_captions(model: nn.Module, tokens: torch.Tensor, images: torch.Tensor, epsilon: float, steps: int,
                           step_size: float, device: torch.device,
                           batch_size: int = 256) -> tuple[torch.Tensor, float, float]:
    """L∞ PGD that lowers the image–caption cosine similarity; returns the images and the mean similarity
    before and after. The result stays within ``epsilon`` of ``images`` and inside [0, 1]."""
    from benchmark.data.batches import Normalizer

    normalize = Normalizer(model)

    def similarity(batch: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return (model.encode_image(normalize(batch), normalize=True) * text).sum(1)

    out, before, after = [], 0.0, 0.0
    for start in range(0, len(images), batch_size):
        clean = images[start : start + batch_size].to(device)
        with torch.no_grad():
            text = model.encode_text(tokens[start : start + batch_size].to(device), normalize=True)
            before += float(similarity(clean, text).sum())
        adv = clean.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            grad, = torch.autograd.grad(similarity(adv, text).sum(), adv)
            with torch.no_grad():
                adv = adv - step_size * grad.sign()
                adv = torch.minimum(torch.maximum(adv, clean - epsilon), clean + epsilon).clamp(0.0, 1.0)
        with torch.no_grad():
            after += float(similarity(adv, text).sum())
        out.append(adv.cpu())
    return torch.cat(out), before / len(images), after / len(images)
