"""The attacker's stand-in CLIP: the victim's architecture trained, from a seed, on the clean pairs of the context.

Attacks that need gradients of a CLIP model (label-consistent's PGD, BadCLIP's patch) must not use the victim:
the attacker poisons the data before the victim exists. They train this surrogate instead, on the clean pairs
the attack context provides (disjoint from the victim's training pairs): an attacker with data like the
victim's. Each attack passes its own ``tag``, so its surrogate's initialisation and batch order are its own
random streams (and label-consistent's are those it always had).
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.base import AttackContext
from benchmark.errors import UserError
from benchmark.seeding import derive_seed


def train_surrogate(context: AttackContext, *, tag: str, purpose: str, epochs: int, lr: float,
                    batch_size: int) -> tuple[nn.Module, object, float]:
    """A frozen (eval, no grad) surrogate CLIP, its tokenizer and its final training loss.

    ``tag`` names the random streams (``<tag>-surrogate``, ``<tag>-surrogate-batches``) and the progress line;
    ``purpose`` opens the error raised when the context lacks the clean pairs or the model name.
    """
    from benchmark.data.batches import Normalizer, pair_batches
    from benchmark.models import create_model, tokenizer_for
    from benchmark.training import train
    from benchmark.training_recipe import TrainRecipe

    if context.clean_pairs is None or not context.model_name:
        raise UserError(f"{purpose} needs the clean pairs and the model name in the attack context "
                        "(the runner provides both)")
    model = create_model(context.model_name, seed=derive_seed(context.seed, f"{tag}-surrogate"))
    model.to(context.device)
    tokenizer = tokenizer_for(context.model_name)
    generator = torch.Generator().manual_seed(derive_seed(context.seed, f"{tag}-surrogate-batches"))
    batches = pair_batches(context.clean_pairs, tokenizer, Normalizer(model), batch_size, generator, context.device)
    recipe = TrainRecipe(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.1,
                         warmup_steps=len(batches) // 2)
    stats = train(model, batches, recipe, description=f"{tag} surrogate")
    model.eval().requires_grad_(False)
    return model, tokenizer, stats.final_loss
