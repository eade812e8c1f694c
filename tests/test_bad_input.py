"""Bad input to ``cleanbench run``: one exact line on stderr, exit code 2, and the output folder untouched.

One table, one row per mistake a user makes: a name that does not exist, a config key or value that is wrong,
a preset file that does not parse, a dataset that is empty or unreadable, an output folder that holds something
the run must not touch. Each row gives the exact message; the test also snapshots the output folder (every
file's name and bytes) before and after, so "nothing written" is checked, not assumed: a folder that did not
exist must still not exist.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
from dataclasses import dataclass
from pathlib import Path

import pytest

from attacks import ATTACKS
from benchmark.presets import builtin_presets
from benchmark.results import COLUMNS, SCHEMA_VERSION
from benchmark.training_recipe import VictimRecipe
from defenses import DEFENSES
from tests.helpers import TEST_PRESET

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"


@dataclass(frozen=True)
class Case:
    """``args`` are added to a valid command; ``preset`` edits the test preset's text (old → new, or appends
    when old is empty); ``data`` builds a dataset folder passed as --data-dir; ``out`` prepares the output folder.
    ``message`` is the exact line after ``error: ``, with {placeholders} filled in by :func:`placeholders`."""

    id: str
    message: str
    args: tuple[str, ...] = ()
    preset: tuple[str, str] | None = None
    data: str | None = None
    out: str | None = None


def keys(cls: type) -> str:
    return ", ".join(sorted(field.name for field in dataclasses.fields(cls)))


CASES = [
    # Names that do not exist, with a did-you-mean.
    Case("unknown-attack", "Unknown attack 'blend'. Did you mean: blended? Available: {attacks}.", ("--attacks", "blend")),
    Case("unknown-defense", "Unknown defense 'cleenclip'. Did you mean: cleanclip, safeclip, roclip? Available: {defenses}.",
         ("--defenses", "cleenclip")),
    Case("unknown-preset", "Unknown preset 'fmnist-tiney'. Did you mean: fmnist-tiny, fmnist-tiny-clip-ssl, "
         "fmnist-tiny-pretrained? Available: {presets} (or a path to a .toml file).", ("--preset", "fmnist-tiney")),
    Case("missing-preset-file", "preset file {root}/nope.toml does not exist", ("--preset", "{root}/nope.toml")),
    Case("unknown-model", "Unknown model 'cleanbench-vit-tinny'. Did you mean: cleanbench-vit-tiny? Run "
         "`python -c 'import open_clip; print(open_clip.list_models())'` for all.",
         preset=('name = "cleanbench-vit-tiny"', 'name = "cleanbench-vit-tinny"')),
    Case("unknown-dataset", "data.dataset = 'cifar-10' is not supported; choose one of: fashion-mnist",
         preset=('dataset = "fashion-mnist"', 'dataset = "cifar-10"')),
    Case("missing-plugin-file", "plugin file {root}/nope.py does not exist (give a .py file or 'module:Class')",
         ("--plugin", "{root}/nope.py")),
    Case("missing-plugin-module", "plugin no_such_module:Thing failed to load: ModuleNotFoundError: No module named "
         "'no_such_module'", ("--plugin", "no_such_module:Thing")),
    # Unknown config keys.
    Case("unknown-recipe-key", "Unknown key 'victim.epoch'. Did you mean: epochs? Known keys: {recipe_keys}.",
         preset=("[victim]\nepochs = 1", "[victim]\nepoch = 1")),
    Case("unknown-attack-key", "Unknown key 'attacks.badnet.patch_sise'. Did you mean: patch_size? Known keys: "
         "{badnet_keys}.", preset=("[attacks.badnet]\n", "[attacks.badnet]\npatch_sise = 3\n")),
    Case("unknown-defense-key", "Unknown key 'defenses.finetune.epoch'. Did you mean: epochs? Known keys: "
         "{finetune_keys}.", ("--defenses", "finetune"), preset=("", "\n[defenses.finetune]\nepoch = 2\n")),
    # Values out of range or of the wrong type.
    Case("poison-rate-zero", "attacks.badnet.poison_rate = 0.0 is out of range; allowed: (0, 1]", ("--poison-rate", "0")),
    Case("poison-rate-above-one", "attacks.badnet.poison_rate = 1.5 is out of range; allowed: (0, 1]",
         ("--poison-rate", "1.5")),
    Case("poison-rate-negative-in-preset", "attacks.badnet.poison_rate = -0.1 is out of range; allowed: (0, 1]",
         preset=("[attacks.badnet]\npoison_rate = 0.05", "[attacks.badnet]\npoison_rate = -0.1")),
    Case("poison-count-zero", "attacks.badnet.poison_count = 0 is out of range; allowed: [1, 512]",
         ("--poison-count", "0")),
    Case("poison-count-too-large", "attacks.badnet.poison_count = 100000 is larger than the 512 training pairs",
         ("--poison-count", "100000")),
    Case("negative-epochs", "victim: epochs = -1 is out of range; allowed: [1, 10000]",
         preset=("[victim]\nepochs = 1", "[victim]\nepochs = -1")),
    Case("epochs-not-a-number", "victim.epochs must be an integer, got 'two'",
         preset=("[victim]\nepochs = 1", '[victim]\nepochs = "two"')),
    Case("image-size-the-model-cannot-take", "data.image_size = 64 does not fit model cleanbench-vit-tiny, which "
         "takes 32 px images; set data.image_size = 32 or choose another model",
         preset=("image_size = 32", "image_size = 64")),
    Case("image-size-too-small", "data: image_size = 4 is out of range; allowed: [8, 4096]",
         preset=("image_size = 32", "image_size = 4")),
    Case("more-pairs-than-images", "data.train_pairs + data.clean_pairs + data.val_pairs = 70384 exceeds the 60000 "
         "training images of fashion-mnist", preset=("train_pairs = 512", "train_pairs = 70000")),
    Case("target-not-a-class", "text: target class 'handbag' is not a class of the evaluation set. Did you mean: "
         "sandal, bag? Classes: t-shirt, trousers, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot.",
         preset=('target = "bag"', 'target = "handbag"')),
    Case("negative-seed", "--seeds '-1': seeds must be ≥ 0", ("--seeds", "-1")),
    Case("seeds-not-integers", "--seeds 'a,b': give comma-separated integers, e.g. 0,1,2", ("--seeds", "a,b")),
    Case("unknown-device", "--device 'tpu' is not understood; choose auto, cpu, cuda or cuda:N", ("--device", "tpu")),
    # A preset file that does not parse: the file and the line.
    Case("preset-syntax-error", "preset file {preset} is not valid TOML: Invalid value (at line {appended_line}, "
         "column 10)", preset=("", "\nbroken = = 1\n")),
    # Datasets that are empty or unreadable.
    Case("empty-dataset", "dataset fashion-mnist is empty: 0 training and 0 test images", data="empty"),
    Case("idx-bad-magic", "{root}/data/" + TRAIN_IMAGES + " is not an IDX file of unsigned bytes (magic 0xd03)",
         data="bad-magic"),
    Case("idx-truncated", "{root}/data/" + TRAIN_IMAGES + " is truncated: expected 7840 bytes of data, found 100",
         data="truncated"),
    Case("idx-corrupt-gzip", "{root}/data/" + TRAIN_IMAGES + " cannot be read: EOFError: Compressed file ended "
         "before the end-of-stream marker was reached", data="corrupt-gzip"),
    # Output folders the run must not touch.
    Case("results-other-schema-version", "{out}/results.csv was written with results schema version 0; this "
         "cleanbench writes version {schema}. Use another --out folder.", out="schema-0"),
    Case("results-foreign-csv", "{out}/results.csv is not a cleanbench results file (no schema_version column); "
         "choose another --out folder", out="foreign"),
    Case("results-empty-file", "{out}/results.csv is not a cleanbench results file (no schema_version column); "
         "choose another --out folder", out="empty"),
    Case("results-under-another-config", "{out}/results.csv already holds fmnist-test / badnet / none seed 0 under "
         "another config (preset, attack or defense settings changed); use another --out folder", out="other-config"),
    Case("out-is-a-file", "--out {out} is a file; give a folder (it is created if missing)", out="file"),
    Case("out-under-a-file", "--out {out}/runs cannot be created: {out} is a file", ("--out", "{out}/runs"), out="file"),
    Case("out-in-procfs", "--out /proc/cleanbench/out cannot be written: /proc does not take new files (No such file "
         "or directory); choose another folder", ("--out", "/proc/cleanbench/out")),
]


def write_idx(path: Path, shape: tuple[int, ...], payload: bytes | None = None, kind: int = 0x08) -> None:
    """An IDX file (gzipped): magic (type, ndim), the dimensions, then the bytes."""
    size = 1
    for dim in shape:
        size *= dim
    header = (kind << 8 | len(shape)).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + (bytes(size) if payload is None else payload))


def make_dataset(folder: Path, kind: str) -> None:
    folder.mkdir()
    count = 0 if kind == "empty" else 10
    for split in ("train", "t10k"):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", (count, 28, 28))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", (count,))
    images = folder / TRAIN_IMAGES
    if kind == "bad-magic":
        write_idx(images, (count, 28, 28), kind=0x0D)  # 0x0D: a float payload, not unsigned bytes
    elif kind == "truncated":
        write_idx(images, (count, 28, 28), payload=bytes(100))
    elif kind == "corrupt-gzip":
        images.write_bytes(images.read_bytes()[:20])  # a download cut short


def make_output(out: Path, kind: str) -> None:
    if kind == "file":
        out.write_text("not a folder\n")
        return
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    rows = {"schema-0": (COLUMNS, {"schema_version": "0"}), "foreign": (["a", "b"], {"a": "1", "b": "2"}),
            "empty": (None, None),
            "other-config": (COLUMNS, {"schema_version": str(SCHEMA_VERSION), "cell_id": "0123456789abcdef",
                                       "preset": "fmnist-test", "attack": "badnet", "defense": "none", "seed": "0",
                                       "status": "ok"})}
    header, row = rows[kind]
    with open(out / "results.csv", "w", newline="") as handle:
        if header is not None:
            writer = csv.DictWriter(handle, fieldnames=header, restval="")
            writer.writeheader()
            writer.writerow(row)


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under ``path`` with its bytes (None if ``path`` does not exist)."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def placeholders(root: Path, out: Path, preset: Path) -> dict[str, object]:
    from attacks.badnet import BadNet
    from defenses.finetune import Finetune

    return {"root": root, "out": out, "preset": preset, "schema": SCHEMA_VERSION,
            "attacks": ", ".join(ATTACKS.names()), "defenses": ", ".join(DEFENSES.names()),
            "presets": ", ".join(builtin_presets()), "recipe_keys": keys(VictimRecipe),
            "badnet_keys": keys(BadNet.Config), "finetune_keys": keys(Finetune.Config),
            "appended_line": len(TEST_PRESET.read_text().splitlines()) + 2}


def test_the_table_covers_at_least_20_mistakes():
    assert len(CASES) >= 20 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_exact_line_exit_2_and_the_output_folder_is_unchanged(case, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CLEANBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    root, out, preset = tmp_path, tmp_path / "out", TEST_PRESET
    if case.preset is not None:
        old, new = case.preset
        text = TEST_PRESET.read_text()
        assert old in text, f"the test preset no longer contains {old!r}"
        preset = root / "preset.toml"
        preset.write_text(text.replace(old, new, 1) if old else text + new)
    if case.data is not None:
        make_dataset(root / "data", case.data)
    if case.out is not None:
        make_output(out, case.out)
    values = placeholders(root, out, preset)
    args = [arg.format(**values) for arg in case.args]
    command = ["run", "--preset", str(preset), "--attacks", "badnet", "--defenses", "none", "--seeds", "0",
               "--out", str(out), "--no-plugin-autoload"]
    if case.data is not None:
        command += ["--data-dir", str(root / "data")]
    before = snapshot(out)
    code, _, err = cli(*command, *args)  # a later --preset/--attacks/... replaces the earlier one
    assert err == f"error: {case.message.format(**values)}\n"
    assert code == 2
    assert snapshot(out) == before
