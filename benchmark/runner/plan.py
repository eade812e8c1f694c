"""Planning a grid: check every name and config before any expensive work, and key every artifact.

``grid = preset × (attacks + benign control) × defenses × seeds``. A victim is keyed by everything that
determines it (data, model, victim recipe, attack name/version/config, poison count, seed, and for a victim
finetuned from a clean model trained here, that model's key); a cell adds the defense and the evaluation. Equal
keys mean equal artifacts, so reruns reuse them.

Data settings that only say how the data is read (``memory_gb``, ``workers``, ``max_bad_images``) are left out
of the keys, and unset sources too, so a Fashion-MNIST preset keeps the keys it had before sources existed.
The training split is cut first, so the sizes of the splits after it (clean, validation, test) do not move it: a
victim's key holds them at their defaults unless its attack reads the clean pairs
(:attr:`~attacks.base.Attack.uses_clean_pairs`), and a cell's key adds them, so a ``data.clean_pairs`` sweep
shares its victims and a preset at the default sizes keeps the keys it had before this distinction.
What ``memory_gb`` decides does count: whether a split is streamed (poisoned pairs are then drawn from the
split as streamed, and an unreadable image drops out of a batch rather than out of the split), so a streamed
training split marks the victim key and a streamed clean split the cell key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attacks import ATTACKS
from attacks.base import AttackContext, PoisonTarget
from benchmark.checkpoints import looks_like_path
from benchmark.config import config_dict
from benchmark.errors import UserError
from benchmark.data.resolve import resolve_preset
from benchmark.data.source_splits import streamed_splits
from benchmark.models import model_config, model_from_spec
from benchmark.presets import DataSpec, Preset, split_attack_settings
from benchmark.results import BENIGN_ATTACK, REFERENCE_DEFENSE
from benchmark.stages import STAGES, Stage
from benchmark.storage import content_key
from benchmark.task import PRETRAIN_SPLIT, Task
from defenses import DEFENSES
from benchmark.training_recipe import TrainRecipe
from defenses.base import effective_recipe

# Bump when a change to the engine (training loop, evaluation) makes old artifacts stale.
ENGINE_VERSION = "1"
# Data settings that change how data is read, never what is trained on (see the module docstring).
READ_ONLY_DATA_FIELDS = ("memory_gb", "workers", "max_bad_images")
# Sizes of the splits cut after the victim-training split (see the module docstring), and their defaults.
LATER_SPLIT_FIELDS = ("clean_pairs", "val_pairs", "test_images")
LATER_SPLIT_DEFAULTS = {field.name: field.default for field in dataclasses.fields(DataSpec)
                        if field.name in LATER_SPLIT_FIELDS}


@dataclass(frozen=True)
class VictimSpec:
    """One victim to train: the attack (or the benign control) and the seed."""

    attack: str
    seed: int
    attack_version: str
    attack_settings: dict[str, Any]  # the attack's config settings (without the poison keys)
    attack_config: dict[str, Any]
    poison_count: int
    key: str


@dataclass(frozen=True)
class CellSpec:
    """One grid cell: a victim, a defense applied to it, and its evaluation."""

    victim: VictimSpec
    defense: str
    defense_version: str
    defense_settings: dict[str, Any]
    defense_config: dict[str, Any]
    key: str
    # The recipe the defense trains with (the preset's [finetune] with the config's recipe fields set): the
    # runner hands this very object to the defense (``DefenseContext.recipe``) and records it in the row.
    train_recipe: TrainRecipe
    tuning: str | None = None  # how the recipe was chosen; None: the defense does not train with it
    stage: str = "post-training"  # the defense's stage (:data:`benchmark.stages.STAGES`)
    removal_rate: float | None = None  # data stage: the share of training pairs removed before retraining
    # training and data stages: the cache key of the victim the defense trains (or the runner retrains)
    trained_key: str | None = None
    sweep: tuple[tuple[str, Any], ...] = ()  # the sweep point this cell belongs to (benchmark.sweeps); () if none

    @property
    def row_id(self) -> str:
        """The cell's id in ``results.csv``: its cache key, or with a sweep, the key and the point (a cell that
        several points share is computed once, under :attr:`key`, and recorded once per point)."""
        return self.key if not self.sweep else content_key("row", self.key, list(map(list, self.sweep)))

    def trains_model(self, train_pairs: int) -> bool:
        """Whether the cell trains a victim-sized model of its own (its stage says: a training-stage defense always;
        a detector when its budget removes some of the ``train_pairs``)."""
        return STAGES[self.stage].runner().trains_victim(self, train_pairs)

    @property
    def recipe(self) -> dict[str, Any] | None:
        """What the row records as ``defense_recipe``: :attr:`train_recipe` and how it was chosen (None when the
        defense does not train with a recipe)."""
        if self.tuning is None:
            return None
        return {**config_dict(self.train_recipe), "tuning": self.tuning}


@dataclass
class Plan:
    """The cells of a grid, grouped so each victim is trained once and shared by all defenses."""

    preset: Preset
    victims: list[VictimSpec]
    cells: list[CellSpec]
    sweep: tuple[tuple[str, Any], ...] = ()  # the sweep point planned (benchmark.sweeps); () if none


def plan_grid(preset: Preset, attacks: list[str], defenses: list[str], seeds: list[int], *,
              attack_overrides: dict[str, Any] | None = None, resolve: bool = True,
              sweep: tuple[tuple[str, Any], ...] = ()) -> Plan:
    """Build and validate the plan. ``attack_overrides`` (``poison_rate``/``poison_count``) apply to every attack.

    A preset with data sources is resolved first (paths expanded and checked, class names, templates and
    synonyms read from the evaluation set; :func:`benchmark.data.resolve.resolve_preset`), so ``plan.preset``
    is what the runner needs; ``resolve=False`` plans the preset as given (``validate`` resolves on its own).
    The no-defense reference (``none``) is always part of the grid: without it no ΔASR can be computed and no
    one can tell whether an attack took, so no defense could be scored.
    """
    if resolve and preset.data.uses_sources:
        preset = resolve_preset(preset)
    if not seeds:
        raise UserError("no seeds given: use e.g. --seeds 0 or --seeds 0,1,2")
    if not defenses:
        raise UserError("no defenses given")
    check_model(preset)
    defenses = list(dict.fromkeys([REFERENCE_DEFENSE, *defenses]))
    victims = [_victim(preset, BENIGN_ATTACK, seed, {}) for seed in seeds]
    for attack in attacks:
        settings = {**preset.attacks.get(attack, {}), **(attack_overrides or {})}
        victims += [_victim(preset, attack, seed, settings) for seed in seeds]
    cells = [dataclasses.replace(_cell(preset, victim, defense), sweep=sweep) for victim in victims
             for defense in defenses]
    return Plan(preset, victims, cells, sweep)


def check_model(preset: Preset) -> None:
    """Refuse a model the preset cannot use, before anything is written: an unknown architecture, an image size
    its vision tower does not take (positional embeddings are sized for one resolution), or a weights file that
    does not load safely into it (a failure inside the grid would only show up as failed rows)."""
    name = preset.model.name
    config = model_config(name)
    if config is None:
        model_from_spec(preset.model)  # raises the unknown-model message with its did-you-mean
    size = config["vision_cfg"].get("image_size", preset.data.image_size)
    sizes = set(size) if isinstance(size, (list, tuple)) else {size}
    if sizes != {preset.data.image_size}:
        raise UserError(f"data.image_size = {preset.data.image_size} does not fit model {name}, which takes "
                        f"{'x'.join(map(str, size)) if isinstance(size, (list, tuple)) else size} px images; "
                        f"set data.image_size = {min(sizes)} or choose another model")
    weights = preset.model.pretrained
    if weights and looks_like_path(weights):
        model_from_spec(preset.model)


def _victim(preset: Preset, attack: str, seed: int, settings: dict[str, Any]) -> VictimSpec:
    poison, settings = split_attack_settings(settings)
    if attack == BENIGN_ATTACK:
        version, config, count, reads_clean = "-", {}, 0, False
    else:
        cls = ATTACKS.get(attack)
        context = AttackContext(preset.data.image_size, seed, torch.device("cpu"))
        config = config_dict(cls.from_settings(settings, context=context).config)  # a bad key fails here
        version, count = cls.version, poison_count(poison, preset.data.train_pairs, attack)
        reads_clean = cls.uses_clean_pairs
    # A scratch victim, and one that starts from the model's own weights (named by config_dict(preset.model)),
    # keep the keys they had before victims could start from a clean model trained here.
    start = ("init", "pretrained", pretrained_key(preset)) if preset.trains_clean_model else ()
    data = data_key(preset.data, "train", later_split_sizes=reads_clean)
    key = content_key("victim", ENGINE_VERSION, data, config_dict(preset.text),
                      config_dict(preset.model), preset.victim.key_config(), attack, version, config, count, seed,
                      *start)
    return VictimSpec(attack, seed, version, settings, config, count, key)


def _cell(preset: Preset, victim: VictimSpec, defense: str) -> CellSpec:
    cls = DEFENSES.get(defense)
    settings = preset.defenses.get(defense, {})
    instance = cls.from_settings(settings)
    config = config_dict(instance.config)
    tuning = tuning_note(preset, defense) if cls.uses_recipe else None
    stage = STAGES[cls.stage]  # the registry refused a class of any other stage
    key, trained_key, removal_rate = stage.runner().keys(preset, victim, defense, cls.version, config)
    return CellSpec(victim, defense, cls.version, settings, config, key, stage_recipe(stage, preset, instance.config),
                    tuning, stage.name, removal_rate, trained_key)


def stage_recipe(stage: Stage, preset: Preset, config: Any) -> TrainRecipe:
    """The recipe a defense of ``stage`` trains with: the preset's ``[finetune]`` with the defense config's recipe
    fields set (:func:`~defenses.base.effective_recipe`), or the victim's own recipe (the table's ``recipe``)."""
    return effective_recipe(preset.finetune, config) if stage.recipe == "finetune" else preset.victim


def data_key(data: DataSpec, split: str, *, later_split_sizes: bool = True) -> dict[str, Any]:
    """The data settings that determine what ``split`` ("train" or "clean") trains on, for a cache key. Without
    ``later_split_sizes`` (what the training split alone holds) the sizes of the splits cut after it are held at
    their defaults rather than dropped, so that keys written before this distinction stay valid."""
    values = {key: value for key, value in config_dict(data).items()
              if key not in READ_ONLY_DATA_FIELDS and not (key in ("train", "eval") and value is None)}
    if not later_split_sizes:
        values.update(LATER_SPLIT_DEFAULTS)
    if split in streamed_splits(data):
        values["streamed"] = True
    return values


def later_splits(data: DataSpec) -> tuple[Any, ...]:
    """What a cell's key adds to its victim's: the sizes of the clean, validation and test splits when they are not
    the defaults a victim's key may hold them at (nothing otherwise, so that cells keep the keys they had)."""
    sizes = {name: getattr(data, name) for name in LATER_SPLIT_FIELDS}
    return () if sizes == LATER_SPLIT_DEFAULTS else ("split sizes", sizes)


def pretrained_key(preset: Preset) -> str:
    """The content key of the clean model that ``preset``'s victims start from when it trains one
    (:attr:`~benchmark.presets.Preset.trains_clean_model`): the data settings (the pretraining split is the end of
    the permutation, :data:`~benchmark.task.PRETRAIN_SPLIT`, so the other splits' sizes do not move it), the
    captions' text settings, the model and the ``[pretrain]`` section."""
    return content_key("pretrained", ENGINE_VERSION, PRETRAIN_SPLIT, data_key(preset.data, "train",
                       later_split_sizes=False), config_dict(preset.text), config_dict(preset.model),
                       config_dict(preset.pretrain))


def clean_data_key(preset: Preset) -> str:
    """A content key of the clean pairs (the clean split's data settings and the text settings that write its
    captions): an attack that derives something costly from them caches it under this key."""
    return content_key("clean", ENGINE_VERSION, data_key(preset.data, "clean"), config_dict(preset.text))


def attack_context(preset: Preset, task: Task, seed: int, device: torch.device,
                   cache_dir: Path | None = None) -> AttackContext:
    """What an attack of ``preset`` may use (clean pairs, model name, target, cache): one place, so the victim's
    poisoning, its evaluation and the gallery build the same attack."""
    index = task.target_index
    target = PoisonTarget(index, preset.text.target, lambda generator: task.captions.caption(index, generator),
                          synonyms=tuple(preset.text.synonyms[index]))
    return AttackContext(preset.data.image_size, seed, device, clean_pairs=task.clean_pairs,
                         model_name=preset.model.name, target=target, cache_dir=cache_dir,
                         clean_data_key=clean_data_key(preset))


def tuning_note(preset: Preset, defense: str) -> str:
    """How a defense's hyperparameters were chosen, from the preset's ``[tuning]`` notes (issue 4: fixed in the
    preset, or a search on clean validation data only)."""
    notes = [f"{label}: {preset.tuning[name]}" for name, label in
             (("recipe", "[finetune] recipe"), (defense, f"[defenses.{defense}]")) if name in preset.tuning]
    return "; ".join(notes) or "fixed in the preset"


def poison_count(settings: dict[str, Any], train_pairs: int, attack: str) -> int:
    """The number of pairs to poison, from the poison keys ``poison_count`` or ``poison_rate`` (rate × training
    pairs)."""
    if settings.get("poison_count") is not None:
        count = settings["poison_count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UserError(f"attacks.{attack}.poison_count = {count!r} is out of range; allowed: [1, {train_pairs}]")
        if count > train_pairs:
            raise UserError(f"attacks.{attack}.poison_count = {count} is larger than the {train_pairs} training pairs")
        return count
    rate = settings.get("poison_rate")
    if rate is None:
        raise UserError(f"no poison rate for attack '{attack}': set attacks.{attack}.poison_rate in the preset "
                        "or pass --poison-rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise UserError(f"attacks.{attack}.poison_rate = {rate!r} is out of range; allowed: (0, 1]")
    return max(1, round(rate * train_pairs))

