"""The victim's objective as an axis (issue 15): ``[victim] objective = "clip" | "clip+ssl"``, and presets that
extend another preset."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from benchmark.results import SCHEMA_VERSION
import torch
import torch.nn.functional as F

from benchmark.api import run_grid
from benchmark.config import config_dict
from benchmark.errors import UserError
from benchmark.presets import load_preset
from benchmark.runner import plan_grid
from benchmark.storage import content_key
from benchmark.training_recipe import TrainRecipe, VictimRecipe
from leaderboard.load import load_results
from tests.helpers import MODEL, TEST_PRESET, learnable_pairs


def test_a_bad_objective_or_weight_names_the_key():
    with pytest.raises(UserError, match=r"victim\.objective = 'ssl' is not one of clip, clip\+ssl"):
        VictimRecipe(objective="ssl")
    with pytest.raises(UserError, match="ssl_weight"):
        VictimRecipe(objective="clip+ssl", ssl_weight=0.0)


def test_a_clip_victim_keeps_the_key_it_had_before_the_axis():
    """Cached CLIP victims stay valid: their key is computed from the recipe's fields as before the axis existed."""
    recipe = VictimRecipe(epochs=2, lr=3e-4)
    before = config_dict(TrainRecipe(**{f.name: getattr(recipe, f.name) for f in dataclasses.fields(TrainRecipe)}))
    assert recipe.key_config() == before
    assert content_key(recipe.key_config()) == content_key(before)
    ssl = dataclasses.replace(recipe, objective="clip+ssl")
    assert ssl.key_config()["objective"] == "clip+ssl" and ssl.key_config() != before


def test_the_objective_changes_every_victim_key_and_is_in_the_rows_label():
    preset = load_preset(str(TEST_PRESET))
    ssl = dataclasses.replace(preset, victim=dataclasses.replace(preset.victim, objective="clip+ssl"))
    heavier = dataclasses.replace(ssl, victim=dataclasses.replace(ssl.victim, ssl_weight=4.0))
    keys = [{v.key for v in plan_grid(p, ["badnet"], ["none"], [0]).victims} for p in (preset, ssl, heavier)]
    assert keys[0].isdisjoint(keys[1]) and keys[1].isdisjoint(keys[2])
    assert (preset.victim.label, ssl.victim.label, heavier.victim.label) == (
        "clip", "clip+ssl", "clip+ssl (ssl_weight 4)")


def test_the_clip_ssl_objective_is_clip_plus_weighted_in_modal_loss(monkeypatch):
    """The loss a clip+ssl victim trains with, against an independent computation on the same batch:
    CLIP's symmetric cross-entropy plus w × CleanCLIP's one-directional in-modal term."""
    import benchmark.victim_training as victim_training
    from benchmark.models import create_model, tokenizer_for

    captured = {}

    def capture(model, batches, recipe, *, loss_fn, **options):
        captured.update(batch=next(iter(batches)), loss_fn=loss_fn)

    monkeypatch.setattr(victim_training, "train", capture)
    model = create_model(MODEL, seed=0)
    recipe = VictimRecipe(batch_size=16, objective="clip+ssl", ssl_weight=2.5)
    victim_training.train_victim(model, learnable_pairs(), recipe, tokenizer_for(MODEL), 0, torch.device("cpu"))
    batch = captured["batch"]
    assert set(batch) == {"images", "augmented_images", "texts", "augmented_texts"}
    assert not torch.equal(batch["images"], batch["augmented_images"])  # AutoAugment views, not copies
    with torch.no_grad():
        got = captured["loss_fn"](model, batch)
        image = F.normalize(model.encode_image(batch["images"]), dim=-1)
        image_aug = F.normalize(model.encode_image(batch["augmented_images"]), dim=-1)
        text = F.normalize(model.encode_text(batch["texts"]), dim=-1)
        text_aug = F.normalize(model.encode_text(batch["augmented_texts"]), dim=-1)
        scale = model.logit_scale.exp()
        targets = torch.arange(len(image))
        clip = (F.cross_entropy(scale * image @ text.T, targets) + F.cross_entropy(scale * text @ image.T, targets)) / 2
        ssl = (F.cross_entropy(scale * image @ image_aug.T, targets)
               + F.cross_entropy(scale * text @ text_aug.T, targets)) / 2
    torch.testing.assert_close(got, clip + 2.5 * ssl, rtol=1e-5, atol=1e-5)


def test_a_preset_extends_another_and_overrides_only_what_it_names(tmp_path):
    child = tmp_path / "child.toml"
    child.write_text(f'extends = "{TEST_PRESET}"\nname = "child"\n[victim]\nobjective = "clip+ssl"\n'
                     '[attacks.badnet]\npatch_size = 5\n')
    base, preset = load_preset(str(TEST_PRESET)), load_preset(str(child))
    assert preset.name == "child" and preset.victim.objective == "clip+ssl"
    assert dataclasses.replace(preset.victim, objective="clip") == base.victim  # the rest of [victim] inherited
    assert preset.attacks["badnet"] == {**base.attacks["badnet"], "patch_size": 5}  # tables merge key by key
    assert preset.data == base.data and preset.text == base.text
    shipped = load_preset("fmnist-tiny-clip-ssl")
    assert shipped.victim.objective == "clip+ssl" and shipped.data == load_preset("fmnist-tiny").data


@pytest.mark.parametrize("extends, message", [
    ('"no-such-preset"', "unknown preset 'no-such-preset'"),
    ('"missing.toml"', "does not exist"),
    ('"loop.toml"', "in a circle"),
    ("3", "expected a preset name"),
])
def test_a_bad_extends_is_one_clear_error(tmp_path, extends, message):
    (tmp_path / "loop.toml").write_text('extends = "loop.toml"\nname = "loop"\n')
    child = tmp_path / "child.toml"
    child.write_text(f"extends = {extends}\nname = \"child\"\n")
    with pytest.raises(UserError, match=message):
        load_preset(str(child))


def test_victims_of_different_objectives_are_run_recorded_and_ranked_apart(tmp_path):
    """One tiny grid per objective: rows record the objective, and the leaderboard keeps the two settings apart."""
    small = ('name = "fmnist-test"\n[data]\ntrain_pairs = 128\ntest_images = 100\n'
             "[victim]\nepochs = 1\nbatch_size = 32\n")
    ssl_preset = tmp_path / "ssl.toml"
    ssl_preset.write_text(f'extends = "{TEST_PRESET}"\n{small}objective = "clip+ssl"\n')
    clip_preset = tmp_path / "clip.toml"
    clip_preset.write_text(f'extends = "{TEST_PRESET}"\n{small}')
    folders = {}
    for objective, preset in (("clip", clip_preset), ("clip+ssl", ssl_preset)):
        folders[objective] = tmp_path / objective
        grid = run_grid(["badnet"], ["none"], [0], preset=str(preset), out=folders[objective], device="cpu",
                        workers=1, no_plugin_autoload=True)
        assert grid.summary.cells_failed == 0
        rows = pd.read_csv(grid.results)
        assert set(rows["victim_objective"]) == {objective} and set(rows["schema_version"]) == {SCHEMA_VERSION}
    table = load_results([folders["clip"], folders["clip+ssl"]])
    assert sorted(table["preset"].unique()) == ["fmnist-test", "fmnist-test [clip+ssl victim]"]
    assert len(table) == 4  # same preset name, attacks and seeds: no clash, because the settings differ
