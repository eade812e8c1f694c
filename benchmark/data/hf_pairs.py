"""Hugging Face datasets: image–caption pairs for training, or an image-classification set for evaluation.

``path`` is a folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``) or, when it is not a
local folder, a hub name loaded with ``load_dataset`` (needs the network, or the local HF cache). Columns are
found by feature type when not named: the first ``Image`` column, the first ``ClassLabel`` column (whose
``names`` become the class names), and ``caption``/``text``/``txt`` for captions. Images are read undecoded so
a corrupt one is skipped and counted by the loader rather than failing inside ``datasets``.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.data.sources import Item, Source
from benchmark.errors import UserError
from benchmark.presets import SourceSpec

CAPTION_COLUMNS = ("caption", "text", "txt", "sentence")
EVAL_SPLITS = ("validation", "test", "val")


def looks_local(path: str) -> bool:
    """Whether ``path`` is meant as a folder rather than a hub name (``owner/name``)."""
    return Path(path).exists() or path.startswith(("/", ".", "~")) or path.count("/") > 1


class HfSource(Source):
    """One split of a Hugging Face dataset, as pairs (``role`` = "train") or labelled images ("eval")."""

    @classmethod
    def from_spec(cls, spec: SourceSpec, role: str) -> "HfSource":
        return cls(spec.path, spec.split, role, spec.image_key, spec.caption_key, spec.label_key)

    def __init__(self, path: str, split: str, role: str, image_key: str, caption_key: str, label_key: str) -> None:
        import datasets

        self.name = path
        dataset = _load(path, split, role)
        features = dataset.features
        self.image_key = image_key or _first(features, datasets.Image, path)
        self._require(features, self.image_key)
        if role == "train":
            self.text_key = caption_key or next((c for c in CAPTION_COLUMNS if c in features), "")
            if not self.text_key:
                raise UserError(f"Hugging Face dataset {path} has no caption column ({', '.join(CAPTION_COLUMNS)}); "
                                f"its columns: {', '.join(features)} (set caption_key of the source)")
        else:
            self.text_key = label_key or _first(features, datasets.ClassLabel, path)
            feature = features.get(self.text_key)
            if not isinstance(feature, datasets.ClassLabel):
                raise UserError(f"column {self.text_key!r} of {path} is not a ClassLabel, so it has no class names")
            self.classnames = tuple(name.replace("_", " ") for name in feature.names)
        self._require(features, self.text_key)
        if isinstance(features[self.image_key], datasets.Image):
            dataset = dataset.cast_column(self.image_key, datasets.Image(decode=False))
        self.dataset = dataset.select_columns([self.image_key, self.text_key])
        self.role = role

    def _require(self, features, key: str) -> None:
        if key not in features:
            raise UserError(f"Hugging Face dataset {self.name} has no column {key!r}; "
                            f"its columns: {', '.join(features)}")

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, index: int) -> Item:
        row = self.dataset[int(index)]
        image = row[self.image_key]
        if isinstance(image, dict):  # an undecoded Image feature: bytes, or a path to the file
            image = image["bytes"] if image.get("bytes") is not None else Path(image["path"] or "")
        if self.role == "train":
            return Item(image, str(row[self.text_key]))
        return Item(image, label=int(row[self.text_key]))

    def read_captions(self, indices) -> list[str]:
        """The caption column of the rows ``indices`` (no image bytes read)."""
        rows = self.dataset.select_columns([self.text_key]).select([int(index) for index in indices])
        return [str(text) for text in rows[self.text_key]]

    def describe(self, index: int) -> str:
        return f"row {index} of {self.name}"


def _load(path: str, split: str, role: str):
    import datasets

    if looks_local(path):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise UserError(f"Hugging Face dataset folder {folder} does not exist")
        try:
            loaded = datasets.load_from_disk(str(folder))
        except FileNotFoundError as error:
            raise UserError(f"{folder} is not a folder written by datasets' save_to_disk: {error}") from None
    else:
        try:
            loaded = datasets.load_dataset(path, split=split or None)
        except Exception as error:  # noqa: BLE001 - offline, unknown name, gated: all mean "not available"
            raise UserError(f"Hugging Face dataset {path!r} could not be loaded from the hub: "
                            f"{type(error).__name__}: {error}".splitlines()[0][:300]) from None
    if isinstance(loaded, datasets.DatasetDict):
        wanted = [split] if split else (["train"] if role == "train" else list(EVAL_SPLITS))
        chosen = next((name for name in wanted if name in loaded), None)
        if chosen is None:
            raise UserError(f"Hugging Face dataset {path} has no split {' or '.join(wanted)}; "
                            f"its splits: {', '.join(loaded)} (set split of the source)")
        return loaded[chosen]
    return loaded


def _first(features, kind: type, path: str) -> str:
    """The first column whose feature is a ``kind`` (``datasets.Image``, ``datasets.ClassLabel``)."""
    for name, feature in features.items():
        if isinstance(feature, kind):
            return name
    raise UserError(f"Hugging Face dataset {path} has no {kind.__name__} column; its columns: {', '.join(features)}")
