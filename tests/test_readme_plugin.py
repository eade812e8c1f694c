"""The plugin example in README.md works as written: a newcomer's first plugin must not be broken."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from benchmark import plugins
from benchmark.data.pairs import EvalSet, PairSet
from benchmark.models import create_model, tokenizer_for
from benchmark.progress import Reporter
from benchmark.training_recipe import TrainRecipe
from defenses import DEFENSES
from defenses.base import DefenseContext

README = Path(__file__).parent.parent / "README.md"


def test_readme_plugin_defense_loads_and_runs(tmp_path):
    code = re.search(r"```python\n(# my_defense.py.*?)```", README.read_text(), re.S).group(1)
    path = tmp_path / "my_defense.py"
    path.write_text(code)
    assert plugins.load_plugin(str(path)) == []
    try:
        defense = DEFENSES.get("my-defense").from_settings({"epochs": 1})
        model = create_model("cleanbench-vit-tiny", seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        pairs = PairSet(torch.randint(0, 255, (16, 3, 32, 32), dtype=torch.uint8), ["a photo of a bag."] * 16,
                        torch.zeros(16, dtype=torch.long))
        context = DefenseContext(torch.device("cpu"), 0, TrainRecipe(batch_size=8, lr=1e-3),
                                 tokenizer_for("cleanbench-vit-tiny"),
                                 EvalSet(pairs.images, pairs.labels, ["bag"]), Reporter.silent())
        out = defense.apply(model, pairs, context)
        assert any(not torch.equal(a, b) for a, b in zip(before, out.parameters()))
    finally:
        DEFENSES.unregister("my-defense")
