"""Independent, reproducible random streams derived from one run seed.

Each stage (poisoning, initialisation, batch order, defense, trigger draws at evaluation) gets its own seed
derived by hashing, so the order in which cells run, or which were cached, never changes any result.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *tags: str) -> int:
    """A 63-bit seed determined by ``seed`` and the stage ``tags``."""
    digest = hashlib.sha256(":".join([str(seed), *tags]).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
