"""The pretrained setting (issue 18.3): ``[victim] init = "scratch" | "pretrained"``, the ``[pretrain]`` section,
the disjoint pretraining split, and the clean model trained once per run that every victim is finetuned from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

import benchmark.task as task_module
from attacks import ATTACKS as ATTACK_REGISTRY
from benchmark.api import run_grid
from benchmark.checkpoints import read_state_dict
from benchmark.config import config_dict
from benchmark.data.fashion_mnist import Split
from benchmark.data.source_splits import streamed_splits
from benchmark.errors import UserError
from benchmark.presets import DataSpec, PretrainSpec, SourceSpec, load_preset
from benchmark.results import COLUMNS, RESULTS_FILE, ResultsFile
from benchmark.runner import plan_grid, run_plan
from benchmark.runner.cost import grid_cost
from benchmark.runner.plan import ENGINE_VERSION, LATER_SPLIT_DEFAULTS, READ_ONLY_DATA_FIELDS, pretrained_key
from benchmark.storage import content_key
from benchmark.training_recipe import TrainRecipe, VictimRecipe
from benchmark.validate import validate
from defenses import DEFENSES as DEFENSE_REGISTRY
from leaderboard.load import load_results
from tests.helpers import TEST_PRESET
from tests.results_rows import make_row, write_results

ATTACKS, DEFENSES = ["badnet", "blended"], ["none", "finetune", "roclip", "detect-kdist"]


def _preset_file(tmp_path: Path, body: str, name: str = "fmnist-test-pretrained") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'extends = "{TEST_PRESET}"\nname = "{name}"\n{body}')
    return path


# The test preset at its smallest: 64 victim-training and 64 pretraining pairs, 50 test images.
PRETRAINED = ('[data]\ntrain_pairs = 64\ntest_images = 50\n'
              '[pretrain]\npairs = 64\nepochs = 1\nbatch_size = 32\nwarmup_steps = 2\n'
              '[victim]\ninit = "pretrained"\nbatch_size = 32\nlr = 1e-4\n')


def _old_victim_key(preset, spec) -> str:
    """A victim key as the runner computed it before victims could start pretrained (plan.py at commit ed0b8c5),
    with its data key as it was before the later splits' sizes were held at their defaults (at b7ac67c)."""
    recipe = TrainRecipe(**{f.name: getattr(preset.victim, f.name) for f in dataclasses.fields(TrainRecipe)})
    data = {key: value for key, value in config_dict(preset.data).items()
            if key not in READ_ONLY_DATA_FIELDS and not (key in ("train", "eval") and value is None)}
    if "train" in streamed_splits(preset.data):
        data["streamed"] = True
    return content_key("victim", ENGINE_VERSION, data, config_dict(preset.text),
                       config_dict(preset.model), config_dict(recipe), spec.attack, spec.attack_version,
                       spec.attack_config, spec.poison_count, spec.seed)


@pytest.mark.parametrize("name", [str(TEST_PRESET), "fmnist-tiny", "openai-rn50", "cc3m-rn50"])
def test_scratch_victims_and_victims_from_weights_keep_their_keys(name):
    """Existing caches stay valid: a scratch victim's key (and openai-rn50's, whose victims start from the model's
    weights and now say so with init = "pretrained") is computed exactly as before the axis existed, once the
    sizes of the splits after the training split are at their defaults (fmnist-tiny's are, so its keys are
    unchanged; BadNet and Blended do not read the clean pairs)."""
    preset = load_preset(name)
    plan = plan_grid(preset, ATTACKS, DEFENSES, [0, 1], resolve=False)
    at_defaults = dataclasses.replace(preset, data=dataclasses.replace(preset.data, **LATER_SPLIT_DEFAULTS))
    assert [spec.key for spec in plan.victims] == [_old_victim_key(at_defaults, spec) for spec in plan.victims]
    if name == "fmnist-tiny":
        assert at_defaults == preset
    assert VictimRecipe(init="pretrained").key_config() == VictimRecipe().key_config()
    assert preset.victim.init == ("pretrained" if name == "openai-rn50" else "scratch")


def test_a_pretrain_section_changes_no_scratch_key_and_pretrained_victims_get_their_own(tmp_path):
    base = load_preset(str(TEST_PRESET))
    unused = load_preset(str(_preset_file(tmp_path, '[pretrain]\npairs = 256\n[victim]\ninit = "scratch"\n',
                                          name="fmnist-test")))
    pretrained = load_preset(str(_preset_file(tmp_path, '[pretrain]\npairs = 256\n[victim]\ninit = "pretrained"\n',
                                              name="fmnist-test")))
    other_start = dataclasses.replace(pretrained, pretrain=dataclasses.replace(pretrained.pretrain, seed=1))

    def keys(preset):
        plan = plan_grid(preset, ATTACKS, DEFENSES, [0, 1])
        return {spec.key for spec in plan.victims} | {cell.key for cell in plan.cells}

    assert keys(unused) == keys(base)
    assert keys(pretrained).isdisjoint(keys(base)) and keys(other_start).isdisjoint(keys(pretrained))
    assert pretrained.trains_clean_model and not unused.trains_clean_model
    assert pretrained_key(pretrained) != pretrained_key(other_start)


def _fake_fashion_mnist(count: int = 2000):
    """Images that carry their own index in two pixels (28 px, so the task does not resize them)."""
    images = torch.zeros(count, 28, 28, dtype=torch.uint8)
    index = torch.arange(count)
    images[:, 0, 0], images[:, 0, 1] = (index % 256).to(torch.uint8), (index // 256).to(torch.uint8)
    return lambda data_dir=None: {"train": Split(images, index % 10),
                                  "test": Split(images[:300].clone(), index[:300] % 10)}


def _indices(images: torch.Tensor) -> set[int]:
    return set((images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist())


def test_the_pretraining_split_is_disjoint_and_no_other_split_moves_it_or_is_moved(monkeypatch):
    monkeypatch.setattr(task_module, "load_fashion_mnist", _fake_fashion_mnist())
    monkeypatch.setattr(task_module, "_TASKS", {})
    scratch = load_preset(str(TEST_PRESET))
    scratch = dataclasses.replace(scratch, data=dataclasses.replace(scratch.data, image_size=28))
    pretrained = dataclasses.replace(scratch, pretrain=PretrainSpec(pairs=600),
                                     victim=dataclasses.replace(scratch.victim, init="pretrained"))
    before, after = task_module.build_task(scratch), task_module.build_task(pretrained)
    assert before.pretrain_pairs is None and len(after.pretrain_pairs) == 600
    for name in ("train_pairs", "clean_pairs"):
        old, new = getattr(before, name), getattr(after, name)
        assert torch.equal(old.images, new.images) and old.captions == new.captions
    assert torch.equal(before.val_set.images, after.val_set.images)
    parts = [_indices(after.train_pairs.images), _indices(after.clean_pairs.images), _indices(after.val_set.images)]
    pretrain = _indices(after.pretrain_pairs.images)
    assert len(pretrain) == 600 and all(pretrain.isdisjoint(part) for part in parts)
    assert after.pretrain_pairs.labels.tolist() == [i % 10 for i in
                                                    (after.pretrain_pairs.images[:, 0, 0, 0].long()
                                                     + 256 * after.pretrain_pairs.images[:, 0, 0, 1].long()).tolist()]
    more_clean = dataclasses.replace(pretrained, data=dataclasses.replace(pretrained.data, clean_pairs=200))
    moved = task_module.build_task(more_clean)
    assert torch.equal(moved.pretrain_pairs.images, after.pretrain_pairs.images)
    assert moved.pretrain_pairs.captions == after.pretrain_pairs.captions
    assert torch.equal(moved.train_pairs.images, after.train_pairs.images)
    assert pretrained_key(more_clean) == pretrained_key(pretrained)
    too_many = dataclasses.replace(pretrained, pretrain=PretrainSpec(pairs=1200))
    with pytest.raises(UserError, match=r"^pretrain\.pairs = 1200 is out of range: .* leave 1104 for pretraining$"):
        task_module.build_task(too_many)


def test_a_run_trains_the_clean_model_once_and_every_victim_starts_from_it(tmp_path, monkeypatch):
    import benchmark.runner.execute as execute
    import benchmark.runner.stages as stages
    from defenses.roclip import RoCLIP

    starts: list[dict[str, torch.Tensor]] = []

    def record(model):
        starts.append({key: value.detach().clone() for key, value in model.state_dict().items()})

    def recording(real):
        def train_victim(model, *args, **kwargs):
            record(model)
            return real(model, *args, **kwargs)
        return train_victim

    real_roclip = RoCLIP.train

    def roclip_train(self, model, *args, **kwargs):
        record(model)
        return real_roclip(self, model, *args, **kwargs)

    monkeypatch.setattr(execute, "train_victim", recording(execute.train_victim))
    monkeypatch.setattr(stages, "train_victim", recording(stages.train_victim))
    monkeypatch.setattr(RoCLIP, "train", roclip_train)

    preset, out = load_preset(str(_preset_file(tmp_path, PRETRAINED))), tmp_path / "out"
    plan = plan_grid(preset, ["badnet"], ["none", "roclip", "detect-kdist"], [0])

    def run():
        return run_plan(plan, out, torch.device("cpu"))

    summary = run()
    assert (summary.pretrained_trained, summary.victims_trained, summary.cells_failed) == (1, 6, 0), summary.failures
    folders = list((out / "cache" / "pretrained").iterdir())
    assert len(folders) == 1 and (folders[0] / "meta.json").is_file()
    checkpoint = read_state_dict(folders[0] / "model.safetensors")
    assert len(starts) == 6  # 2 victims (benign, badnet), 2 roclip victims, 2 retrained after detection
    for start in starts:
        assert start.keys() == checkpoint.keys() and all(torch.equal(start[k], checkpoint[k]) for k in start)
    rows = pd.read_csv(out / RESULTS_FILE)
    assert set(rows["victim_init"]) == {"pretrained"} and len(rows) == 6
    assert set(load_results([out])["preset"]) == {"fmnist-test-pretrained [pretrained victim]"}

    assert grid_cost(plan, out, 1, 50).pretrained == 0  # nothing left to pretrain
    starts.clear()
    again = run()  # every row done: nothing trained
    assert (again.pretrained_trained, again.victims_trained, again.cells_skipped) == (0, 0, 6) and not starts
    (out / RESULTS_FILE).unlink()  # rows lost, victims and cells cached: the clean model is not needed either
    for path in folders[0].iterdir():
        path.unlink()
    rebuilt = run()
    assert (rebuilt.pretrained_trained, rebuilt.victims_trained, rebuilt.cells_reused) == (0, 0, 6) and not starts


@pytest.mark.slow
def test_parallel_workers_only_load_the_clean_model_the_coordinator_trained(tmp_path):
    """Two spawned workers: the coordinator trains the clean model before dispatching, the workers read it."""
    out = tmp_path / "out"
    grid = run_grid(["badnet"], ["none", "finetune"], [0], preset=str(_preset_file(tmp_path, PRETRAINED)), out=out,
                    device="cpu", workers=2, no_plugin_autoload=True)
    summary = grid.summary
    assert (summary.pretrained_trained, summary.victims_trained, summary.cells_failed) == (1, 2, 0), summary.failures
    assert len(list((out / "cache" / "pretrained").iterdir())) == 1
    assert set(pd.read_csv(grid.results)["victim_init"]) == {"pretrained"}


def test_every_builtin_attack_and_defense_runs_on_pretrained_victims(tmp_path):
    """The pretrained setting end to end through the whole registry (issue 18's "runs through every attack and
    defense"), at the smallest sizes: one clean model, every row ok and recorded as a pretrained victim."""
    out = tmp_path / "out"
    grid = run_grid("all", "all", [0], preset=str(_preset_file(tmp_path, PRETRAINED)), out=out, device="cpu",
                    workers=1, no_plugin_autoload=True)
    rows = pd.read_csv(grid.results)
    assert grid.summary.cells_failed == 0, grid.summary.failures
    assert grid.summary.pretrained_trained == 1 and len(list((out / "cache" / "pretrained").iterdir())) == 1
    assert set(rows["attack"]) == {"none", *ATTACK_REGISTRY.names()}
    assert set(rows["defense"]) == set(DEFENSE_REGISTRY.names())
    assert len(rows) == len(set(rows["attack"])) * len(set(rows["defense"]))
    assert set(rows["status"]) == {"ok"} and set(rows["victim_init"]) == {"pretrained"}


def test_validate_and_the_estimate_show_the_pretraining_once_per_run(tmp_path, monkeypatch):
    import benchmark.runner.cost as cost

    monkeypatch.setattr(cost, "measure_speed", lambda *args, **kwargs: 100.0)
    preset = load_preset(str(_preset_file(tmp_path, PRETRAINED)))
    report = validate(preset, "badnet", "none,roclip", [0, 1], workers=1)
    assert report.ok, report.problems
    assert "model: cleanbench-vit-tiny (pretrained here on 64 disjoint clean pairs, then finetuned on the poisoned " \
           "pairs)" in report.lines
    assert "pretraining: 64 clean pairs / batch 32 × 1 epochs = 2 steps, once per run before any victim (one " \
           "clean model shared by every victim; skipped when the cache holds it)" in report.lines
    assert any(line.startswith("data: fashion-mnist: 64 victim-training pairs, 256 clean, 64 pretraining,")
               for line in report.lines)
    assert "estimated optimizer steps: 18 (pretraining 2, victims 8, defenses 8)" in report.lines
    assert report.lines[-1].startswith("estimate: 1 clean model to pretrain first (once per run, shared by its "
                                       "victims), 8 victims to train")
    plan = plan_grid(preset, ["badnet"], ["none"], [0, 1])
    estimate = grid_cost(plan, None, 2, 50)  # the pretraining runs alone, before the victims share the workers
    assert (estimate.pretrained, estimate.pretrain_passes) == (1, 64)
    assert estimate.passes == pytest.approx(4 * 64 + 4 * 2 * 50 / 3)  # 4 victims, 4 cells evaluated
    assert estimate.seconds == pytest.approx(64 / 100 + estimate.passes / 100 / 2)
    scratch = plan_grid(load_preset(str(TEST_PRESET)), ["badnet"], ["none"], [0])
    assert grid_cost(scratch, None, 1, 50).pretrained == 0


@pytest.mark.parametrize("body, message", [
    ("[pretrain]\npairs = -1\n", r"^pretrain: pairs = -1 is out of range; allowed: \[0, inf\]$"),
    ("[pretrain]\nepochs = 0\n", r"^pretrain: epochs = 0 is out of range; allowed: \[1, 10000\]$"),
    ("[pretrain]\npair = 10\n", r"^Unknown key 'pretrain\.pair'\. Did you mean: pairs\?"),
    ('[pretrain]\npairs = "many"\n', r"^pretrain\.pairs must be an integer, got 'many'$"),
    ('[victim]\ninit = "pretrain"\n', r"^victim: victim\.init = 'pretrain' is not one of scratch, pretrained$"),
    ('[victim]\ninit = "pretrained"\n', r"^victim\.init = \"pretrained\" needs a model to start from: set "
                                        r"pretrain\.pairs .* or model\.pretrained \(weights\)$"),
    ('[model]\npretrained = "w.safetensors"\n', r"^model\.pretrained = 'w\.safetensors' starts the victim from "
                                                r"weights: set victim\.init = \"pretrained\""),
    ('[model]\npretrained = "w.safetensors"\n[pretrain]\npairs = 10\n[victim]\ninit = "pretrained"\n',
     r"from model\.pretrained = 'w\.safetensors' or from a clean model trained on pretrain\.pairs = 10 pairs, "
     r"not both"),
])
def test_a_bad_start_is_one_clear_line_naming_the_key(tmp_path, body, message):
    with pytest.raises(UserError, match=message) as caught:
        load_preset(str(_preset_file(tmp_path, body)))
    assert "\n" not in str(caught.value)


def test_presets_with_data_sources_start_pretrained_victims_from_the_models_weights():
    preset = load_preset(str(TEST_PRESET))
    sources = DataSpec(train=SourceSpec("csv", "pairs.csv"), eval=SourceSpec("imagefolder", "eval"))
    with pytest.raises(UserError, match=r"with data sources starts from the model's own weights: set "
                                        r"model\.pretrained .*; pretrain\.pairs = 10 needs the built-in dataset$"):
        dataclasses.replace(preset, data=sources, pretrain=PretrainSpec(pairs=10),
                            victim=dataclasses.replace(preset.victim, init="pretrained"))
    openai = load_preset("openai-rn50")
    assert openai.victim.init == "pretrained" and openai.model.pretrained == "openai"
    assert not openai.trains_clean_model and task_module.pretrain_pair_count(openai) == 0


def test_the_shipped_pretrained_preset_is_fmnist_tiny_with_a_clean_model_and_a_finetune():
    tiny, preset = load_preset("fmnist-tiny"), load_preset("fmnist-tiny-pretrained")
    assert preset.trains_clean_model and preset.pretrain.pairs == 20_000
    assert preset.data == tiny.data and preset.text == tiny.text and preset.attacks == tiny.attacks
    assert preset.victim.lr < preset.pretrain.lr  # a finetune of the clean model
    # 20k + 5k + 2k of the other splits and 20k for pretraining fit Fashion-MNIST's 60k training images
    assert tiny.data.train_pairs + tiny.data.clean_pairs + tiny.data.val_pairs + preset.pretrain.pairs <= 60_000


def test_the_leaderboard_keeps_pretrained_victims_apart_and_older_files_read_as_scratch(tmp_path):
    rows = [make_row(attack, "none", 0, 0.8, None if attack == "none" else 0.9, preset="p", victim_objective=objective,
                     victim_init=init, cell_id=f"{attack}-{objective}-{init}")
            for attack in ("none", "badnet") for objective in ("clip", "clip+ssl")
            for init in ("scratch", "pretrained")]
    names = set(load_results([write_results(tmp_path / "new" / RESULTS_FILE, rows)])["preset"])
    assert names == {"p", "p [clip+ssl victim]", "p [pretrained victim]", "p [pretrained clip+ssl victim]"}
    # A version-5 file written before the column existed (it came late in version 5): read as scratch.
    before = [column for column in COLUMNS if column != "victim_init"]
    path = write_results(tmp_path / "old" / RESULTS_FILE, [make_row("none", "none", 0, 0.8, schema_version=5)],
                         columns=before)
    assert set(load_results([path])["victim_init"]) == {"scratch"}
    assert next(iter(ResultsFile(path).rows.values()))["victim_init"] == "scratch"
