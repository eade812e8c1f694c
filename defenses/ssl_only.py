"""The CleanCLIP paper's "SSL only" ablation: CleanCLIP with λ1 = 0, i.e. ``L = λ2·L_SS`` alone.

The official code runs it as ``--inmodal --clip_weight 0`` (reference §4); it shows how much of CleanCLIP's
effect comes from the self-supervised term without the cross-modal one. Everything else, the departures from
the official code included, is as in :mod:`defenses.cleanclip`.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.config import check_range
from defenses import DEFENSES
from defenses.cleanclip import CleanCLIP, CleanCLIPConfig


@dataclass(frozen=True)
class SSLOnlyConfig(CleanCLIPConfig):
    """CleanCLIP's config with ``clip_weight`` pinned to 0 (kept as a field so results show λ1 = 0)."""

    clip_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("clip_weight", self.clip_weight, 0.0, 0.0)


@DEFENSES.register()
class SSLOnly(CleanCLIP):
    """Unimodal self-supervised finetuning only (λ1 = 0)."""

    name = "ssl-only"
    version = "2"  # 2: AutoAugment drawn per image but applied a batch at a time (other draws, same distribution)
    Config = SSLOnlyConfig
