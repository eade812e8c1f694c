"""PAR, Perturb and Recover (Singh, Croce, Hein, arXiv 2412.00727): finetuning on clean pairs with the CLIP loss
while pushing the embeddings away from those of the (possibly backdoored) model it starts from.

Source: the authors' code, github.com/nmndeep/PerturbAndRecover @ a720440047a93d9a6ab7c749a8b55fff3ed6e9e6:
``train.py`` L39-74 (defaults), L102-118 (the two copies), L343-389 (the training step); ``losses.py`` L9-118
(the loss); ``utils.py`` L27-199 (the augmentation), L410-432 (the LR schedule). What is followed:

- Two copies of the victim: θ₀ frozen (no gradient, eval mode) and θ trained, both from the victim's weights.
- Per batch, one augmented view x̂ of each image (the code's ``aug_img``; its ``clean_img`` is never used), made
  per image: with p = 0.5 non-negative noise ``clip(N(0, 0.2²), 0, 1)`` is added and the image clipped to
  [0, 1]; then CLIP's Normalize; then with p = 0.5 ``RandomErasing(scale=(0.005, 0.01), ratio=(1, 1),
  value=0)``: a square of 0.5–1 % of the area set to 0 on the normalised image, its side ``round(√area)``, kept
  only when it is smaller than the image less the code's 4-pixel margin, 10 tries (``utils.py`` L65-99,
  L142-151, L190-199). Captions are not augmented.
- ``u, v`` = θ's normalised embeddings of x̂ and the caption; ``u₀, v₀`` = θ₀'s, of the same x̂ and caption.
- ``L = L_CLIP(u, v, s) − ½·(D_img·[D_img ≤ τ] + D_txt·[D_txt ≤ τ])`` (``losses.py`` L37-98) with
  ``D = mean_i ‖u_i − u₀_i‖²`` (squared L2 summed over dimensions, mean over the batch; the batch-mean scalar
  is zeroed above τ, not each sample), τ = 2.15 (``--loss-thresh``), and ``s = exp(logit_scale)`` taken as a
  constant (``.item()`` in ``train.py`` L364): the temperature is not trained.
- Under DDP the CLIP loss and both distances span the global batch (features all-gathered with gradients), as
  the code all-gathers them.
- Weight decay as the code groups it: none on gains, biases and norms (and the untrained logit scale).

Departures from the code, all deliberate:
- Budget: epochs, batch size, LR, warm-up, weight decay and AdamW betas/eps come from the preset's
  ``[finetune]`` recipe, which every post-training defense shares for a fair comparison (the authors: AdamW
  betas (0.9, 0.98), wd 1e-4, 2 epochs at a global batch of 2,048 on 250k pairs, AMP). Their schedule, linear
  *down* from 3e-5 to the peak 3e-6 over the warm-up and then cosine to 1e-9, is replaced by the recipe's
  warm-up-then-cosine schedule (:func:`benchmark.training.train`).
- The logit scale gets an exactly-zero gradient (``+ 0·s``) rather than none, so that DistributedDataParallel,
  which expects a gradient for every parameter, accepts it; AdamW then leaves it unchanged, as in the code.
- The augmentation works on the decoded uint8 images at the model's resolution, a batch at a time with a seeded
  generator (per-image draws, the code's probabilities and sizes), not on a 224 px PIL image per DataLoader
  worker with torch's global generator; the erased side is rounded at the model's resolution, so on a small
  image the erased area can fall just outside 0.5–1 % (32 px: 4 or 9 of 1,024 pixels).
- The data are the preset's clean pairs, shuffled every epoch (the code shuffles only under DDP).
- The final epoch's model is returned (the code saves a checkpoint every epoch and uses the last).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import distributed
from benchmark.config import check_range
from benchmark.data.batches import Batch, Normalizer, pair_batches
from benchmark.data.loader import Pairs
from benchmark.distributed import clip_loss_options, gather_global
from benchmark.errors import UserError
from benchmark.seeding import derive_seed
from benchmark.training import train
from defenses import DEFENSES
from defenses.base import Defense, DefenseContext, check_recipe_overrides

ERASE_ATTEMPTS = 10  # torchvision's RandomErasing.get_params, as the code keeps it
ERASE_MARGIN = 4  # the code's change to get_params: the square must be smaller than the side less 4 pixels
FROZEN_FORWARD_COST = 1 / 3  # a forward pass without backward, in training passes (benchmark.runner.cost)


@dataclass(frozen=True)
class PARConfig:
    """The code's defaults; unset (None) recipe fields take the preset's ``[finetune]`` recipe. ``tuning``
    records how the hyperparameters were chosen."""

    loss_threshold: float = 2.15  # τ: the distance term is dropped once a batch-mean distance exceeds it
    perturb_weight: float = 0.5  # the weight of D_img + D_txt
    noise_std: float = 0.2
    noise_probability: float = 0.5
    erase_probability: float = 0.5
    erase_scale: tuple[float, float] = (0.005, 0.01)  # the erased square's share of the image area
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    tuning: Literal["fixed-in-preset"] = "fixed-in-preset"

    def __post_init__(self) -> None:
        # D is a squared distance between unit vectors: 0 ≤ D ≤ 4, so τ = 4 keeps the term always on.
        check_range("loss_threshold", self.loss_threshold, 0.0, 4.0)
        check_range("perturb_weight", self.perturb_weight, 0.0, 1_000.0)
        check_range("noise_std", self.noise_std, 0.0, 10.0)
        check_range("noise_probability", self.noise_probability, 0.0, 1.0)
        check_range("erase_probability", self.erase_probability, 0.0, 1.0)
        if len(self.erase_scale) != 2:
            raise UserError(f"erase_scale = {list(self.erase_scale)!r} must be two numbers: [smallest, largest] "
                            f"share of the image area")
        low, high = self.erase_scale
        check_range("erase_scale[0]", low, 0.0, 1.0, low_inclusive=False)
        check_range("erase_scale[1]", high, low, 1.0)
        check_recipe_overrides(self)


def add_clipped_noise(images: torch.Tensor, std: float, probability: float,
                      generator: torch.Generator) -> torch.Tensor:
    """The code's ``RandomApply([AddGaussianNoise(0, std)], p)`` per image, on float images in [0, 1]: the noise
    ``clip(N(0, std²), 0, 1)`` only brightens, and the result is clipped to [0, 1]."""
    chosen = torch.rand(len(images), generator=generator, device=images.device) < probability
    noise = (torch.randn(images.shape, generator=generator, device=images.device) * std).clamp(0, 1)
    return torch.where(chosen.view(-1, 1, 1, 1), (images + noise).clamp(0, 1), images)


def random_erase(images: torch.Tensor, probability: float, scale: tuple[float, float],
                 generator: torch.Generator) -> torch.Tensor:
    """The code's ``RandomErasing(p, scale, ratio=(1, 1), value=0)`` per image of a (N, C, H, W) batch: a square
    of side ``round(√(H·W·U(scale)))`` at a uniform place, set to 0 in every channel."""
    count, _, height, width = images.shape
    device = images.device
    fires = torch.rand(count, generator=generator, device=device) < probability
    low, high = scale
    areas = height * width * (low + (high - low) * torch.rand(count, ERASE_ATTEMPTS, generator=generator,
                                                               device=device))
    sides = areas.sqrt().round().long()
    fits = (sides < height - ERASE_MARGIN) & (sides < width - ERASE_MARGIN)
    side = sides.gather(1, fits.int().argmax(dim=1, keepdim=True)).squeeze(1)  # the first try that fits
    fires &= fits.any(dim=1)  # none fits: the image is left as it is
    top = (torch.rand(count, generator=generator, device=device) * (height - side + 1)).floor().long()
    left = (torch.rand(count, generator=generator, device=device) * (width - side + 1)).floor().long()
    rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
    in_rows = (rows >= top[:, None]) & (rows < (top + side)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + side)[:, None])
    square = in_rows[:, :, None] & in_cols[:, None, :] & fires[:, None, None]
    return images.masked_fill(square[:, None], 0.0)


class PerturbAndNormalize(Normalizer):
    """PAR's augmented view of a batch, normalised: noise, Normalize, erasing, drawn per image from a generator
    seeded with ``seed`` (one per device). :func:`~benchmark.data.batches.pair_batches` calls it on every batch
    in place of the plain :class:`Normalizer`."""

    def __init__(self, model: nn.Module, config: PARConfig, seed: int) -> None:
        super().__init__(model)
        self.config = config
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """The seeded generator on ``device``, made on first use."""
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Accepts uint8 images or float images in [0, 1]; returns normalised float images."""
        config = self.config
        generator = self.generator(images.device)
        floats = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
        if config.noise_probability > 0:
            floats = add_clipped_noise(floats, config.noise_std, config.noise_probability, generator)
        normalised = super().__call__(floats)
        if config.erase_probability > 0:
            normalised = random_erase(normalised, config.erase_probability, config.erase_scale, generator)
        return normalised


def squared_distance(current: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """The batch mean of ``‖current_i − original_i‖²`` (summed over dimensions): the code's ``l2``."""
    return (current - original).pow(2).sum(dim=1).mean()


def below_threshold(distance: torch.Tensor, threshold: float) -> torch.Tensor:
    """``distance`` where it is at most ``threshold``, else 0 (the code's ``threshold_tensor(D, τ, 0.0)``)."""
    return torch.where(distance > threshold, torch.zeros_like(distance), distance)


def par_objective(images: torch.Tensor, texts: torch.Tensor, frozen_images: torch.Tensor,
                  frozen_texts: torch.Tensor, logit_scale: torch.Tensor, *, loss_threshold: float = 2.15,
                  perturb_weight: float = 0.5) -> torch.Tensor:
    """``L_CLIP(u, v, s) − w·(D_img·[D_img ≤ τ] + D_txt·[D_txt ≤ τ])`` on L2-normalised features, this rank's
    (the distances and the CLIP loss span the global batch under DDP). ``logit_scale`` is ``s = exp(·)`` and is
    used as a constant: no gradient reaches it."""
    from open_clip import ClipLoss

    clip = ClipLoss(**clip_loss_options())(images, texts, logit_scale.detach())
    images, frozen_images, texts, frozen_texts = gather_global(images, frozen_images, texts, frozen_texts)
    image_term = below_threshold(squared_distance(images, frozen_images), loss_threshold)
    text_term = below_threshold(squared_distance(texts, frozen_texts), loss_threshold)
    return clip - perturb_weight * (image_term + text_term)


def par_loss(model: nn.Module, frozen: nn.Module, batch: Batch, *, loss_threshold: float = 2.15,
             perturb_weight: float = 0.5) -> torch.Tensor:
    """PAR's loss of a batch of augmented views (``images``) and captions (``texts``): the trained ``model``
    against the ``frozen`` copy, both on the same inputs."""
    out = model(batch["images"], batch["texts"])
    with torch.no_grad():
        reference = frozen(batch["images"], batch["texts"])

    def unit(features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=-1)

    scale = out["logit_scale"]
    loss = par_objective(unit(out["image_features"]), unit(out["text_features"]), unit(reference["image_features"]),
                         unit(reference["text_features"]), scale, loss_threshold=loss_threshold,
                         perturb_weight=perturb_weight)
    return loss + 0.0 * scale  # an exactly-zero gradient for the logit scale, so DDP sees every parameter used


def frozen_copy(model: nn.Module) -> nn.Module:
    """θ₀: a copy of ``model`` with its weights as they are now, in eval mode, with no gradients."""
    frozen = copy.deepcopy(model)
    frozen.requires_grad_(False)
    return frozen.eval()


@DEFENSES.register()
class PAR(Defense):
    """CLIP-loss finetuning on augmented clean pairs, pushed away from the frozen victim's embeddings until the
    mean squared distance reaches τ (methods reference §2a)."""

    name = "par"
    version = "1"
    Config = PARConfig

    def passes_per_pair(self) -> float:
        """One training pass of the augmented view plus the frozen copy's forward of it (image and caption), which
        has no backward: about a third of a pass."""
        return 1.0 + FROZEN_FORWARD_COST

    def apply(self, model: nn.Module, clean_data: Pairs, context: DefenseContext) -> nn.Module:
        config = self.config
        if len(clean_data) < 2:
            raise UserError(f"{self.name} needs at least 2 clean pairs, got {len(clean_data)}")
        recipe = context.recipe  # the preset's [finetune] with this config's recipe fields set
        frozen = frozen_copy(model)
        augment = PerturbAndNormalize(model, config, derive_seed(context.seed, "par-augment",
                                                                 str(distributed.world().rank)))
        batches = pair_batches(clean_data, context.tokenizer, augment, recipe.batch_size,
                               torch.Generator().manual_seed(context.seed), context.device)

        def loss_fn(net: nn.Module, batch: Batch) -> torch.Tensor:
            return par_loss(net, frozen, batch, loss_threshold=config.loss_threshold,
                            perturb_weight=config.perturb_weight)

        train(model, batches, recipe, loss_fn=loss_fn, reporter=context.reporter, description=f"defense {self.name}")
        return model
