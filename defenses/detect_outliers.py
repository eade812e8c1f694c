"""Huang et al.'s backdoor-sample detectors: k-distance, SLOF and DAO on the backdoored CLIP's embeddings.

Paper: Hanxun Huang, Sarah Erfani, Yige Li, Xingjun Ma, James Bailey, "Detecting Backdoor Samples in Contrastive
Language Image Pretraining", ICLR 2025. Code: ``HanxunH/Detect-CLIP-Backdoor-Samples`` @ ``ff2399a``
(``backdoor_sample_detector/{k_distance,slof,dao}.py``, pipeline ``extract_bd_scores.py``). Backdoor pairs form a
tight, dense cluster far from the clean pairs in the backdoored model's embedding space, so with k larger than that
cluster a poisoned image's k-th neighbour is far away: a local-outlier score exposes it.

What is followed (methods reference §5). The training pairs are shuffled (seeded) into reference batches of
``reference_size`` (the authors' 512 per GPU); in each batch every pair is both a query and a reference. Features
are ``model.encode_image`` of the no-defense victim, unnormalised (the authors' ``normalize=False``). For a query x,
``a_x`` is its ascending Euclidean distances (``cdist`` with ``compute_mode='donot_use_mm_for_euclid_dist'``) to
the batch with its own column removed, ``idx`` the sort order, ``N_k(x) = idx[:k]``; ``Â`` is the row-sorted
distance matrix of the references *including* the zero self-distance. With k = 16 (the authors' pipeline):

* k-distance: ``a_x[k]``.
* SLOF: ``mean_{o in N_k(x)} a_x[k] / Â_o[k]``.
* DAO: ``mean_{o in N_k(x)} LID(o) · log(a_x[k] / Â_o[k])`` with
  ``LID(o) = -k / sum_{i<k} log(Â_o[i] / Â_o[k] + 1e-4)`` (the log of the power form the code leaves commented
  out, averaged as the code does).

SLOF and DAO map nan and +inf to 1000 and -inf to 0, as the code does.

The neighbour-index shift. In the authors' SLOF and DAO ``idx`` indexes the distances with the query's own column
removed, but it is used as is to pick rows of ``Â``, which has every point, so a neighbour listed after the query
points one row too early; and ``a_x[k]`` (the (k+1)-th nearest other point) is compared with ``Â_o[k]`` (o's k-th).
``neighbour_index = "authors"`` (default) reproduces both exactly, to match the paper's numbers;
``"corrected"`` maps each neighbour to its own row and uses the same rank for x and o (``Â_o[k+1]``, and
``LID(o)`` from ``Â_o[1..k]`` over ``Â_o[k+1]``, o's own distance left out). A consequence of the shift: the
authors' SLOF and DAO of a pair depend on the order of the pairs within its batch, not only on which pairs are in
it (the corrected ones and k-distance do not); the seeded shuffle makes them reproducible all the same.

Deviations from the authors' pipeline:

* Image-only by default, as the README and QuickStart call the detectors. The pipeline itself passes the captions
  for CLIP experiments; ``modality = "image+text"`` does so: the image's distances to the batch's other images and
  to the other pairs' captions (its own caption masked) are the 2B-2 candidates, and ``Â`` is over the images and
  captions together, as in the code.
* Reference batches are ``reference_size`` pairs at any scale (the authors' 512 per GPU, gathered over GPUs under
  DDP); the last, incomplete batch is completed with pairs drawn from the other batches, which serve as references
  only (the authors' last batch is just smaller, and fails outright with fewer than k+2 pairs).
* Images enter at the preset's size (e.g. 32 px) with the victim's own normalisation; no Resize/CenterCrop to 224,
  since the victim was trained at that size and with that normalisation (the README says to normalise if the
  encoder needs it).
* float32 throughout (the authors autocast when their training used AMP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from benchmark.config import check_range
from benchmark.data.batches import Normalizer
from benchmark.data.loader import Pairs
from benchmark.data.pairs import PairSet, to_float
from benchmark.errors import UserError
from defenses import DEFENSES
from defenses.base import DefenseContext, Detector

COMPUTE_MODE = "donot_use_mm_for_euclid_dist"  # the authors' pipeline: exact distances (extract_bd_scores.py:L108)
LID_EPS = 1e-4  # inside the log of the MLE LID estimate (dao.py:L71)
INF_SCORE = 1000.0  # the authors' nan and +inf score (slof.py:L63, dao.py:L85)

IndexMode = Literal["authors", "corrected"]
ScoreFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class OutlierDetectorConfig:
    """Settings of the k-distance, SLOF and DAO detectors (the authors' pipeline values by default)."""

    k: int = 16  # neighbours (extract_bd_scores.py --k 16)
    reference_size: int = 512  # pairs per reference batch (the authors' 256 × 2 per GPU)
    encode_batch_size: int = 256  # pairs per forward pass when encoding; does not change the scores
    modality: Literal["image", "image+text"] = "image"
    neighbour_index: IndexMode = "authors"

    def __post_init__(self) -> None:
        check_range("k", self.k, 1)
        check_range("reference_size", self.reference_size, 2, 1_000_000)
        check_range("encode_batch_size", self.encode_batch_size, 1, 1_000_000)
        if self.reference_size < self.k + 2:
            raise UserError(f"reference_size = {self.reference_size} is out of range; allowed: [k + 2 = "
                            f"{self.k + 2}, 1000000] (each pair needs k + 1 other pairs in its batch)")
        for key, allowed in (("modality", ("image", "image+text")), ("neighbour_index", ("authors", "corrected"))):
            if getattr(self, key) not in allowed:
                raise UserError(f"{key} = {getattr(self, key)!r} is not allowed; choose one of: {', '.join(allowed)}")


@dataclass(frozen=True)
class Neighbourhood:
    """The distances one reference batch's scores are computed from (see the module docstring)."""

    a: torch.Tensor  # (B, M) query distances, own column(s) removed, ascending
    idx: torch.Tensor  # (B, M) their columns in the own-removed order, as torch.sort returns them
    full: torch.Tensor  # (R, R) reference distances, self included, each row ascending
    rows: torch.Tensor  # (B, M) the reference row of each entry of ``idx`` (the corrected neighbour)


def neighbourhood(features: torch.Tensor, texts: torch.Tensor | None = None) -> Neighbourhood:
    """Distances of a batch of image features (B, D) to the batch (and to its captions ``texts``, (B, D))."""
    features = features.float()
    b = features.shape[0]
    if b < 2:
        raise ValueError(f"a reference batch needs at least 2 points, got {b}")
    references = features if texts is None else torch.cat([features, texts.float()])
    distances = torch.cdist(features, references, p=2, compute_mode=COMPUTE_MODE)
    own = torch.zeros_like(distances, dtype=torch.bool)
    arange = torch.arange(b, device=features.device)
    own[arange, arange] = True
    if texts is not None:
        own[arange, b + arange] = True  # the pair's own caption is masked too (dao.py:L46)
    a, idx = torch.sort(distances[~own].view(b, -1), dim=1, stable=True)
    full = torch.sort(torch.cdist(references, references, p=2, compute_mode=COMPUTE_MODE), dim=1).values
    # column j of the own-removed images (and of the own-removed captions) is reference row j, or j + 1 past the query
    segment, column = idx // (b - 1), idx % (b - 1)
    rows = segment * b + column + (column >= arange[:, None]).long()
    return Neighbourhood(a, idx, full, rows)


def _check_k(hood: Neighbourhood, k: int) -> None:
    if hood.a.shape[1] <= k or hood.full.shape[1] <= k + 1:
        raise ValueError(f"k = {k} needs more than k + 1 references; the batch has {hood.full.shape[1]}")


def _neighbour_terms(hood: Neighbourhood, k: int, mode: IndexMode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The neighbours' rows (B, k), every reference's k-distance (R,) and MLE LID (R,), as ``mode`` takes them."""
    _check_k(hood, k)
    if mode == "authors":
        rows, kd, near = hood.idx[:, :k], hood.full[:, k], hood.full[:, :k]
    elif mode == "corrected":
        rows, kd, near = hood.rows[:, :k], hood.full[:, k + 1], hood.full[:, 1 : k + 1]
    else:
        raise ValueError(f"neighbour_index = {mode!r} is not allowed; choose one of: authors, corrected")
    lid = -k / torch.log(near / kd[:, None] + LID_EPS).sum(dim=1)
    return rows, kd, lid


def _finite(scores: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(scores, nan=INF_SCORE, posinf=INF_SCORE, neginf=0.0)


def kdistance_scores(features: torch.Tensor, k: int, texts: torch.Tensor | None = None,
                     mode: IndexMode = "authors") -> torch.Tensor:
    """k-distance of every row of a reference batch: the distance to its (k+1)-th nearest other point
    (``mode`` is accepted for a uniform signature; k-distance has no neighbour index)."""
    hood = neighbourhood(features, texts)
    _check_k(hood, k)
    return hood.a[:, k]


def slof_scores(features: torch.Tensor, k: int, texts: torch.Tensor | None = None,
                mode: IndexMode = "authors") -> torch.Tensor:
    """Simplified LOF of every row: its k-distance over its k neighbours' k-distances, averaged."""
    hood = neighbourhood(features, texts)
    rows, kd, _ = _neighbour_terms(hood, k, mode)
    return _finite((hood.a[:, k : k + 1] / kd[rows]).mean(dim=1))


def dao_scores(features: torch.Tensor, k: int, texts: torch.Tensor | None = None,
               mode: IndexMode = "authors") -> torch.Tensor:
    """Dimensionality-aware outlier score of every row: mean over its k neighbours o of
    ``LID(o) · log(kd(x) / kd(o))``."""
    hood = neighbourhood(features, texts)
    rows, kd, lid = _neighbour_terms(hood, k, mode)
    return _finite((lid[rows] * torch.log(hood.a[:, k : k + 1] / kd[rows])).mean(dim=1))


def reference_batches(n: int, reference_size: int, generator: torch.Generator) -> list[tuple[torch.Tensor, int]]:
    """The N pairs shuffled into reference batches: ``(indices, queries)`` per batch, whose first ``queries``
    indices are scored there. Every pair is scored exactly once; each batch has ``min(reference_size, n)`` pairs,
    the last one completed with pairs drawn from the others (references only)."""
    order = torch.randperm(n, generator=generator)
    size = min(reference_size, n)
    batches = [(order[start : start + size], size) for start in range(0, n - size + 1, size)]
    rest = n % size
    if rest:
        others = order[: n - rest]
        fill = others[torch.randperm(len(others), generator=generator)[: size - rest]]
        batches.append((torch.cat([order[n - rest :], fill]), rest))
    return batches


def batched_scores(score_fn: ScoreFn, features: torch.Tensor, k: int, reference_size: int,
                   generator: torch.Generator, texts: torch.Tensor | None = None,
                   mode: IndexMode = "authors") -> torch.Tensor:
    """``score_fn`` over seeded reference batches of ``features`` (N, D), scores returned in the original order."""
    scores = torch.empty(len(features), dtype=torch.float32)
    for indices, queries in reference_batches(len(features), reference_size, generator):
        chosen = indices.to(features.device)
        batch_texts = None if texts is None else texts[chosen]
        batch_scores = score_fn(features[chosen], k, batch_texts, mode)
        scores[indices[:queries]] = batch_scores[:queries].float().cpu()
    return scores


@torch.no_grad()
def encode_pairs(model: nn.Module, pairs: PairSet, batch_size: int, device: torch.device,
                 tokenizer=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unnormalised image features (N, D) of ``pairs`` (and caption features when ``tokenizer`` is given)."""
    normalize = Normalizer(model)
    images, texts = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs.images[start : start + batch_size]
        images.append(model.encode_image(normalize(to_float(chunk.to(device)))).float())
        if tokenizer is not None:
            tokens = tokenizer(list(pairs.captions[start : start + batch_size])).to(device)
            texts.append(model.encode_text(tokens).float())
    return torch.cat(images), (torch.cat(texts) if tokenizer is not None else None)


class _OutlierDetector(Detector):
    """Shared scoring pipeline of the three detectors; each subclass names its score function."""

    Config = OutlierDetectorConfig
    score_fn: ClassVar[ScoreFn]

    def score(self, model: nn.Module, train_data: Pairs, context: DefenseContext) -> torch.Tensor:
        config = self.config
        if not isinstance(train_data, PairSet):
            raise UserError(f"defense {self.name} scores training pairs held in memory; this split is streamed from "
                            f"disk: raise data.memory_gb so the {len(train_data)} training pairs fit in memory")
        if len(train_data) < config.k + 2:
            raise UserError(f"defenses.{self.name}: k = {config.k} needs at least k + 2 = {config.k + 2} training "
                            f"pairs; there are {len(train_data)}")
        tokenizer = context.tokenizer if config.modality == "image+text" else None
        features, texts = encode_pairs(model, train_data, config.encode_batch_size, context.device, tokenizer)
        if not torch.isfinite(features).all() or (texts is not None and not torch.isfinite(texts).all()):
            raise UserError(f"defense {self.name}: the victim's features are not finite (a diverged victim?)")
        generator = torch.Generator().manual_seed(context.seed)
        return batched_scores(type(self).score_fn, features, config.k, config.reference_size, generator, texts,
                              config.neighbour_index)


@DEFENSES.register()
class KDistanceDetector(_OutlierDetector):
    """Huang et al.'s k-distance: distance to the (k+1)-th nearest pair of the reference batch."""

    name = "detect-kdist"
    version = "1"
    score_fn = staticmethod(kdistance_scores)


@DEFENSES.register()
class SLOFDetector(_OutlierDetector):
    """Huang et al.'s simplified local outlier factor over the reference batch."""

    name = "detect-slof"
    version = "1"
    score_fn = staticmethod(slof_scores)


@DEFENSES.register()
class DAODetector(_OutlierDetector):
    """Huang et al.'s dimensionality-aware outlier detection (DAO) over the reference batch."""

    name = "detect-dao"
    version = "1"
    score_fn = staticmethod(dao_scores)
