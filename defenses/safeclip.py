"""SafeCLIP (Yang, Gao, Mirzasoleiman, ICML 2024, arXiv 2310.05862): pretraining CLIP on the poisoned pairs by
warming up with unimodal contrastive learning, then splitting the pairs every epoch into a safe set, trained with
the CLIP loss, and a risky set, trained with unimodal contrastive learning only; the safe set grows each epoch.

Followed from the authors' code (BigML-CS-UCLA/SafeCLIP @ 91488ce, ``SafeCLIP/src``; methods reference §4):

- Phases (``main.py`` L162-231): in-modal warm-up on all pairs; CLIP warm-up on all pairs at a small LR
  (``filter_lr`` = 5e-6 = 0.01 × the 5e-4 base); then every epoch: the cosine similarity of every pair under the
  current model in eval mode (on view 1, the augmented pair, ``evaluate.py`` L278-309, in batches of 2,048), a
  two-component 1-D Gaussian mixture on the similarities, ``p_i`` = the posterior of the component with the larger
  mean (``samplers.py`` L135-161); at the first split safe = ``{p ≥ 0.9}`` and ``r = |safe|/N``, later the top
  ``⌊rN⌋`` pairs by ``p``; after each split ``r ← min(r + 0.01, 0.85)``; one in-modal pass over the risky pairs
  (``cross_inmodal``), then one CLIP pass over the safe pairs. Subsets are batched with ``drop_last``.
- Losses (``train.py`` L11-83), views 1 and 2 of each pair: in-modal ``½[CE(s·Z²Z¹ᵀ) + CE(s·T²T¹ᵀ)]``; with the
  optional memory bank (``memory_bank_size`` > 0) ``Z¹``/``T¹`` are replaced by their nearest neighbours in one
  FIFO bank per modality, looked up before the batch's view-1 embeddings are enqueued (:class:`FeaturePool`);
  CLIP with ``cross_aug`` ``½[CE(s·Z¹T²ᵀ) + CE(s·T¹Z²ᵀ)]``, without it the plain CLIP loss on the originals.
  Under DDP the embeddings are gathered over ranks first, as in the code. The memory bank is off by default, as
  the code's flag is; its README's command turns it on (reference open question 14).

Deviations, on purpose:

- Budget: the preset's ``[victim]`` recipe (epochs, batch size, LR, warmup, AdamW settings), so SafeCLIP is
  compared with the victim it replaces (the code: RN50, 32 epochs, batch 128, lr 5e-4). The code's 32 epochs
  (5 in-modal warm-up, 1 CLIP warm-up, 26 filtered) are scaled to the recipe's E: ``5E/32`` and ``E/32``
  warm-up epochs rounded half up, each at least 1, the rest filtered (E = 5: 1, 1, 3; E = 32: 5, 1, 26). Below 3
  epochs the warm-ups shrink (the CLIP one first) so that one filtered epoch remains; ``inmodal_warmup`` and
  ``multimodal_warmup`` set them explicitly.
- LR schedule: each phase is one run of the engine (:func:`benchmark.training.train`), so a fresh AdamW per phase
  (the code keeps one optimizer). In-modal warm-up: the recipe's warmup and a cosine to 0 over the phase (the
  code: 10k warmup steps, cosine over 6 epochs' steps). CLIP warm-up: ``filter_lr_scale`` × the recipe's LR with
  a cosine to 0 over the phase, as the engine has no constant schedule (the code holds 5e-6). Filtered epochs:
  one cosine from the recipe's LR to 0, no warmup, shared by the risky and safe passes (the code's two schedulers
  share the base LR; their step counters run past the end, so its cosine overshoots: reference open question 13).
- Views: view 1 is an AutoAugment'ed image (ImageNet policy, drawn per image and visit) with an EDA caption drawn
  once; view 2 is the original image and caption: CleanCLIP's view pair (:mod:`benchmark.augment.views`), so
  the in-modal loss is CleanCLIP's ``L_SS`` (:func:`benchmark.training.self_supervised_loss`). The code uses two
  independent SimCLR-style augmentations (random resized crop, flip, colour jitter, grayscale, blur) and two EDA
  captions.
- Gaussian mixture: scikit-learn is not a dependency, so :func:`fit_mixture` is a 1-D EM with sklearn's defaults
  (full variance, ``tol`` 1e-3 on the mean log-likelihood, ``max_iter`` 100, ``reg_covar`` 1e-6, one init), but
  initialised from the exact optimal 2-means split of the values instead of k-means++ (``random_state=0``) and
  Lloyd's iterations. Checked against scikit-learn 1.9.1 (the code pins 1.1.2): from the same start the
  posteriors agree to 1e-13; on 40 random two-group similarity sets the start was k-means' in 25, and in the
  others, as EM stops at ``tol``, the posteriors differed by up to 0.04 (0.16 in one set of heavily overlapping
  groups, means 0.22 and 0.25).
  Fewer than two distinct similarities give every pair ``p = 0.5``.
- Ranking: ties in ``p`` (posteriors saturate at 1) go to the higher similarity, which the code's pre-sort by
  similarity suggests (its ``argsort`` is not stable); ``⌊rN⌋`` is taken with a 1e-9 tolerance so that r = 0.31
  of 100 pairs keeps 31, not 30.
- The training split must be in memory (its subsets change every epoch); the code's ``indices/*.pt`` files are
  not written (the split sizes are logged). bf16 autocast on CUDA instead of fp16 AMP with a gradient scaler.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.special import logsumexp
from torch import nn
from torch.utils.data import DataLoader

from benchmark import distributed
from benchmark.augment.image import BatchAutoAugment
from benchmark.augment.text import EDA
from benchmark.augment.views import AugmentedViews, default_augment_workers
from benchmark.config import check_range
from benchmark.data.batches import Batch, Normalizer
from benchmark.data.loader import Pairs
from benchmark.data.pairs import PairSet
from benchmark.device import current_runtime
from benchmark.errors import UserError
from benchmark.seeding import derive_seed
from benchmark.training import clip_loss, clip_ssl_loss, self_supervised_loss, train
from defenses import DEFENSES
from defenses.base import DefenseContext, TrainingDefense
from defenses.roclip import FeaturePool

SCORE_BATCH = 2_048  # the code's eval_batch_size for the similarity pass


@dataclass(frozen=True)
class SafeCLIPConfig:
    """The code's flags, by their names; ``inmodal_warmup``/``multimodal_warmup`` unset: scaled to the recipe's
    epochs; ``filter_lr_scale``: the CLIP warm-up's LR over the recipe's (the code's 5e-6 / 5e-4)."""

    inmodal_warmup: int | None = None
    multimodal_warmup: int | None = None
    filter_lr_scale: float = 0.01
    safe_threshold: float = 0.9
    update_filter_ratio: float = 0.01
    cap_filter_ratio: float = 0.85
    cross_aug: bool = True
    cross_inmodal: bool = True
    score_view: Literal["augmented", "original"] = "augmented"
    memory_bank_size: int = 0  # 0: off, the code's default; its README's command turns it on (default size 256)
    eda_alpha: float = 0.1
    num_workers: int | None = None  # None: 0 on the CPU, 2 on a GPU (see default_augment_workers)

    def __post_init__(self) -> None:
        for key in ("inmodal_warmup", "multimodal_warmup"):
            if getattr(self, key) is not None:
                check_range(key, getattr(self, key), 0, 10_000)
        check_range("filter_lr_scale", self.filter_lr_scale, 0.0, 1.0, low_inclusive=False)
        check_range("safe_threshold", self.safe_threshold, 0.0, 1.0)
        check_range("update_filter_ratio", self.update_filter_ratio, 0.0, 1.0)
        check_range("cap_filter_ratio", self.cap_filter_ratio, 0.0, 1.0)
        check_range("memory_bank_size", self.memory_bank_size, 0, 100_000_000)
        check_range("eda_alpha", self.eda_alpha, 0.0, 1.0)
        if self.num_workers is not None:
            check_range("num_workers", self.num_workers, 0, 256)

    def phases(self, epochs: int) -> tuple[int, int, int]:
        """(in-modal warm-up, CLIP warm-up, filtered) epochs out of ``epochs`` (see the module docstring)."""
        scaled = [max(1, math.floor(epochs * share / 32 + 0.5)) for share in (5, 1)]
        inmodal, clip = (value if value is not None else scaled[i]
                         for i, value in enumerate((self.inmodal_warmup, self.multimodal_warmup)))
        if self.multimodal_warmup is None:
            clip = max(0, min(clip, epochs - 1 - inmodal))
        if self.inmodal_warmup is None:
            inmodal = max(0, min(inmodal, epochs - 1 - clip))
        if inmodal + clip >= epochs:
            raise UserError(f"defenses.safeclip: inmodal_warmup = {inmodal} and multimodal_warmup = {clip} leave no "
                            f"filtered epoch of the victim's {epochs}; allowed: inmodal_warmup + multimodal_warmup "
                            f"< {epochs}")
        return inmodal, clip, epochs - inmodal - clip


# The Gaussian mixture ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mixture1D:
    """A two-component 1-D Gaussian mixture: weights, means and variances, each of shape (2,)."""

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray

    def log_joint(self, values: np.ndarray) -> np.ndarray:
        """``log w_k + log N(x | μ_k, σ²_k)`` for every value (rows) and component (columns)."""
        x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
        return (np.log(self.weights) - 0.5 * (np.log(2 * np.pi * self.variances)
                                              + (x - self.means) ** 2 / self.variances))

    def posteriors(self, values: np.ndarray) -> np.ndarray:
        """Each value's posterior over the two components, shape (N, 2)."""
        joint = self.log_joint(values)
        return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))

    def high_posterior(self, values: np.ndarray) -> np.ndarray:
        """The posterior of the component with the larger mean (SafeCLIP's "clean" probability)."""
        return self.posteriors(values)[:, int(np.argmax(self.means))]


def two_means_upper(values: np.ndarray) -> np.ndarray | None:
    """The optimal 2-means partition of 1-D ``values`` (exact: the best threshold between sorted distinct values),
    as a mask of the upper cluster; None when fewer than two values differ."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    x = x - x.mean()  # centred, for the cumulative sums' precision
    n, k = len(x), np.arange(1, len(x))
    total, squares = np.cumsum(x), np.cumsum(x * x)
    within = (squares[k - 1] - total[k - 1] ** 2 / k
              + (squares[-1] - squares[k - 1]) - (total[-1] - total[k - 1]) ** 2 / (n - k))
    within[x[k - 1] >= x[k]] = np.inf  # never split equal values
    if not np.isfinite(within).any():
        return None
    threshold = np.sort(np.asarray(values, dtype=np.float64))[int(np.argmin(within))]
    return np.asarray(values, dtype=np.float64) > threshold


def _m_step(x: np.ndarray, responsibilities: np.ndarray, reg_covar: float) -> Mixture1D:
    counts = responsibilities.sum(axis=0) + 10 * np.finfo(np.float64).eps  # as sklearn
    means = responsibilities.T @ x / counts
    variances = (responsibilities * (x[:, None] - means) ** 2).sum(axis=0) / counts + reg_covar
    return Mixture1D(counts / len(x), means, variances)


def fit_mixture(values: np.ndarray, *, max_iter: int = 100, tol: float = 1e-3,
                reg_covar: float = 1e-6) -> Mixture1D | None:
    """EM for a two-component 1-D Gaussian mixture with sklearn's defaults, from the 2-means split (see module);
    None when fewer than two values differ."""
    x = np.asarray(values, dtype=np.float64).ravel()
    upper = two_means_upper(x)
    if upper is None:
        return None
    mixture = _m_step(x, np.stack([~upper, upper], axis=1).astype(np.float64), reg_covar)
    bound = -np.inf
    for _ in range(max_iter):
        joint = mixture.log_joint(x)
        norm = logsumexp(joint, axis=1)
        mixture = _m_step(x, np.exp(joint - norm[:, None]), reg_covar)
        previous, bound = bound, float(norm.mean())
        if abs(bound - previous) < tol:
            break
    return mixture


def clean_probabilities(similarities: np.ndarray) -> np.ndarray:
    """SafeCLIP's ``p_i``: the posterior of the higher-mean component of a mixture fitted to ``similarities``."""
    mixture = fit_mixture(similarities)
    if mixture is None:
        return np.full(len(similarities), 0.5)
    return mixture.high_posterior(similarities)


class SafeSplit:
    """The safe/risky split of each filtered epoch: first ``{p ≥ threshold}``, which sets ``r``; later the top
    ``⌊rN⌋`` by ``p`` (ties: higher similarity first); after each split ``r ← min(r + step, cap)``."""

    def __init__(self, threshold: float, step: float, cap: float) -> None:
        self.threshold, self.step, self.cap = threshold, step, cap
        self.ratio: float | None = None  # r for the next split; None before the first

    def select(self, probabilities: np.ndarray, similarities: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(safe indices, risky indices), the safe ones ranked by ``p``."""
        p, sims = np.asarray(probabilities), np.asarray(similarities)
        by_similarity = np.argsort(-sims, kind="stable")
        ranked = by_similarity[np.argsort(-p[by_similarity], kind="stable")]
        if self.ratio is None:
            count = int((p >= self.threshold).sum())
            ratio = count / len(p)
        else:
            ratio = self.ratio
            count = math.floor(ratio * len(p) + 1e-9)
        self.ratio = min(ratio + self.step, self.cap)
        ranked_t = torch.from_numpy(ranked.copy())
        return ranked_t[:count], ranked_t[count:]


# Views, batches and losses -------------------------------------------------------------------------------------------


class TwoViews:
    """Every training pair as view 1 (AutoAugment'ed image, EDA caption drawn once) and view 2 (the original), in
    shuffled batches of chosen pairs (``drop_last``), and the similarity of every pair under a model."""

    def __init__(self, pairs: PairSet, tokenizer, normalizer: Normalizer, batch_size: int, seed: int,
                 device: torch.device, *, eda: EDA, num_workers: int) -> None:
        captions = list(pairs.captions)
        self.images, self.normalize, self.device = pairs.images, normalizer, device
        self.tokens = tokenizer(captions)
        self.augmented_tokens = tokenizer(eda.augment_all(captions, random.Random(derive_seed(seed, "eda"))))
        self.batch_size = min(batch_size, len(pairs))
        self.order = torch.Generator().manual_seed(derive_seed(seed, "batches"))
        self.plan: list[list[int]] = []
        self.loader = DataLoader(AugmentedViews(pairs.images), batch_sampler=_Plan(self), collate_fn=_whole,
                                 num_workers=num_workers, persistent_workers=num_workers > 0,
                                 pin_memory=device.type == "cuda",
                                 generator=torch.Generator().manual_seed(derive_seed(seed, "augment")))

    def __len__(self) -> int:
        return len(self.images)

    def steps(self, count: int) -> int:
        return count // self.batch_size

    def batches(self, indices: torch.Tensor) -> Iterator[Batch]:
        """Shuffled batches of the pairs ``indices``; a last batch short of ``batch_size`` is dropped."""
        order = indices[torch.randperm(len(indices), generator=self.order)]
        self.plan = [chunk.tolist() for chunk in order.split(self.batch_size) if len(chunk) == self.batch_size]
        for rows, images, augmented in self.loader if self.plan else ():
            yield {"images": self.normalize(images.to(self.device, non_blocking=True)),
                   "augmented_images": self.normalize(augmented.to(self.device, non_blocking=True)),
                   "texts": self.tokens[rows].to(self.device), "augmented_texts": self.augmented_tokens[rows].to(
                       self.device), "index": rows}

    @torch.no_grad()
    def similarities(self, model: nn.Module, augmented: bool, generator: torch.Generator) -> torch.Tensor:
        """cos(image, caption) of every pair on view 1 (``augmented``) or view 2, the model in eval mode; under DDP
        each rank scores its share and the shares are gathered."""
        was_training, here = model.training, distributed.world()
        model.eval()
        shares = torch.arange(len(self)).tensor_split(here.size)
        scores, augment = [], BatchAutoAugment()
        for rows in shares[here.rank].split(SCORE_BATCH):
            images = augment(self.images[rows], generator) if augmented else self.images[rows]
            texts = (self.augmented_tokens if augmented else self.tokens)[rows]
            with current_runtime().autocast(self.device):
                out = model(self.normalize(images.to(self.device)), texts.to(self.device))
            scores.append(F.cosine_similarity(out["image_features"].float(), out["text_features"].float()))
        model.train(was_training)
        mine = torch.cat(scores) if scores else torch.zeros(0, device=self.device)
        if not here.distributed:
            return mine.cpu()
        padded = torch.zeros(len(shares[0]), device=self.device)
        padded[: len(mine)] = mine
        gathered = [torch.empty_like(padded) for _ in range(here.size)]
        dist.all_gather(gathered, padded)
        return torch.cat([part[: len(share)] for part, share in zip(gathered, shares)]).cpu()


def _whole(batch):
    """The DataLoader's collate step: :class:`AugmentedViews` already returns whole batches."""
    return batch


class _Plan:
    """The DataLoader's batch sampler: the batches :meth:`TwoViews.batches` planned for this pass."""

    def __init__(self, views: TwoViews) -> None:
        self.views = views

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.views.plan)

    def __len__(self) -> int:
        return len(self.views.plan)


class Pass:
    """Every epoch, shuffled batches of the pairs ``indices`` (the warm-up phases: all pairs)."""

    def __init__(self, views: TwoViews, indices: torch.Tensor) -> None:
        self.views, self.indices = views, indices

    def __len__(self) -> int:
        return max(1, self.views.steps(len(self.indices)))

    def __iter__(self) -> Iterator[Batch]:
        return self.views.batches(self.indices)


class FilteredEpochs:
    """The filtered epochs as one stream for the engine: each epoch scores and splits every pair, then yields the
    risky pairs' batches (``phase`` "inmodal") and the safe pairs' (``phase`` "clip")."""

    def __init__(self, model: nn.Module, views: TwoViews, split: SafeSplit, *, cross_inmodal: bool,
                 augmented_scores: bool, seed: int, log) -> None:
        self.model, self.views, self.split, self.log = model, views, split, log
        self.cross_inmodal, self.augmented_scores = cross_inmodal, augmented_scores
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "safeclip-scores"))
        self.phase = "inmodal"
        self.history: list[tuple[int, int]] = []  # (safe pairs, pairs) of each split

    def __len__(self) -> int:
        return self.views.steps(len(self.views))

    def __iter__(self) -> Iterator[Batch]:
        similarities = self.views.similarities(self.model, self.augmented_scores, self.generator).numpy()
        safe, risky = self.split.select(clean_probabilities(similarities), similarities)
        self.history.append((len(safe), len(similarities)))
        self.log(f"defense safeclip: split {len(self.history)}: {len(safe)} safe pairs of {len(similarities)} "
                 f"(next ratio {self.split.ratio:.2f})")
        if self.cross_inmodal:
            self.phase = "inmodal"
            yield from self.views.batches(risky)
        self.phase = "clip"
        yield from self.views.batches(safe)


def _both_views(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, ...]:
    """Image and text embeddings of view 2 and view 1 in one forward pass of 2N (gathered over ranks under DDP):
    ``(Z², Z¹, T², T¹, s)``."""
    n = len(batch["images"])
    out = model(torch.cat([batch["images"], batch["augmented_images"]]),
                torch.cat([batch["texts"], batch["augmented_texts"]]))
    views = distributed.gather_global(*out["image_features"].split(n), *out["text_features"].split(n))
    return (*views, out["logit_scale"])


def inmodal_loss(model: nn.Module, batch: Batch, banks: tuple[FeaturePool, FeaturePool] | None = None) -> torch.Tensor:
    """``½[CE(s·Z²Z¹ᵀ) + CE(s·T²T¹ᵀ)]`` (view 2 the original, view 1 augmented: CleanCLIP's ``L_SS``); with
    ``banks``, ``Z¹``/``T¹`` are their nearest neighbours in the banks, which then take the batch's view 1."""
    if banks is None:
        return clip_ssl_loss(model, batch, clip_weight=0.0, inmodal_weight=1.0)
    images, augmented_images, texts, augmented_texts, scale = _both_views(model, batch)
    image_neighbours = banks[0].nearest_then_enqueue(augmented_images, augmented_images)
    text_neighbours = banks[1].nearest_then_enqueue(augmented_texts, augmented_texts)
    return self_supervised_loss(images, image_neighbours, texts, text_neighbours, scale)


def cross_view_clip_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The code's CLIP loss with ``cross_aug``: ``½[CE(s·Z¹T²ᵀ) + CE(s·T¹Z²ᵀ)]``, view 1 augmented, view 2 original."""
    images, augmented_images, texts, augmented_texts, scale = _both_views(model, batch)
    targets = torch.arange(len(images), device=images.device)
    return (F.cross_entropy(scale * augmented_images @ texts.T, targets)
            + F.cross_entropy(scale * augmented_texts @ images.T, targets)) / 2


def _clip_step(model: nn.Module, batch: Batch, cross_aug: bool) -> torch.Tensor:
    if cross_aug:
        return cross_view_clip_loss(model, batch)
    return clip_loss(model, {"images": batch["images"], "texts": batch["texts"]})


@DEFENSES.register()
class SafeCLIP(TrainingDefense):
    """In-modal warm-up, a CLIP warm-up, then per epoch a GMM split: CLIP on the safe pairs, in-modal on the risky
    (reference §4)."""

    name = "safeclip"
    version = "1"
    Config = SafeCLIPConfig

    def passes_per_pair(self) -> float:
        """Two views forwarded every step, plus a forward-only similarity pass over every pair at the start of each
        filtered epoch (about ⅓ of a training pass, in most epochs); without ``cross_aug`` the safe pairs' CLIP
        steps forward one view."""
        return 2.25 if self.config.cross_aug else 1.75

    def train(self, model: nn.Module, train_data: Pairs, context: DefenseContext) -> nn.Module:
        config, recipe, log = self.config, context.recipe, context.reporter.log
        if not isinstance(train_data, PairSet):
            raise UserError(f"{self.name} needs the training split in memory: its safe and risky subsets change "
                            "every epoch; this preset streams it")
        if len(train_data) < 2:
            raise UserError(f"{self.name} needs at least 2 training pairs, got {len(train_data)}")
        inmodal_epochs, clip_epochs, filtered_epochs = config.phases(recipe.epochs)
        log(f"defense {self.name}: {inmodal_epochs} in-modal warm-up, {clip_epochs} CLIP warm-up and "
            f"{filtered_epochs} filtered epochs of {recipe.epochs}")
        workers = config.num_workers if config.num_workers is not None else default_augment_workers(context.device)
        views = TwoViews(train_data, context.tokenizer, Normalizer(model), recipe.batch_size, context.seed,
                         context.device, eda=EDA.with_default_wordnet(config.eda_alpha), num_workers=workers)
        banks = None
        if config.memory_bank_size:
            banks = tuple(FeaturePool(config.memory_bank_size, derive_seed(context.seed, "safeclip-bank", modality))
                          for modality in ("image", "text"))
        inmodal = partial(inmodal_loss, banks=banks)
        clip = partial(_clip_step, cross_aug=config.cross_aug)
        run = partial(train, reporter=context.reporter)
        everyone = torch.arange(len(train_data))
        if inmodal_epochs:
            run(model, Pass(views, everyone), dataclasses.replace(recipe, epochs=inmodal_epochs), loss_fn=inmodal,
                description=f"defense {self.name} in-modal warm-up")
        if clip_epochs:
            run(model, Pass(views, everyone), dataclasses.replace(
                recipe, epochs=clip_epochs, lr=recipe.lr * config.filter_lr_scale, warmup_steps=0),
                loss_fn=clip, description=f"defense {self.name} CLIP warm-up")
        split = SafeSplit(config.safe_threshold, config.update_filter_ratio, config.cap_filter_ratio)
        epochs = FilteredEpochs(model, views, split, cross_inmodal=config.cross_inmodal,
                                augmented_scores=config.score_view == "augmented", seed=context.seed, log=log)

        def filtered_loss(net: nn.Module, batch: Batch) -> torch.Tensor:
            return inmodal(net, batch) if epochs.phase == "inmodal" else clip(net, batch)

        run(model, epochs, dataclasses.replace(recipe, epochs=filtered_epochs, warmup_steps=0), loss_fn=filtered_loss,
            description=f"defense {self.name} filtered")
        return model
