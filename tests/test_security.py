"""Untrusted input: checkpoints that would run code, markup in results files, names with path syntax, plugins.

Each test plants something hostile and checks the one thing that matters: the code never ran (a marker file
never appears), the markup never became markup, nothing was written outside the output folder.
"""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from markupsafe import escape

from attacks import ATTACKS
from benchmark import plugins
from benchmark.checkpoints import load_weights, save_state_dict
from benchmark.errors import UserError
from benchmark.models import create_model
from benchmark.presets import load_preset
from benchmark.runner.store import ArtifactStore, CacheLayout, cell_folder_key, cell_predictions_member
from defenses import DEFENSES
from leaderboard.build import write_leaderboard
from leaderboard.html import environment
from tests.helpers import TEST_PRESET, RunsCode
from tests.results_rows import make_row, write_results

MODEL = "cleanbench-vit-tiny"
NAME_RULE = "use 1-64 lowercase letters, digits and - _ . + starting with a letter or digit (no '..')"


def hostile_checkpoint(folder: Path, form: str) -> tuple[Path, Path]:
    """A weights file that would run code when unpickled, and the marker it would create."""
    marker = folder / "code-ran"
    if form == "torch-zip":  # what torch.save writes: a zip archive holding data.pkl
        path = folder / "evil.pt"
        torch.save({"visual.proj": torch.zeros(2), "payload": RunsCode(marker)}, path)
    else:  # a bare pickle stream, as older checkpoints are
        path = folder / "evil.bin"
        path.write_bytes(pickle.dumps({"payload": RunsCode(marker)}))
    return path, marker


@pytest.mark.parametrize("form", ["torch-zip", "bare-pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(form, tmp_path):
    path, marker = hostile_checkpoint(tmp_path, form)
    with pytest.raises(UserError, match=rf"^refused to load {re.escape(str(path))}: it holds objects other than "
                                        r"tensors .* convert it to safetensors$"):
        load_weights(create_model(MODEL), path)
    assert not marker.exists()


def test_run_refuses_a_hostile_pretrained_file_before_writing_anything(cli, tmp_path):
    path, marker = hostile_checkpoint(tmp_path, "torch-zip")
    preset = tmp_path / "preset.toml"
    preset.write_text(TEST_PRESET.read_text().replace(f'name = "{MODEL}"', f'name = "{MODEL}"\npretrained = "{path}"')
                      .replace("[victim]\n", '[victim]\ninit = "pretrained"\n'))  # victims start from the weights
    out = tmp_path / "out"
    code, _, err = cli("run", "--preset", preset, "--attacks", "badnet", "--defenses", "none", "--out", out,
                       "--no-plugin-autoload")
    assert code == 2
    assert err.startswith(f"error: refused to load {path}: ") and err.endswith("convert it to safetensors\n")
    assert not marker.exists() and not out.exists()


def test_plain_weights_still_load(tmp_path):
    """The refusal is about code, not about checkpoints: safetensors and a plain tensor state dict load."""
    source = create_model(MODEL, seed=1)
    save_state_dict(source, tmp_path / "weights.safetensors")
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    for name in ("weights.safetensors", "weights.pt"):
        target = create_model(MODEL, seed=2)
        load_weights(target, tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


PAYLOADS = ['<script>alert(1)</script>', '"><img src=x onerror=alert(2)>', "'><svg onload=alert(3)>"]
TEXT_FIELDS = ("reason", "model", "target", "device", "git_commit", "cleanbench_version", "victim_key")


def _rows(attack: str, defense: str, preset: str, text: str) -> list[dict]:
    config = json.dumps({"pattern": text})
    extra = {field: text for field in TEXT_FIELDS if field != "reason"}
    rows = [make_row(a, d, seed, 0.8, None if a == "none" else 0.9, preset=preset, attack_config=config,
                     defense_config=config, **extra)
            for a in ("none", "badnet", attack) for d in ("none", defense) for seed in (0, 1)]
    return rows + [make_row(attack, "finetune", 0, None, status="failed", preset=preset, reason=text, **extra)]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_markup_from_results_files_is_shown_as_text(tmp_path, payload):
    """Configs, reasons and provenance from a results CSV are escaped: the page has exactly the tags a page of
    harmless text has. Attack, defense and preset names with markup are refused outright (names are identifiers:
    benchmark.names), in one line."""
    for column in range(3):
        names = ["attack-x", "defense-x", "preset-x"]
        names[column] = payload
        path = write_results(tmp_path / f"name{column}" / "results.csv", _rows(*names, "text-x"))
        with pytest.raises(UserError, match=r"is not a name: use 1-64 lowercase letters") as refused:
            write_leaderboard([path], quiet=True)
        assert "\n" not in str(refused.value) and not (path.parent / "index.html").exists()
    hostile = write_leaderboard([write_results(tmp_path / "hostile" / "results.csv",
                                               _rows("attack-x", "defense-x", "preset-x", payload))],
                                quiet=True).read_text()
    plain = write_leaderboard([write_results(tmp_path / "plain" / "results.csv",
                                             _rows("attack-x", "defense-x", "preset-x", "text-x"))], quiet=True).read_text()
    for markup in ("<script", "<img", "<svg", '"><', "'><"):  # no new element, no attribute broken out of
        assert hostile.count(markup) == plain.count(markup), markup
    assert str(escape(payload)) in hostile  # shown, as text


def test_the_page_template_escapes_everything():
    env = environment()
    template = Path(env.loader.get_source(env, "index.html.j2")[1]).read_text()
    assert env.autoescape is True
    assert "|safe" not in template.replace(" ", "") and "autoescape false" not in template


PLUGIN = """
from dataclasses import dataclass

from attacks import ATTACKS
from attacks.base import Attack


@dataclass(frozen=True)
class Config:
    pass


@ATTACKS.register()
class PluginAttack(Attack):
    '''{docstring}'''

    name = {name!r}
    Config = Config

    def apply(self, images, generator):
        return images
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "a/../../evil"])
def test_a_plugin_named_like_a_path_is_refused_and_nothing_is_written(cli, tmp_path, name):
    plugin = tmp_path / "escape.py"
    plugin.write_text(PLUGIN.format(name=name, docstring="An attack whose name tries to climb out of the folder."))
    out = tmp_path / "runs" / "out"
    before = snapshot(tmp_path)
    code, _, err = cli("run", "--preset", TEST_PRESET, "--plugin", plugin, "--attacks", name, "--defenses", "none",
                       "--out", out, "--no-plugin-autoload")
    assert code == 2
    assert err == f"error: attack name {name!r} from file '{plugin.resolve()}' is not allowed: {NAME_RULE}\n"
    assert name not in ATTACKS and snapshot(tmp_path) == before and not Path("/tmp/evil").exists()


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "/abs", "a\\b", "", " x", "x\n", "x" * 65, "über"])
def test_registries_refuse_names_with_path_syntax(name):
    with pytest.raises(UserError, match="is not allowed"):
        DEFENSES.add(name, "defenses.none:NoDefense", source="test")
    assert name not in DEFENSES


def test_ordinary_names_are_accepted():
    for name in ("my-defense", "ssl_only", "v1.2", "a+b"):
        DEFENSES.add(name, "defenses.none:NoDefense", source="test")
        DEFENSES.unregister(name)


def test_a_preset_named_like_a_path_is_refused(tmp_path):
    preset = tmp_path / "escape.toml"
    preset.write_text(TEST_PRESET.read_text().replace('name = "fmnist-test"', 'name = "../../evil"'))
    with pytest.raises(UserError) as error:
        load_preset(str(preset))
    assert str(error.value) == f"preset name '../../evil' from {preset} is not allowed: {NAME_RULE}"


def test_cache_folders_are_only_ever_content_hashes(tmp_path):
    store = ArtifactStore(tmp_path / "cache")
    assert store.cell_dir("0123456789abcdef") == tmp_path / "cache" / "cells" / "0123456789abcdef"
    for key in ("../../evil", "/tmp/evil", "0123456789abcdef/..", "0123456789ABCDEF"):
        with pytest.raises(ValueError, match="is not a cache key"):
            store.victim_dir(key)
        with pytest.raises(ValueError, match="is not a cache key"):
            store.save_cell_error(key, "never written")
    assert not (tmp_path / "cache").exists()


def test_a_results_row_names_its_cache_folder_only_by_a_content_key(tmp_path):
    key, row_id = "0123456789abcdef", "fedcba9876543210"
    assert cell_folder_key({"cell_id": row_id, "cache_key": key}) == key  # a sweep row: the shared cell's folder
    assert cell_folder_key({"cell_id": row_id, "cache_key": ""}) == row_id  # a row from before the column
    for hostile in ("../../evil", "/tmp/evil", "0123456789ABCDEF", None):
        assert cell_folder_key({"cell_id": hostile, "cache_key": hostile}) is None
        assert CacheLayout.of_run(tmp_path).row_predictions_path({"cell_id": hostile, "cache_key": ""}) is None
    assert cell_predictions_member(key) == f"cache/cells/{key}/predictions.npz"
    with pytest.raises(ValueError, match="is not a cache key"):
        cell_predictions_member("../../evil")


ENTRY_POINT_MODULE = """
from pathlib import Path

Path({marker!r}).touch()  # importing this plugin is the code a user did not ask to run

from dataclasses import dataclass

from defenses.base import Defense


@dataclass(frozen=True)
class Config:
    pass


class Autoloaded(Defense):
    name = "autoloaded"
    Config = Config

    def apply(self, model, clean_data, context):
        return model
"""


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """An installed distribution (dist-info on sys.path) advertising two defenses: a good one whose import leaves a
    marker, and one whose entry-point name is a path."""
    marker = tmp_path / "plugin-imported"
    (tmp_path / "autoloaded_plugin.py").write_text(ENTRY_POINT_MODULE.format(marker=str(marker)))
    dist = tmp_path / "autoloaded_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: autoloaded-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cleanbench.defenses]\nautoloaded = autoloaded_plugin:Autoloaded\n"
                                           "../evil = autoloaded_plugin:Autoloaded\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(plugins.AUTOLOAD_ENV, raising=False)
    monkeypatch.setattr(plugins, "_autoloaded", False)
    yield marker
    DEFENSES.unregister("autoloaded")
    sys.modules.pop("autoloaded_plugin", None)


def test_plugin_autoload_is_off_with_the_flag(cli, installed_plugin):
    code, out, _ = cli("list", "defenses", "--no-plugin-autoload")
    assert code == 0 and "autoloaded" not in out and not installed_plugin.exists()


def test_plugin_autoload_is_off_with_the_environment_variable(cli, installed_plugin, monkeypatch):
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    code, out, _ = cli("list", "defenses")
    assert code == 0 and "autoloaded" not in out and not installed_plugin.exists()


def test_plugin_autoload_is_on_by_default_and_skips_a_name_with_path_syntax(cli, installed_plugin):
    code, out, err = cli("list", "defenses")
    assert code == 0 and "autoloaded" in out and installed_plugin.exists()
    assert "../evil" not in DEFENSES
    assert f"warning: plugin '../evil' from package 'autoloaded-plugin' failed to load and was skipped: UserError: " \
           f"defense name '../evil' from package 'autoloaded-plugin' is not allowed: {NAME_RULE}" in err


def test_cleanbench_list_shows_plugin_docstrings_as_text_not_rich_markup(cli, tmp_path):
    plugin = tmp_path / "markup.py"
    plugin.write_text(PLUGIN.format(
        name="markup-docstring", docstring="[/bold] closes a tag it never opened [link=file:///etc/passwd]x[/link]"))
    try:
        code, out, _ = cli("list", "attacks", "--plugin", plugin, "--no-plugin-autoload")
    finally:
        ATTACKS.unregister("markup-docstring")
    assert code == 0
    assert "[/bold]" in out and "[link=file:///etc/passwd]" in out.replace("\n", "")
