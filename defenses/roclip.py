"""RoCLIP (Yang, Gao, Mirzasoleiman, NeurIPS 2023, arXiv 2303.06854): pretraining CLIP on the poisoned pairs
while, every few epochs, matching each image with its nearest caption in a large, varying pool of captions
instead of its own, which breaks the association of poisoned images with their captions.

Followed from the authors' code (BigML-CS-UCLA/RoCLIP @ f34a929, ``model/src``; methods reference §3) as run
with ``--memory_bank --RoCLIP_switch --cross_aug``:

- Epochs are numbered 1..E; epoch ``e`` is a RoCLIP epoch when ``e % break_epoch == 0`` (default 2: epochs 2,
  4, ...); the other epochs use the plain symmetric CLIP loss on (image, own caption) (``train.py`` L32-43).
- In a RoCLIP epoch each image embedding ``z_i`` is matched to ``t̂_i``, the stored text embedding most cosine-
  similar to it in the pool as it was before this batch; then the batch's text embeddings are enqueued (FIFO)
  (``train.py`` L33-34, :class:`FeaturePool`). With ``M = s·t̂·zᵀ`` the loss is ``½[CE(Mᵀ, y) + CE(M, y)]``,
  plus ``0 × CE(s·z·tᵀ, y)`` as in the code (L50). ``t̂`` is detached, so the text tower's gradient is exactly
  zero in RoCLIP epochs: its embeddings only fill the pool. The zero-weighted term keeps the text tower in the
  graph as the code does, so AdamW still applies weight decay (and its decaying momentum) to it, and DDP sees
  every parameter used. The pool is only updated in RoCLIP epochs and persists across epochs.
- ``--cross_aug``: every epoch trains on augmented pairs only: a fresh image augmentation on every visit and
  one EDA caption per caption, drawn once for the whole run (``data.py`` L29-44).
- Under DDP the image and text embeddings are gathered over ranks before the lookup and the loss (L18-26), so
  every rank looks up and enqueues the same global batch and the pools stay identical.

Deviations, on purpose:

- Budget: epochs, batch size, LR, warmup and AdamW settings are the preset's ``[victim]`` recipe, so RoCLIP is
  compared with the victim it replaces (the code: RN50, 24 epochs, batch 512, lr 5e-5, 10k warmup steps). The
  schedule is the engine's (:func:`benchmark.training.train`): warmup from step 0, cosine to 0 at the last
  step, without the code's one-epoch step offset (reference §3, open question 13).
- Pool size: the code's default is 21,845 entries (``parser.py`` L47), not tied to the data. Here it is scaled
  to the training set: ``pool_fraction`` (default 0.02) of the training pairs, at least one batch, unless
  ``pool_size`` sets it. 21,845 is about 2% of a 1M-pair training set, the scale of the paper's CC3M subsets;
  that set size was not checked against the paper (reference, open question 11), so the 2% is our choice.
- Pool initialisation: random unit vectors from a seeded generator (lightly uses torch's global generator).
- Image augmentation: torchvision's AutoAugment (ImageNet policy), the one CleanCLIP's views use
  (:class:`benchmark.augment.views.AugmentedPairBatches`), not the code's SimCLR-style transform (random resized
  crop, flip, colour jitter, grayscale, Gaussian blur; ``utils/augment_image.py`` L12-22). EDA is CleanCLIP's
  seeded implementation (:mod:`benchmark.augment.text`) with α = 0.1, as the code's ``eda(alpha = 0.1,
  num_aug = 1)``.
- Precision: bf16 autocast on CUDA (the engine's), not fp16 AMP with a gradient scaler.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.augment.text import EDA
from benchmark.augment.views import AugmentedPairBatches, default_augment_workers
from benchmark.config import check_range
from benchmark.data.batches import Batch, Normalizer, pair_batches
from benchmark.data.loader import Pairs
from benchmark.distributed import gather_global
from benchmark.errors import UserError
from benchmark.seeding import derive_seed
from benchmark.training import clip_loss, train
from defenses import DEFENSES
from defenses.base import DefenseContext, TrainingDefense

AUTHORS_POOL_SIZE = 21_845  # the code's default (parser.py L47), for the record


class FeaturePool:
    """``size`` detached feature vectors in a FIFO ring with nearest-neighbour lookup: RoCLIP's caption pool, and
    SafeCLIP's optional NNCLR memory banks (both codes use ``NNMemoryBankModule``, ``src/memory_bank.py``, a
    subclass of lightly's ``MemoryBankModule``, read at lightly-ai/lightly @ 023dfa8; the codes pin 1.2.39).

    - It starts as ``size`` random unit vectors, made on first use when the width is known, drawn from ``seed``
      (lightly draws them from torch's global generator).
    - A lookup sees the pool as it was *before* the batch is enqueued (lightly's ``forward`` returns a clone taken
      before ``_dequeue_and_enqueue``), so a batch's own entries are never its neighbours.
    - The enqueue is FIFO and wraps: with ``ptr + B >= size`` only the first ``size - ptr`` rows are written and
      ``ptr`` returns to 0 (the rest of that batch is dropped, as lightly drops it).
    - The neighbour of ``q`` is the stored entry most cosine-similar to ``q``, returned as stored (detached).
    """

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise UserError(f"a feature pool needs at least one entry, got size = {size}")
        self.size = size
        self.seed = seed
        self.bank: torch.Tensor | None = None  # (size, dim) float32, created on first use
        self.ptr = 0

    def entries(self, like: torch.Tensor) -> torch.Tensor:
        """The pool's entries, ``(size, dim)``, on ``like``'s device (created on first use with its width)."""
        if self.bank is None:
            generator = torch.Generator().manual_seed(self.seed)
            self.bank = F.normalize(torch.randn(self.size, like.shape[-1], generator=generator), dim=1)
        if self.bank.device != like.device:
            self.bank = self.bank.to(like.device)
        return self.bank

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor) -> None:
        """Write ``features`` (detached) over the oldest entries, wrapping as lightly does (see the module)."""
        bank = self.entries(features)
        count = len(features)
        if self.ptr + count >= self.size:
            bank[self.ptr:] = features[: self.size - self.ptr].detach().float()
            self.ptr = 0
        else:
            bank[self.ptr : self.ptr + count] = features.detach().float()
            self.ptr += count

    def nearest(self, queries: torch.Tensor) -> torch.Tensor:
        """For each query row, the stored entry most cosine-similar to it (detached, in the queries' dtype)."""
        bank = self.entries(queries)
        with torch.no_grad():
            similarity = F.normalize(queries.detach().float(), dim=1) @ F.normalize(bank, dim=1).T
            return bank[similarity.argmax(dim=1)].to(queries.dtype)

    def nearest_then_enqueue(self, queries: torch.Tensor, new_entries: torch.Tensor) -> torch.Tensor:
        """The queries' neighbours in the pool as it was before ``new_entries`` are enqueued; then enqueue them."""
        neighbours = self.nearest(queries)  # a new tensor: the enqueue below does not change it
        self.enqueue(new_entries)
        return neighbours


@dataclass(frozen=True)
class RoCLIPConfig:
    """The code's flags (``break_epoch``, ``cross_aug``), the pool's size relative to the training set
    (``pool_fraction``) or absolute (``pool_size``, which wins when set), and the augmentation's workers."""

    break_epoch: int = 2
    pool_fraction: float = 0.02
    pool_size: int | None = None
    cross_aug: bool = True
    eda_alpha: float = 0.1
    num_workers: int | None = None  # None: 0 on the CPU, 2 on a GPU (see default_augment_workers)

    def __post_init__(self) -> None:
        check_range("break_epoch", self.break_epoch, 1, 10_000)
        check_range("pool_fraction", self.pool_fraction, 0.0, 1.0, low_inclusive=False)
        if self.pool_size is not None:
            check_range("pool_size", self.pool_size, 1, 100_000_000)
        check_range("eda_alpha", self.eda_alpha, 0.0, 1.0)
        if self.num_workers is not None:
            check_range("num_workers", self.num_workers, 0, 256)

    def pool_entries(self, pairs: int, batch_size: int) -> int:
        """The pool's size for ``pairs`` training pairs: ``pool_size``, else ``pool_fraction`` of the pairs but
        at least one batch."""
        if self.pool_size is not None:
            return self.pool_size
        return max(round(self.pool_fraction * pairs), min(batch_size, pairs), 1)


def nearest_caption_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                         pool: FeaturePool) -> torch.Tensor:
    """RoCLIP's loss on L2-normalised embeddings: each image against its nearest caption in ``pool`` (as it was
    before this batch), ``½[CE(Mᵀ, y) + CE(M, y)]`` with ``M = s·t̂·zᵀ``; then the batch's captions are
    enqueued. The zero-weighted CLIP term keeps the text tower in the graph with a zero gradient (see module)."""
    neighbours = pool.nearest_then_enqueue(image_features, text_features)
    targets = torch.arange(len(image_features), device=image_features.device)
    logits = logit_scale * neighbours @ image_features.T  # rows: matched captions, columns: images
    loss = (F.cross_entropy(logits.T, targets) + F.cross_entropy(logits, targets)) / 2
    return loss + 0 * F.cross_entropy(logit_scale * image_features @ text_features.T, targets)


def _training_view(batch: Batch) -> Batch:
    """The pair RoCLIP trains on: the augmented image and EDA caption with ``cross_aug``, else the originals."""
    if "augmented_images" in batch:
        return {"images": batch["augmented_images"], "texts": batch["augmented_texts"]}
    return batch


class EpochCounter:
    """Batches that count the epochs begun (1-based, as the code numbers them), for an epoch-dependent loss."""

    def __init__(self, batches) -> None:
        self.batches = batches
        self.epoch = 0
        self.sharded = getattr(batches, "sharded", False)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        self.epoch += 1
        yield from self.batches


@DEFENSES.register()
class RoCLIP(TrainingDefense):
    """Pretraining with nearest-neighbour captions from a FIFO pool every ``break_epoch``-th epoch (reference §3)."""

    name = "roclip"
    version = "1"
    Config = RoCLIPConfig
    # passes_per_pair: TrainingDefense's 1.0 (one view per pair; the pool lookup is small next to a step)

    def train(self, model: nn.Module, train_data: Pairs, context: DefenseContext) -> nn.Module:
        config, recipe = self.config, context.recipe
        if len(train_data) < 2:
            raise UserError(f"{self.name} needs at least 2 training pairs, got {len(train_data)}")
        batch_seed = derive_seed(context.seed, "roclip-batches")
        if config.cross_aug:
            batches = AugmentedPairBatches(train_data, context.tokenizer, Normalizer(model), recipe.batch_size,
                                           batch_seed, context.device,
                                           eda=EDA.with_default_wordnet(config.eda_alpha), redraw_text=False,
                                           num_workers=(config.num_workers if config.num_workers is not None
                                                        else default_augment_workers(context.device)))
        else:
            batches = pair_batches(train_data, context.tokenizer, Normalizer(model), recipe.batch_size,
                                   torch.Generator().manual_seed(batch_seed), context.device)
        counted = EpochCounter(batches)
        size = config.pool_entries(len(train_data), recipe.batch_size)
        pool = FeaturePool(size, derive_seed(context.seed, "roclip-pool"))
        context.reporter.log(f"defense {self.name}: caption pool of {size} entries, RoCLIP epochs every "
                             f"{config.break_epoch} of {recipe.epochs}")

        def loss_fn(net: nn.Module, batch: Batch) -> torch.Tensor:
            view = _training_view(batch)
            if counted.epoch % config.break_epoch:
                return clip_loss(net, view)
            out = net(view["images"], view["texts"])
            images, texts = gather_global(out["image_features"], out["text_features"])
            return nearest_caption_loss(images, texts, out["logit_scale"], pool)

        train(model, counted, recipe, loss_fn=loss_fn, reporter=context.reporter, description=f"defense {self.name}")
        return model
