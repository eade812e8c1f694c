"""A defense that wrecks the model: every weight re-drawn at random. It removes any backdoor (ASR ≈ 0) and all
usefulness with it (CA at chance), so it is the test case for the leaderboard's utility rule: a benchmark must
list it, flag its ASR as meaningless and never rank it. Used by the verdicts study
(``benchmarks/results/verdicts-*.md``) and by the leaderboard's tests; run it with
``cleanbench run --plugin benchmarks/plugins/reinitialize.py --defenses none,reinitialize``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import cleanbench


@dataclass(frozen=True)
class Config:
    std: float = 0.02


@cleanbench.DEFENSES.register()
class Reinitialize(cleanbench.Defense):
    """Re-draw every parameter from N(0, std²): removes the backdoor by destroying the model."""

    name = "reinitialize"
    version = "1"
    Config = Config
    uses_recipe = False

    def apply(self, model, clean_data, context):
        generator = torch.Generator().manual_seed(context.seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * self.config.std)
        return model
