"""Old import path of the batching of streamed splits, kept for plugins written against it: everything lives in
:mod:`benchmark.data.batches` now."""

from benchmark.data.batches import (Augment, Batch, BatchStream, Normalizer, PairBatches,  # noqa: F401
                                    StreamedPairBatches, pair_batches, rank_batches, to_device)
