"""Presets: everything about a scenario that is not the attack or the defense, stored as TOML files.

Built-in presets live in ``benchmark/presets/*.toml``; ``--preset path/to/file.toml`` loads any other file.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config import build_config, check_range
from benchmark.errors import UserError
from benchmark.training_recipe import TrainRecipe

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class DataSpec:
    """Where the images come from and how they are split into disjoint parts."""

    dataset: str = "fashion-mnist"
    data_dir: str = ""
    image_size: int = 32
    train_pairs: int = 20_000
    clean_pairs: int = 5_000
    val_pairs: int = 2_000
    test_images: int = 0  # 0 = the whole test split
    split_seed: int = 0

    def __post_init__(self) -> None:
        check_range("image_size", self.image_size, 8, 4096)
        check_range("train_pairs", self.train_pairs, 1, None)
        check_range("clean_pairs", self.clean_pairs, 0, None)
        check_range("val_pairs", self.val_pairs, 0, None)
        check_range("test_images", self.test_images, 0, None)


@dataclass(frozen=True)
class ModelSpec:
    """The victim architecture (an open_clip name) and, optionally, the weights it starts from."""

    name: str = "cleanbench-vit-tiny"
    checkpoint: str = ""  # a local .safetensors / .pt file to start from instead of random init


@dataclass(frozen=True)
class TextSpec:
    """Class names for the zero-shot classifier, and how training captions are written."""

    classnames: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    caption_templates: tuple[str, ...]
    eval_templates: tuple[str, ...]
    target: str

    def __post_init__(self) -> None:
        if len(self.synonyms) != len(self.classnames):
            raise UserError(f"text.synonyms has {len(self.synonyms)} lists but there are {len(self.classnames)} classes")
        if self.target not in self.classnames:
            raise UserError(f"text.target = {self.target!r} is not a class; classes: {', '.join(self.classnames)}")
        for template in self.caption_templates + self.eval_templates:
            if "{}" not in template:
                raise UserError(f"template {template!r} has no '{{}}' for the class name")


@dataclass(frozen=True)
class Preset:
    """A complete scenario; ``attacks``/``defenses`` hold per-component settings (poison rate, config keys)."""

    name: str
    description: str
    data: DataSpec
    model: ModelSpec
    text: TextSpec
    victim: TrainRecipe
    finetune: TrainRecipe
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    defenses: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""

    @property
    def target_index(self) -> int:
        return self.text.classnames.index(self.text.target)


def builtin_presets() -> dict[str, Path]:
    return {path.stem: path for path in sorted(PRESET_DIR.glob("*.toml"))}


def load_preset(name_or_path: str) -> Preset:
    """A built-in preset by name, or a preset TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        presets = builtin_presets()
        if name_or_path not in presets:
            close = difflib.get_close_matches(name_or_path, presets, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UserError(f"Unknown preset '{name_or_path}'.{hint} Available: {', '.join(presets)} (or a path to a .toml file).")
        path = presets[name_or_path]
    if not path.is_file():
        raise UserError(f"preset file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"preset file {path} is not valid TOML: {error}") from None
    return parse_preset(raw, source=str(path))


def parse_preset(raw: dict[str, Any], source: str = "") -> Preset:
    raw = dict(raw)
    known = {"name", "description", "data", "model", "text", "victim", "finetune", "attacks", "defenses"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"Unknown preset key(s) {', '.join(unknown)} in {source or 'preset'}. Known: {', '.join(sorted(known))}.")
    if "name" not in raw:
        raise UserError(f"preset {source} has no 'name'")
    return Preset(
        name=str(raw["name"]),
        description=str(raw.get("description", "")),
        data=build_config(DataSpec, raw.get("data"), "data"),
        model=build_config(ModelSpec, raw.get("model"), "model"),
        text=build_config(TextSpec, raw.get("text"), "text"),
        victim=build_config(TrainRecipe, raw.get("victim"), "victim"),
        finetune=build_config(TrainRecipe, raw.get("finetune"), "finetune"),
        attacks={k: dict(v) for k, v in raw.get("attacks", {}).items()},
        defenses={k: dict(v) for k, v in raw.get("defenses", {}).items()},
        source=source,
    )
