"""The hyperparameters of one contrastive training run (victim training or a finetuning defense), and the
victim's objective and initialisation."""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.config import check_range, config_dict
from benchmark.errors import UserError


@dataclass(frozen=True)
class TrainRecipe:
    """AdamW + cosine schedule with linear warmup, as open_clip's trainer and the CleanCLIP code use.

    ``warmup_steps`` counts optimizer steps from step 0 (the official CleanCLIP code starts at step
    ``num_batches`` and so skips warmup, reference §3; cleanbench does not copy that quirk).
    """

    epochs: int = 1
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 0
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip_norm: float = 0.0

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 1, 10_000)
        check_range("batch_size", self.batch_size, 2, 1_000_000)
        check_range("lr", self.lr, 0.0, 1.0, low_inclusive=False)
        check_range("weight_decay", self.weight_decay, 0.0, 10.0)
        check_range("warmup_steps", self.warmup_steps, 0, None)
        check_range("beta1", self.beta1, 0.0, 1.0, high_inclusive=False)
        check_range("beta2", self.beta2, 0.0, 1.0, high_inclusive=False)
        check_range("eps", self.eps, 0.0, 1.0, low_inclusive=False)
        check_range("grad_clip_norm", self.grad_clip_norm, 0.0, None)


VICTIM_OBJECTIVES = ("clip", "clip+ssl")
# How a victim starts (issue 18.3): a random initialisation trained on the poisoned pairs (the CleanCLIP paper's
# main setting), or a clean pretrained CLIP finetuned on them (its second setting, and BadCLIP's threat model).
VICTIM_INITS = ("scratch", "pretrained")


@dataclass(frozen=True)
class VictimRecipe(TrainRecipe):
    """The victim's training run: the recipe, the objective it is trained with (issue 15's axis) and how it starts.

    ``objective = "clip"`` is the CLIP loss the CleanCLIP paper's victims are trained with. ``"clip+ssl"`` adds
    CleanCLIP's in-modal self-supervised term during training, weighted by ``ssl_weight``: Verma et al.
    (arXiv 2311.14948) found that CleanCLIP no longer removes a backdoor from a victim pretrained this way.

    ``init = "scratch"`` trains the victim from a random initialisation; ``"pretrained"`` finetunes a clean CLIP
    on the poisoned pairs with this recipe: the model's own weights (``[model] pretrained``), or a clean model
    trained once per run on the preset's disjoint ``[pretrain]`` pairs (:mod:`benchmark.runner.pretrained`).
    """

    objective: str = "clip"
    ssl_weight: float = 1.0
    init: str = "scratch"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in VICTIM_OBJECTIVES:
            raise UserError(f"victim.objective = {self.objective!r} is not one of {', '.join(VICTIM_OBJECTIVES)}")
        check_range("ssl_weight", self.ssl_weight, 0.0, 1_000.0, low_inclusive=False)
        if self.init not in VICTIM_INITS:
            raise UserError(f"victim.init = {self.init!r} is not one of {', '.join(VICTIM_INITS)}")

    def key_config(self) -> dict:
        """The settings that determine the victim, for its cache key. A ``clip`` victim's key leaves the objective
        out (``ssl_weight`` does not apply to it), so victims cached before the axis existed keep their keys.

        ``init`` is always left out: the starting model enters the victim key on its own, as the model's weights
        (``[model] pretrained``, already part of the key) or the key of the clean model trained here
        (:func:`benchmark.runner.plan.pretrained_key`), so a scratch victim keeps the key it had before."""
        values = config_dict(self)
        values.pop("init")
        if self.objective == "clip":
            values.pop("objective")
            values.pop("ssl_weight")
        return values

    @property
    def label(self) -> str:
        """The objective as rows and pages show it: ``clip``, or ``clip+ssl`` with its weight when not 1."""
        if self.objective == "clip" or self.ssl_weight == 1.0:
            return self.objective
        return f"{self.objective} (ssl_weight {self.ssl_weight:g})"
