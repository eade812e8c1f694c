"""``cleanbench validate``: every problem reported in one go (exit 2), the plan printed, nothing trained and
no GPU touched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import data_formats as make


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    """validate must not touch CUDA: initialising it or counting devices fails the test. Asking whether CUDA is
    there is allowed: torch's optimizers ask on every step, and the time estimate takes a few CPU steps."""
    def refuse(*args, **kwargs):
        raise AssertionError("validate touched the GPU")

    monkeypatch.setattr(torch.cuda, "_lazy_init", refuse)
    monkeypatch.setattr(torch.cuda, "init", refuse)
    monkeypatch.setattr(torch.cuda, "device_count", refuse)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("validate")
    make.write_csv(root / "csv", 48)
    make.write_webdataset(root / "wds", 48, shards=3)
    make.write_imagenet(root / "imagenet", 30)
    return root


def test_cc3m_preset_without_its_data_lists_every_missing_path_and_exits_2(cli, monkeypatch):
    monkeypatch.delenv("CC3M_TRAIN_CSV", raising=False)
    monkeypatch.delenv("IMAGENET_VAL_DIR", raising=False)
    code, out, err = cli("validate", "--preset", "cc3m-rn50")
    assert code == 2
    assert "CC3M_TRAIN_CSV is not set" in err and "IMAGENET_VAL_DIR is not set" in err
    assert "2 data problem(s)" in err and "Traceback" not in err
    assert "2,200,000 pairs / batch 128 × 64 epochs" in out  # the plan is still described


def test_missing_paths_and_bad_names_are_reported_together(cli, tmp_path):
    code, out, err = cli("validate", "--preset", "cc3m-rn50", "--attacks", "badnet,blend",
                         "--data", f"train={tmp_path / 'cc3m.csv'}", "--data", f"eval={tmp_path / 'val'}")
    assert code == 2
    assert f"{tmp_path / 'cc3m.csv'} (CSV file) does not exist" in err
    assert f"{tmp_path / 'val'} (image folder) does not exist" in err
    assert "Unknown attack 'blend'. Did you mean: blended?" in err


def test_data_too_small_for_the_preset_is_refused_with_its_count(cli, tiny_data):
    code, _, err = cli("validate", "--preset", "openai-rn50", "--attacks", "badnet", "--defenses", "none",
                       "--data", f"train={tiny_data / 'csv' / 'train.csv'}", "--data", f"eval={tiny_data / 'imagenet'}")
    assert code == 2
    assert "data.train_pairs + data.clean_pairs = 600000 exceeds the 48 pairs" in err


def test_valid_run_prints_data_target_cells_victims_and_steps(cli, tiny_data, tmp_path):
    preset = tmp_path / "tiny.toml"
    preset.write_text(make.preset_text('{format = "webdataset", path = "${TINY_SHARDS}"}',
                                       f'{{format = "imagenet", path = "{tiny_data / "imagenet"}"}}',
                                       memory_gb=0.0001))
    code, out, err = cli("validate", "--preset", preset, "--attacks", "badnet,blended", "--defenses",
                         "finetune", "--seeds", "0,1", "--poison-count", "4", "--data", f"train={tiny_data / 'wds'}")
    assert code == 0, err
    assert "48 pairs → 32 victim-training (in memory), 16 clean (in memory)" in out
    assert "30 images → 6 validation, 24 test (in memory)" in out
    assert "target: banana (class 954 of 1000)" in out
    assert "12 cells = 3 attacks (incl. the benign control 'none') × 2 defenses × 2 seeds; 6 victims to train" in out
    assert "32 pairs / batch 8 × 1 epochs = 4 steps per victim, 24 in all" in out
    assert "defense finetune: 16 clean pairs / batch 8 × 1 epochs ≈ 2 steps per cell × 6 cells" in out
    assert "estimated optimizer steps: 36" in out
    assert not (tmp_path / "results").exists()


def test_large_training_split_is_shown_as_streamed(cli, tiny_data, tmp_path):
    preset = tmp_path / "tiny.toml"
    preset.write_text(make.preset_text(f'{{format = "csv", path = "{tiny_data / "csv" / "train.csv"}"}}',
                                       f'{{format = "imagenet", path = "{tiny_data / "imagenet"}"}}',
                                       train_pairs=40, clean_pairs=8, memory_gb=0.0001))
    code, out, err = cli("validate", "--preset", preset, "--attacks", "none", "--defenses", "none")
    assert code == 0, err
    assert "40 victim-training (streamed), 8 clean (in memory)" in out
