"""Every data format end to end: tiny datasets are written at test time in each format, read through the
loaders (with corrupt and missing images), and run through a two-cell grid on CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.data.loader import BadImageBudget, StreamingPairs, materialise
from benchmark.data.formats import FORMATS, open_source
from benchmark.data.resolve import resolve_preset
from benchmark.data.source_splits import plan_splits
from benchmark.errors import UserError
from benchmark.presets import EVAL_FORMATS, PAIR_FORMATS, SourceSpec, parse_preset
from benchmark.runner import plan_grid, run_plan
from benchmark.task import build_task
from tests import data_formats as make

PAIRS, IMAGES = 48, 30


def test_every_format_a_preset_may_name_has_one_reader_and_no_reader_imports_the_table():
    assert set(FORMATS) == set(PAIR_FORMATS) | set(EVAL_FORMATS)
    base = (Path(__file__).parent.parent / "benchmark" / "data" / "sources.py").read_text()
    for reference in FORMATS.values():
        module = reference.partition(":")[0]
        assert module not in base  # the base module never imports a format: no import circle
        path = Path(__file__).parent.parent / (module.replace(".", "/") + ".py")
        assert "benchmark.data.formats" not in path.read_text()


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    make.write_csv(root / "csv", PAIRS)
    make.write_webdataset(root / "wds", PAIRS)
    make.write_hf_pairs(root / "hf-pairs", PAIRS)
    make.write_hf_classification(root / "hf-eval", IMAGES)
    make.write_image_folder(root / "folder", IMAGES)
    make.write_imagenet(root / "imagenet", IMAGES)
    return root


def preset_toml(train: str, eval_: str, *, target: str = "banana", **data) -> dict:
    """A preset for the tiny datasets (as parsed TOML); ``data`` overrides keys of its [data] table."""
    import tomllib

    return tomllib.loads(make.preset_text(train, eval_, target=target, **data))


SOURCES = {
    "csv": '{format = "csv", path = "ROOT/csv/train.csv"}',
    "webdataset": '{format = "webdataset", path = "ROOT/wds"}',
    "hf": '{format = "hf", path = "ROOT/hf-pairs"}',
    "imagefolder": '{format = "imagefolder", path = "ROOT/folder"}',
    "imagenet": '{format = "imagenet", path = "ROOT/imagenet"}',
    "hf-eval": '{format = "hf", path = "ROOT/hf-eval"}',
}


def source(name: str, root: Path) -> str:
    return SOURCES[name].replace("ROOT", str(root))


@pytest.mark.parametrize("train, eval_, classes", [
    ("csv", "imagenet", 1000), ("webdataset", "imagefolder", 3), ("hf", "hf-eval", 3)])
def test_two_cell_grid_runs_through_each_format(datasets_dir, tmp_path, train, eval_, classes):
    preset = resolve_preset(parse_preset(preset_toml(source(train, datasets_dir), source(eval_, datasets_dir))))
    assert len(preset.text.classnames) == classes and preset.text.target == "banana"
    plan = plan_grid(preset, ["badnet"], ["none"], [0])
    summary = run_plan(plan, tmp_path, torch.device("cpu"))
    assert (summary.victims_trained, summary.cells_run, summary.cells_failed) == (2, 2, 0), summary.failures
    rows = pd.read_csv(tmp_path / "results.csv")
    assert list(rows["status"]) == ["ok", "ok"]
    assert set(rows["n_clean"]) == {IMAGES - 6}  # the eval set minus the 6 validation images
    task = build_task(preset)  # memoised: the task the run used
    bananas = int((task.test_set.labels == task.target_index).sum())
    assert 0 < bananas < IMAGES - 6 and task.test_set.classnames[task.target_index] == "banana"
    assert rows.loc[rows["attack"] == "badnet", "n_triggered"].item() == IMAGES - 6 - bananas


def test_imagenet_folders_map_to_open_clip_names_and_openai_templates(datasets_dir):
    imagenet = open_source(SourceSpec("imagenet", str(datasets_dir / "imagenet")), "eval")
    assert imagenet.classnames[954] == "banana" and len(imagenet.classnames) == 1000
    assert len(imagenet.templates) == 80 and imagenet.templates[0].format("banana") == "a bad photo of a banana."
    written_as = [int(Path(imagenet.describe(i)).stem.rsplit("_", 1)[1]) % 3 for i in range(len(imagenet))]
    labels = [imagenet.read(i).label for i in range(len(imagenet))]
    assert {label for label, cls in zip(labels, written_as) if cls == 0} == {954}  # class 0 was written as banana
    assert set(labels) == {948, 951, 954}


def test_imagefolder_and_hf_class_names_come_from_the_data(datasets_dir):
    folder = open_source(SourceSpec("imagefolder", str(datasets_dir / "folder")), "eval")
    hf = open_source(SourceSpec("hf", str(datasets_dir / "hf-eval")), "eval")
    assert folder.classnames == hf.classnames == ("banana", "granny smith", "lemon")
    assert len(folder) == len(hf) == IMAGES


def test_target_missing_from_the_eval_set_names_close_matches(datasets_dir):
    raw = preset_toml(source("csv", datasets_dir), source("imagenet", datasets_dir), target="bananna")
    with pytest.raises(UserError, match=r"'bananna' is not a class.*Did you mean: banana"):
        resolve_preset(parse_preset(raw))


def test_paths_come_from_environment_variables_or_data_overrides(datasets_dir, monkeypatch):
    raw = preset_toml('{format = "csv", path = "${TRAIN_CSV}"}', '{format = "imagefolder", path = "${EVAL_DIR}"}')
    with pytest.raises(UserError, match="TRAIN_CSV is not set.*EVAL_DIR is not set"):
        resolve_preset(parse_preset(raw))
    monkeypatch.setenv("TRAIN_CSV", str(datasets_dir / "csv" / "train.csv"))
    preset = resolve_preset(parse_preset(raw), [f"eval={datasets_dir / 'folder'}"])
    assert preset.data.train.path == str(datasets_dir / "csv" / "train.csv")
    assert preset.data.eval.path == str(datasets_dir / "folder")
    swapped = resolve_preset(parse_preset(raw), [f"eval={datasets_dir / 'hf-eval'}", "eval.format=hf"])
    assert swapped.data.eval.format == "hf"


@pytest.mark.parametrize("spec", ["csv", "webdataset"])
def test_corrupt_and_missing_images_are_skipped_counted_and_named(tmp_path, caplog, spec):
    if spec == "csv":
        path = make.write_csv(tmp_path, 20, corrupt=2, missing=1)
        bad = 3
    else:
        path = make.write_webdataset(tmp_path / "wds", 20, corrupt=2)
        bad = 2
    pairs = open_source(SourceSpec(spec, str(path)), "train")
    budget = BadImageBudget(limit=5)
    with caplog.at_level(logging.WARNING, logger="cleanbench.data"):
        decoded = materialise(pairs, np.arange(len(pairs)), 32, 0, budget)
    assert len(pairs) == 20 and len(decoded) == 20 - bad and len(budget.skipped) == bad
    assert decoded.images.shape == (20 - bad, 3, 32, 32) and decoded.images.dtype == torch.uint8
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == bad and all("skipped unreadable image" in w for w in warnings)
    first = pairs.describe(0)
    assert any(first in w for w in warnings)  # the warning names the file (or shard member)
    with pytest.raises(UserError, match=rf"{bad} images could not be read, more than data.max_bad_images = {bad - 1}"):
        materialise(pairs, np.arange(len(pairs)), 32, 0, BadImageBudget(limit=bad - 1))


def test_streaming_pairs_decode_in_workers_and_count_each_bad_image_once(tmp_path):
    path = make.write_webdataset(tmp_path / "wds", 40, shards=3, corrupt=3)
    pairs = open_source(SourceSpec("webdataset", str(path)), "train")
    positions = np.arange(2, 40)  # a split: 38 pairs, one of them corrupt (position 2)
    budget = BadImageBudget(limit=10)
    stream = StreamingPairs(pairs, positions, 32, workers=2, budget=budget)
    generator = torch.Generator().manual_seed(0)
    epochs = [list(stream.batches(8, generator)) for _ in range(2)]
    for batches in epochs:
        seen = torch.cat([b["index"] for b in batches])
        assert len(seen) == len(set(seen.tolist())) >= 37 - 8  # no pair twice in an epoch; drop_last
        for batch in batches:
            assert batch["images"].shape[1:] == (3, 32, 32) and len(batch["captions"]) == len(batch["index"])
            labels = [int(positions[i]) % 3 for i in batch["index"]]
            assert batch["captions"] == [make.caption(label) for label in labels]
    assert [p for p in budget.skipped] == [2]  # counted once over both epochs
    orders = [torch.cat([b["index"] for b in batches]).tolist() for batches in epochs]
    assert orders[0] != orders[1]  # a new order every epoch


def test_large_splits_stream_and_small_ones_stay_in_memory(datasets_dir):
    raw = preset_toml(source("csv", datasets_dir), source("imagefolder", datasets_dir), train_pairs=40,
                      clean_pairs=8, memory_gb=0.0001)  # 100 kB at 3 kB per 32 px image: 8 or 30 fit, 40 do not
    preset = resolve_preset(parse_preset(raw))
    pairs, images = (open_source(preset.data.train, "train"), open_source(preset.data.eval, "eval"))
    plan = plan_splits(preset.data, len(pairs), len(images))
    assert plan.streamed == ("train",) and plan.source_pairs == PAIRS
    too_big = resolve_preset(parse_preset(preset_toml(source("csv", datasets_dir), source("imagefolder", datasets_dir),
                                                      train_pairs=40)))
    with pytest.raises(UserError, match="train_pairs \\+ data.clean_pairs = 56 exceeds the 48 pairs"):
        plan_splits(too_big.data, len(pairs), len(images))


def test_webdataset_counts_come_from_img2dataset_stats(tmp_path):
    from benchmark.data.webdataset_pairs import count_pairs

    path = make.write_webdataset(tmp_path / "wds", 25, shards=3)
    assert count_pairs(str(path)) == 25 == len(open_source(SourceSpec("webdataset", str(path)), "train"))
    (path / "00001_stats.json").unlink()
    assert count_pairs(str(path)) is None


def test_unknown_format_or_a_lone_source_is_refused_when_the_preset_is_read(datasets_dir):
    with pytest.raises(UserError, match="train.format = 'parquet' is not supported; choose one of: csv, webdataset, hf"):
        parse_preset(preset_toml('{format = "parquet", path = "x"}', source("imagenet", datasets_dir)))
    raw = preset_toml(source("csv", datasets_dir), source("imagenet", datasets_dir))
    del raw["data"]["eval"]
    with pytest.raises(UserError, match="give both \\[data.train\\] and \\[data.eval\\]"):
        parse_preset(raw)
