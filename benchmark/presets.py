"""Presets: everything about a scenario that is not the attack or the defense, stored as TOML files.

Built-in presets live in ``benchmark/presets/*.toml``; ``--preset path/to/file.toml`` loads any other file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config import build_config, check_range
from benchmark.errors import UserError, did_you_mean
from benchmark.registry import check_name
from benchmark.training_recipe import TrainRecipe, VictimRecipe

PRESET_DIR = Path(__file__).parent / "presets"


PAIR_FORMATS = ("csv", "webdataset", "hf")  # image–caption pairs for training and the defenses' clean pairs
EVAL_FORMATS = ("imagefolder", "imagenet", "hf")  # labelled images for zero-shot evaluation
# Keys of an ``[attacks.NAME]`` table that say how many pairs to poison (the runner's), not how the attack works.
POISON_KEYS = ("poison_rate", "poison_count")


@dataclass(frozen=True)
class SourceSpec:
    """One data source on disk (or on the hub): its format, where it is, and which fields hold what.

    ``path`` may contain ``${ENV_VAR}``; it is expanded (and checked) when the preset is resolved for a run,
    so a preset can be listed without its data. Empty keys mean the format's default (see ``benchmark.data``).
    """

    format: str
    path: str
    split: str = ""  # hf: the split to read ("" = train for pairs, validation/test for evaluation)
    image_key: str = ""  # csv/hf: the image column; webdataset: the image extension(s), e.g. "jpg;png"
    caption_key: str = ""  # csv/hf: the caption column; webdataset: the caption extension
    label_key: str = ""  # hf evaluation: the ClassLabel column
    separator: str = ","  # csv: the field separator


@dataclass(frozen=True)
class DataSpec:
    """Where the images come from and how they are split into disjoint parts.

    Either the built-in ``dataset`` (Fashion-MNIST with generated captions), or two sources: ``train`` (pairs,
    split into victim-training, clean and nothing else) and ``eval`` (labelled images: validation + test).
    A split whose decoded uint8 images fit in ``memory_gb`` is held in memory (the fast path); a larger one
    is streamed from disk by DataLoader workers.
    """

    dataset: str = "fashion-mnist"
    data_dir: str = ""
    train: SourceSpec | None = None
    eval: SourceSpec | None = None
    image_size: int = 32
    train_pairs: int = 20_000
    clean_pairs: int = 5_000
    val_pairs: int = 2_000
    test_images: int = 0  # 0 = the whole test split
    split_seed: int = 0
    max_bad_images: int = 100  # corrupt or missing images skipped (with a warning each) before the run stops
    memory_gb: float = 8.0
    workers: int = 4  # DataLoader worker processes that decode images

    def __post_init__(self) -> None:
        check_range("image_size", self.image_size, 8, 4096)
        check_range("train_pairs", self.train_pairs, 1, None)
        check_range("clean_pairs", self.clean_pairs, 0, None)
        check_range("val_pairs", self.val_pairs, 0, None)
        check_range("test_images", self.test_images, 0, None)
        check_range("max_bad_images", self.max_bad_images, 0, None)
        check_range("memory_gb", self.memory_gb, 0.0, None)
        check_range("workers", self.workers, 0, 256)
        if (self.train is None) != (self.eval is None):
            raise UserError("train and eval sources go together: give both [data.train] and [data.eval], or neither")
        for role, spec, formats in (("train", self.train, PAIR_FORMATS), ("eval", self.eval, EVAL_FORMATS)):
            if spec is not None and spec.format not in formats:
                raise UserError(f"{role}.format = {spec.format!r} is not supported; choose one of: {', '.join(formats)}")

    @property
    def uses_sources(self) -> bool:
        return self.train is not None


@dataclass(frozen=True)
class ModelSpec:
    """The victim architecture (an open_clip name) and, optionally, the weights it starts from."""

    name: str = "cleanbench-vit-tiny"
    # Start from these weights instead of a random init: an open_clip pretrained tag ("openai", downloaded on first
    # use) or a local .safetensors / .pt / .bin file, read without running pickled code (benchmark.checkpoints).
    pretrained: str = ""
    # OpenAI's original TorchScript files run the program they contain when loaded: only with this set.
    allow_torchscript: bool = False


@dataclass(frozen=True)
class TextSpec:
    """Class names for the zero-shot classifier, and how training captions are written.

    With data sources, empty lists are filled from the evaluation set when the preset is resolved: its class
    names and templates (OpenAI's 80 for ImageNet), one synonym per class, and caption templates = evaluation
    templates (CleanCLIP's poisoned captions are the 80 ImageNet templates filled with the target, reference §1).
    """

    target: str = ""
    classnames: tuple[str, ...] = ()
    synonyms: tuple[tuple[str, ...], ...] = ()
    caption_templates: tuple[str, ...] = ()
    eval_templates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.target:
            raise UserError("target is not set: name the backdoor's target class, e.g. target = \"banana\"")
        if self.classnames and len(self.synonyms) != len(self.classnames):
            raise UserError(f"text.synonyms has {len(self.synonyms)} lists but there are {len(self.classnames)} classes")
        if self.classnames and self.target not in self.classnames:
            raise UserError(unknown_class_message(self.target, self.classnames))
        for template in self.caption_templates + self.eval_templates:
            if "{}" not in template:
                raise UserError(f"template {template!r} has no '{{}}' for the class name")


def split_attack_settings(settings: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One attack's settings (its preset table with any CLI overrides) split into the poison keys
    (:data:`POISON_KEYS`, for the runner) and the rest, the attack's own config."""
    settings = settings or {}
    return ({k: v for k, v in settings.items() if k in POISON_KEYS},
            {k: v for k, v in settings.items() if k not in POISON_KEYS})


def unknown_class_message(target: str, classnames: tuple[str, ...] | list[str]) -> str:
    """One line naming the missing target and the closest class names (an ImageNet list is too long to print)."""
    hint = did_you_mean(target, classnames, n=5, cutoff=0.6)
    listing = f" Classes: {', '.join(classnames)}." if len(classnames) <= 20 else f" ({len(classnames)} classes.)"
    return f"target class {target!r} is not a class of the evaluation set.{hint}{listing}"


@dataclass(frozen=True)
class SweepAxis:
    """One swept key of a preset (:mod:`benchmark.sweeps`) and its values, in the order given."""

    key: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class DetectionSpec:
    """How the runner acts on a data-stage defense's scores: it removes the ``removal_rate`` share of the
    training pairs that scored highest, and retrains the victim on the rest.

    The budget is the defender's, fixed before any attack is known, and the same for every attack: a detector
    does not learn the poison rate. Its cost on clean data is the benign control's CA after that removal. A
    budget that removes nothing (0) is detection only: the cell's model is the no-defense victim, not retrained.
    """

    removal_rate: float = 0.1

    def __post_init__(self) -> None:
        check_range("detection.removal_rate", self.removal_rate, 0.0, 1.0, high_inclusive=False)


@dataclass(frozen=True)
class PretrainSpec(TrainRecipe):
    """The clean CLIP that ``[victim] init = "pretrained"`` victims start from, when the model has no weights of its
    own: trained once per run with the CLIP loss on ``pairs`` clean pairs disjoint from every other split, with
    this recipe (the TrainRecipe fields), from a random initialisation and batch order drawn from ``seed``.

    The model does not depend on the run's seeds: every victim of the run is finetuned from the same one. Only the
    built-in dataset has a pretraining split (the end of the permutation: the other splits stay as they are and their
sizes do not move it, :data:`benchmark.task.PRETRAIN_SPLIT`); a preset with
    data sources starts its pretrained victims from ``[model] pretrained``. ``pairs = 0``: no pretraining split.
    """

    pairs: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pairs", self.pairs, 0, None)
        check_range("seed", self.seed, 0, None)

    @property
    def recipe(self) -> VictimRecipe:
        """The clean model's training run: this recipe with the plain CLIP objective."""
        return VictimRecipe(**{name: getattr(self, name) for name in TrainRecipe.__dataclass_fields__})


@dataclass(frozen=True)
class Preset:
    """A complete scenario; ``attacks``/``defenses`` hold per-component settings (poison rate, config keys)."""

    name: str
    description: str
    data: DataSpec
    model: ModelSpec
    text: TextSpec
    victim: VictimRecipe
    finetune: TrainRecipe
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    defenses: dict[str, dict[str, Any]] = field(default_factory=dict)
    detection: DetectionSpec = DetectionSpec()
    sweeps: tuple[SweepAxis, ...] = ()  # the preset's [sweep] table: a study as a file (benchmark.sweeps)
    pretrain: PretrainSpec = PretrainSpec()  # the clean model pretrained victims start from (no weights given)
    # How hyperparameters were chosen, recorded in every row: ``recipe`` for the shared [finetune] recipe, a
    # defense's name for its own settings. Absent means "fixed in the preset" (issue 4's fair-tuning protocol).
    tuning: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        check_initialisation(self.victim, self.model, self.pretrain, self.data)

    @property
    def target_index(self) -> int:
        return self.text.classnames.index(self.text.target)

    @property
    def trains_clean_model(self) -> bool:
        """Whether the victims start from a clean model trained here on the ``[pretrain]`` pairs (once per run)."""
        return self.victim.init == "pretrained" and not self.model.pretrained


def check_initialisation(victim: VictimRecipe, model: ModelSpec, pretrain: PretrainSpec, data: DataSpec) -> None:
    """Refuse a victim start the preset cannot give: a pretrained victim starts from the model's weights or from a
    clean model trained on ``[pretrain]`` pairs (exactly one of them); a scratch victim from a random init."""
    weights = model.pretrained
    if victim.init == "scratch":
        if weights:
            raise UserError(f"model.pretrained = {weights!r} starts the victim from weights: set victim.init = "
                            "\"pretrained\" (a \"scratch\" victim starts from a random initialisation)")
        return
    if data.uses_sources and not weights:
        raise UserError("victim.init = \"pretrained\" with data sources starts from the model's own weights: set "
                        "model.pretrained (an open_clip tag such as \"openai\", or a weights file)"
                        + (f"; pretrain.pairs = {pretrain.pairs} needs the built-in dataset" if pretrain.pairs else ""))
    if weights and pretrain.pairs:
        raise UserError(f"victim.init = \"pretrained\" starts from model.pretrained = {weights!r} or from a clean "
                        f"model trained on pretrain.pairs = {pretrain.pairs} pairs, not both: remove one")
    if not weights and not pretrain.pairs:
        raise UserError("victim.init = \"pretrained\" needs a model to start from: set pretrain.pairs (a clean CLIP "
                        "trained here on that many disjoint pairs) or model.pretrained (weights)")


def builtin_presets() -> dict[str, Path]:
    return {path.stem: path for path in sorted(PRESET_DIR.glob("*.toml"))}


def load_preset(name_or_path: str) -> Preset:
    """A built-in preset by name, or a preset TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        presets = builtin_presets()
        if name_or_path not in presets:
            raise UserError(f"Unknown preset '{name_or_path}'.{did_you_mean(name_or_path, presets)} Available: {', '.join(presets)} (or a path to a .toml file).")
        path = presets[name_or_path]
    if not path.is_file():
        raise UserError(f"preset file {path} does not exist")
    return parse_preset(read_preset_table(path), source=str(path))


def read_preset_table(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset file's table, with ``extends = "NAME"|"file.toml"`` resolved: the named preset's table with this
    file's tables merged over it key by key (a preset that changes one setting of another is a few lines)."""
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"preset file {path} is not valid TOML: {error}") from None
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise UserError(f"extends in {path}: expected a preset name or a .toml path, got {base_name!r}")
    base_path = Path(base_name)
    if base_path.suffix == ".toml":
        base_path = base_path if base_path.is_absolute() else path.parent / base_path
    else:
        presets = builtin_presets()
        if base_name not in presets:
            raise UserError(f"extends in {path}: unknown preset '{base_name}'.{did_you_mean(base_name, presets)} "
                            f"Available: {', '.join(presets)}.")
        base_path = presets[base_name]
    if base_path.resolve() in _seen or base_path.resolve() == path.resolve():
        raise UserError(f"extends in {path}: presets extend each other in a circle ({base_path})")
    if not base_path.is_file():
        raise UserError(f"extends in {path}: preset file {base_path} does not exist")
    return _merged(read_preset_table(base_path, (*_seen, path.resolve())), raw)


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: tables merge key by key, any other value replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_preset(raw: dict[str, Any], source: str = "") -> Preset:
    raw = dict(raw)
    known = {"name", "description", "data", "model", "text", "victim", "finetune", "attacks", "defenses", "tuning",
             "detection", "sweep", "pretrain"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"Unknown preset key(s) {', '.join(unknown)} in {source or 'preset'}. Known: {', '.join(sorted(known))}.")
    if "name" not in raw:
        raise UserError(f"preset {source} has no 'name'")
    check_name("preset", raw["name"], source or "a preset")  # names reach results files and pages, never paths
    return Preset(
        name=str(raw["name"]),
        description=str(raw.get("description", "")),
        data=build_config(DataSpec, raw.get("data"), "data"),
        model=build_config(ModelSpec, raw.get("model"), "model"),
        text=build_config(TextSpec, raw.get("text"), "text"),
        victim=build_config(VictimRecipe, raw.get("victim"), "victim"),
        finetune=build_config(TrainRecipe, raw.get("finetune"), "finetune"),
        attacks={k: dict(v) for k, v in raw.get("attacks", {}).items()},
        defenses={k: dict(v) for k, v in raw.get("defenses", {}).items()},
        detection=build_config(DetectionSpec, raw.get("detection"), "detection"),
        pretrain=build_config(PretrainSpec, raw.get("pretrain"), "pretrain"),
        sweeps=declared_sweeps(raw.get("sweep"), source),
        tuning=_tuning_notes(raw.get("tuning", {}), source),
        source=source,
    )


def _tuning_notes(raw: Any, source: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise UserError(f"[tuning] in {source or 'preset'}: expected text notes, e.g. finetune = \"lr chosen on ...\"")
    return dict(raw)


def declared_sweeps(raw: Any, source: str) -> tuple[SweepAxis, ...]:
    """A preset file's ``[sweep]`` table as axes. Unquoted dotted keys arrive as nested tables and are joined
    back into their dotted form; every value must be a non-empty list."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise UserError(f"[sweep] in {source or 'preset'}: expected a table of KEY = [values]")
    axes = []
    for key, values in _flattened(raw):
        if not isinstance(values, list) or not values:
            raise UserError(f"[sweep] {key} in {source or 'preset'}: expected a non-empty list of values, got {values!r}")
        axes.append(SweepAxis(key, tuple(values)))
    return tuple(axes)


def _flattened(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in table.items():
        if isinstance(value, dict):
            items += _flattened(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items
