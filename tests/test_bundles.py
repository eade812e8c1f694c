"""Submitting and verifying results: ``run`` → ``submit`` → ``verify`` → ``leaderboard`` on the test preset with a
plugin-file defense, and every way a bundle is refused (a changed metric, a changed source file, a missing file,
a hostile archive, size limits) before anything runs."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import stat
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from benchmark import bundle as bundle_format
from benchmark import verify
from benchmark.api import run_grid
from benchmark.bundle import MANIFEST, Bundle, BundleError, extract_bundle, record_path
from benchmark.errors import UserError
from benchmark.provenance import source_hash
from benchmark.results import ResultsFile
from benchmark.verify import choose_cells
from defenses import DEFENSES
from tests.helpers import TEST_PRESET

PLUGIN = '''"""A test plugin: adds seeded noise to every weight (it defends nothing; it is cheap and deterministic)."""
from dataclasses import dataclass

import torch

from defenses import DEFENSES
from defenses.base import Defense


@dataclass(frozen=True)
class JitterConfig:
    scale: float = 0.01


@DEFENSES.register()
class Jitter(Defense):
    """Adds seeded noise to every weight."""

    name = "jitter"
    version = "1"
    Config = JitterConfig
    uses_recipe = False

    def apply(self, model, clean_data, context):
        generator = torch.Generator().manual_seed(context.seed)
        with torch.no_grad():
            for parameter in model.parameters():
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.device)
                parameter.add_(noise * self.config.scale)
        return model
'''


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    """A finished grid (badnet × jitter, seed 0, with its references) and its bundle."""
    root = tmp_path_factory.mktemp("submit")
    plugin = root / "jitter.py"
    plugin.write_text(PLUGIN)
    DEFENSES.unregister("jitter")
    try:
        grid = run_grid(["badnet"], ["jitter"], [0], preset=str(TEST_PRESET), out=root / "run", device="cpu",
                        workers=1, plugins=[str(plugin)], no_plugin_autoload=True)
        assert grid.summary.cells_failed == 0
        from benchmark.submit import submit

        submit(root / "run", "jitter", root / "jitter.zip", preset=str(TEST_PRESET))
    finally:
        DEFENSES.unregister("jitter")
    return root


def _copy(submitted: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle.zip"
    target.write_bytes((submitted / "jitter.zip").read_bytes())
    return target


def _rewrite(path: Path, change, *, manifest: bool = True) -> None:
    """Rewrite the bundle at ``path``: ``change(files)`` edits the dict of its files; with ``manifest`` the
    manifest is made to match again (a consistent forgery), else it is kept as it was."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    old_manifest = files.pop(MANIFEST)
    change(files)
    if manifest:
        listing = {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                   for name, data in files.items()}
        files[MANIFEST] = json.dumps({"format": 1, "files": listing}).encode()
    else:
        files[MANIFEST] = old_manifest
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def _set_metric(files: dict, attack: str, defense: str, column: str, value: str) -> None:
    rows = list(csv.DictReader(io.StringIO(files["results.csv"].decode())))
    for row in rows:
        if (row["attack"], row["defense"]) == (attack, defense):
            row[column] = value
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files["results.csv"] = buffer.getvalue().encode()


@pytest.mark.slow
def test_run_submit_verify_leaderboard_shows_the_entry_verified(submitted, cli, tmp_path):
    bundle = _copy(submitted, tmp_path)
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read(MANIFEST))
        meta = json.loads(archive.read("bundle.json"))
    assert set(manifest["files"]) == names - {MANIFEST}
    assert {"results.csv", "preset.toml", "source/defense/jitter/jitter.py", "source/attack/badnet/badnet.py",
            "environment/pip-freeze.txt", "environment/hardware.json"} <= names
    assert sum(name.endswith("predictions.npz") for name in names) == 4  # jitter and none, benign and badnet
    assert (meta["defense"], meta["attacks"], meta["seeds"]) == ("jitter", ["badnet", "none"], [0])
    rows = ResultsFile(submitted / "run" / "results.csv").rows.values()
    jitter = [row for row in rows if row["defense"] == "jitter"]
    assert {row["defense_source_sha256"] for row in jitter} == {source_hash(submitted, ["jitter.py"])}
    assert {(row["defense_package"], row["attack_package"]) for row in jitter} == {("", "cleanbench"), ("", "")}

    DEFENSES.unregister("jitter")  # verify loads the bundle's own copy of the plugin
    code, out, err = cli("verify", bundle, "--device", "cpu")
    assert code == 0, out + err
    assert "verified: badnet × jitter seed 0 (bitwise" in out and "NOT" not in out
    assert json.loads(record_path(bundle).read_text())["verified"] is True

    code, out, err = cli("leaderboard", bundle, "--out", tmp_path / "board")
    assert code == 0, err
    board = pd.read_csv(tmp_path / "board" / "leaderboard.csv")
    assert set(board.loc[board["defense"] == "jitter", "evidence"]) == {"verified"}
    page = (tmp_path / "board" / "index.html").read_text()
    assert "bundle.zip:results.csv" in page and ">verified<" in page

    unverified = tmp_path / "other" / "bundle.zip"  # the same bundle without its verification record
    unverified.parent.mkdir()
    unverified.write_bytes(bundle.read_bytes())
    code, _, err = cli("leaderboard", unverified, "--out", tmp_path / "board2")
    assert code == 0, err
    assert set(pd.read_csv(tmp_path / "board2" / "leaderboard.csv")["evidence"]) == {"self-reported"}


@pytest.mark.slow
def test_verify_refuses_a_changed_metric(submitted, cli, tmp_path):
    bundle = _copy(submitted, tmp_path)
    _rewrite(bundle, lambda files: _set_metric(files, "none", "jitter", "ca", "0.9"))
    DEFENSES.unregister("jitter")
    code, out, _ = cli("verify", bundle, "--device", "cpu", "--cells", "none:0")  # the benign control: one victim
    assert code == 1
    assert "NOT verified: none × jitter seed 0 (ca is 0.9 in the bundle" in out
    assert "verified: none × none seed 0" in out and f"{bundle}: NOT verified" in out
    assert json.loads(record_path(bundle).read_text())["verified"] is False


def test_verify_refuses_a_changed_source_file(submitted, cli, tmp_path):
    bundle = _copy(submitted, tmp_path)
    source = "source/defense/jitter/jitter.py"

    def evil(files: dict) -> None:
        files[source] += b"\nopen('ran', 'w').close()\n"

    _rewrite(bundle, evil, manifest=False)
    code, _, err = cli("verify", bundle)
    assert code == 2 and f"{source} does not match its hash in the manifest" in err and "rerunning" not in err
    _rewrite(bundle, lambda files: None)  # the manifest redone to match: the rows' source hash still does not
    code, _, err = cli("verify", bundle)
    assert code == 2 and "the source of defense 'jitter' in the bundle does not match the hash recorded" in err
    assert "rerunning" not in err and not Path("ran").exists() and not record_path(bundle).exists()


def test_verify_refuses_a_missing_file(submitted, cli, tmp_path):
    bundle = _copy(submitted, tmp_path)
    _rewrite(bundle, lambda files: files.pop("preset.toml"), manifest=False)
    code, _, err = cli("verify", bundle)
    assert code == 2 and "preset.toml is listed in the manifest but missing from the bundle: refused" in err


def test_verify_refuses_an_unlisted_file(submitted, cli, tmp_path):
    bundle = _copy(submitted, tmp_path)
    _rewrite(bundle, lambda files: files.update({"extra.py": b"print('hi')"}), manifest=False)
    code, _, err = cli("verify", bundle)
    assert code == 2 and "extra.py is not listed in the manifest" in err


@pytest.mark.parametrize("name", ["../escaped.py", "/tmp/cleanbench-absolute.py", "source/../../escaped.py",
                                  "source\\..\\escaped.py", "./results.csv"])
def test_verify_refuses_a_path_that_could_escape(cli, tmp_path, name):
    hostile = tmp_path / "deep" / "hostile.zip"
    hostile.parent.mkdir()
    with zipfile.ZipFile(hostile, "w") as archive:
        archive.writestr(name, b"open('pwned', 'w').close()\n")
        archive.writestr(MANIFEST, json.dumps({"format": 1, "files": {}}))
    code, _, err = cli("verify", hostile)
    assert code == 2 and "unsafe path" in err and "refused" in err
    assert not (tmp_path / "escaped.py").exists() and not Path("/tmp/cleanbench-absolute.py").exists()


def test_a_link_in_a_bundle_is_refused(tmp_path):
    hostile = tmp_path / "link.zip"
    info = zipfile.ZipInfo("results.csv")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(hostile, "w") as archive:
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(BundleError, match="not a plain file"):
        extract_bundle(hostile, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_size_limits_are_checked_before_extracting(submitted, tmp_path, monkeypatch):
    bundle = _copy(submitted, tmp_path)
    monkeypatch.setattr(bundle_format, "MAX_FILES", 3)
    with pytest.raises(BundleError, match="more than the limit of 3"):
        extract_bundle(bundle, tmp_path / "a")
    monkeypatch.setattr(bundle_format, "MAX_FILES", 2_000)
    monkeypatch.setattr(bundle_format, "MAX_TOTAL_BYTES", 1_000)
    with pytest.raises(BundleError, match="bytes uncompressed, more than the limit of 1000"):
        extract_bundle(bundle, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_file_that_is_not_a_zip_is_not_a_bundle(cli, tmp_path):
    (tmp_path / "results.zip").write_text("schema_version,cell_id\n")
    code, _, err = cli("verify", tmp_path / "results.zip")
    assert code == 2 and "not a cleanbench bundle (not a zip file)" in err


def test_submit_names_the_defenses_a_run_holds(submitted, cli, tmp_path):
    code, _, err = cli("submit", submitted / "run", "--defense", "cleanclip", "-o", tmp_path / "x.zip",
                       "--preset", TEST_PRESET, "--no-plugin-autoload")
    assert code == 2 and "no rows of defense 'cleanclip'" in err and "jitter" in err
    assert not (tmp_path / "x.zip").exists()


def test_default_cells_are_one_per_attack():
    rows = [{"attack": attack, "defense": "d", "seed": str(seed), "status": status}
            for attack, seed, status in [("none", 0, "ok"), ("badnet", 1, "ok"), ("badnet", 0, "failed"),
                                         ("badnet", 2, "ok"), ("wanet", 0, "ok")]]
    assert choose_cells(rows, "d", None) == [("badnet", 1), ("wanet", 0)]
    assert choose_cells(rows, "d", "none:0,badnet:2") == [("none", 0), ("badnet", 2)]
    assert len(choose_cells(rows, "d", "all")) == 4
    with pytest.raises(Exception, match="choose from: .*badnet:1"):
        choose_cells(rows, "d", "badnet:0")


def _fake_bundle(tmp_path: Path, components: list[dict]) -> Bundle:
    return Bundle(tmp_path / "b.zip", tmp_path / "b", {"defense": "x", "components": components}, "0" * 64)


def test_verify_loads_a_package_plugin_from_the_bundle_not_from_what_is_installed(tmp_path):
    package = tmp_path / "b" / "source" / "defense" / "bundled-pkg" / "bundled_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    code = PLUGIN.replace('"jitter"', '"bundled-pkg"').replace("class Jitter(", "class Pkg(")
    (package / "defense.py").write_text(code)
    files = ["bundled_pkg/__init__.py", "bundled_pkg/defense.py"]
    bundle = _fake_bundle(tmp_path, [{"kind": "defense", "name": "bundled-pkg", "origin": "package", "files": files,
                                      "module": "bundled_pkg.defense", "class": "Pkg",
                                      "sha256": source_hash(package.parent, files)}])
    try:
        verify._load_sources(bundle)
        assert Path(sys.modules[DEFENSES.get("bundled-pkg").__module__].__file__).parent == package
    finally:
        verify._forget_sources(bundle)
        DEFENSES.unregister("bundled-pkg")
        for name in [name for name in sys.modules if name.startswith("bundled_pkg")]:
            del sys.modules[name]
    assert str(package.parent) not in sys.path


def test_a_bundle_may_not_replace_a_builtin_nor_differ_from_it(tmp_path):
    own_none = {"kind": "defense", "name": "none", "origin": "file", "files": ["none.py"], "sha256": "0" * 64}
    with pytest.raises(BundleError, match="brings its own code for the built-in defense 'none'"):
        verify._load_sources(_fake_bundle(tmp_path, [own_none]))
    assert DEFENSES.source("none") == "built-in"
    other = {"kind": "defense", "name": "finetune", "origin": "built-in", "files": ["finetune.py"], "sha256": "0" * 64}
    with pytest.raises(UserError, match="built-in defense 'finetune' here is not the code the bundle was made with"):
        verify._load_sources(_fake_bundle(tmp_path, [other]))
    shadow = {"kind": "defense", "name": "shadow", "origin": "package", "files": ["benchmark/__init__.py"],
              "module": "benchmark.runner", "class": "X", "sha256": "0" * 64}
    with pytest.raises(BundleError, match="would replace the module 'benchmark'"):
        verify._load_sources(_fake_bundle(tmp_path, [shadow]))
    assert "benchmark.bundle" in sys.modules  # nothing was purged


def test_cells_compare_bitwise_on_the_same_cpu_at_the_same_thread_count_else_within_the_tolerance(tmp_path):
    from benchmark.verify import compare_cell

    row = {"attack": "badnet", "defense": "d", "seed": "0", "cell_id": "a" * 16, "status": "ok", "reason": "",
           "device": "cpu", "torch_threads": "1", "cpu": "AMD EPYC (AVX2)", "ca": "0.5", "ca_low": "0.4", "ca_high": "0.6", "ca_top5": "0.9",
           "n_clean": "300", "asr": "0.8", "asr_low": "0.7", "asr_high": "0.9", "n_triggered": "270"}
    rerun = {**row, "ca": "0.51"}
    check = compare_cell(row, rerun, tmp_path, tmp_path, 0.02)
    assert not check.verified
    assert "ca is 0.5 in the bundle, 0.51 on the rerun (bitwise on cpu, 1 threads)" in check.detail
    check = compare_cell(row, {**rerun, "torch_threads": "4"}, tmp_path, tmp_path, 0.02)
    assert check.verified and check.detail.startswith("within 0.02")
    check = compare_cell(row, {**rerun, "cpu": "Intel Xeon (AVX512)"}, tmp_path, tmp_path, 0.02)  # other kernels
    assert check.verified and "cpu (1 threads, Intel Xeon (AVX512)) on the rerun" in check.detail
    check = compare_cell({**row, "cpu": ""}, {**rerun, "cpu": ""}, tmp_path, tmp_path, 0.02)  # an older bundle
    assert check.verified and "cpu (1 threads, CPU not recorded) in the bundle" in check.detail
    check = compare_cell({**row, "device": "cuda:0"}, {**rerun, "asr": "0.7"}, tmp_path, tmp_path, 0.02)
    assert not check.verified
    assert "asr is 0.8000 in the bundle, 0.7000 on the rerun: more than 0.02 apart" in check.detail
    other_id = {**row, "cell_id": "b" * 16}
    assert not compare_cell(row, other_id, tmp_path, tmp_path, 0.02).verified  # another config
    assert compare_cell(row, other_id, tmp_path, tmp_path, 0.02, same_keys=False).verified  # another --data-dir


def _set_column(files: dict, name: str, column: str, value: str) -> None:
    """Set ``column`` of every row of the CSV member ``name`` to ``value``."""
    rows = list(csv.DictReader(io.StringIO(files[name].decode())))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{**row, column: value} for row in rows])
    files[name] = buffer.getvalue().encode()


@pytest.fixture
def nothing_trains(monkeypatch):
    """Make any rerun fail the test: verify must refuse before it trains anything."""
    import benchmark.api

    def train(*args, **kwargs):
        raise AssertionError("verify reran cells of a bundle it should have refused")

    monkeypatch.setattr(benchmark.api, "run_grid", train)


def _relabel(files: dict) -> None:
    """What issue 43 tried: test-preset rows passed off as cc3m-rn50 results from another commit."""
    commit = "0123456789abcdef" * 2 + "01234567"
    for column, value in [("preset", "cc3m-rn50"), ("model", "RN50"), ("git_commit", commit)]:
        _set_column(files, "results.csv", column, value)
    meta = json.loads(files["bundle.json"])
    files["bundle.json"] = json.dumps({**meta, "preset": "cc3m-rn50", "git_commit": commit}).encode()


def test_verify_finds_relabelled_rows_not_verified_before_rerunning(submitted, cli, tmp_path, nothing_trains):
    bundle = _copy(submitted, tmp_path)
    _rewrite(bundle, _relabel)  # the manifest redone: a consistent forgery
    DEFENSES.unregister("jitter")
    code, out, err = cli("verify", bundle, "--device", "cpu")
    assert code == 1 and "rerunning" not in err
    lines = out.splitlines()
    assert len(lines) == 5 and all(line.startswith("NOT verified") for line in lines[:4])
    assert ("NOT verified: badnet × jitter seed 0 (the row claims preset 'cc3m-rn50'; the bundled preset and sources "
            "plan 'fmnist-test'; nothing was rerun)") in lines
    assert lines[4] == (f"{bundle}: NOT verified (4 rows claim what the bundled preset and sources do not plan; "
                        "nothing was rerun)")
    record = json.loads(record_path(bundle).read_text())
    assert record["verified"] is False and record["rerun"] is False
    assert {"preset", "model", "defense_recipe", "attack_version", "defense_source_sha256", "bundle.json preset"} <= \
        set(record["fields_checked"]["against_the_bundled_preset_and_sources"])
    checked = record["fields_checked"]
    assert checked["against_the_rerun"] == [] and "git_commit" in checked["not_checked"]

    (tmp_path / "model").mkdir()
    bundle = _copy(submitted, tmp_path / "model")  # the model alone relabelled
    _rewrite(bundle, lambda files: _set_column(files, "results.csv", "model", "RN50"))
    code, out, _ = cli("verify", bundle, "--device", "cpu")
    assert code == 1 and "the row claims model 'RN50'; the bundled preset and sources plan 'cleanbench-vit-tiny'" in out


def test_verify_finds_a_preset_renamed_as_a_builtin_not_verified(submitted, cli, tmp_path, nothing_trains):
    """The preset's name is not part of the cell ids: a test-sized preset renamed fmnist-tiny plans the same cells,
    but it is not the built-in fmnist-tiny."""
    bundle = _copy(submitted, tmp_path)

    def rename(files: dict) -> None:
        files["preset.toml"] = files["preset.toml"].replace(b'name = "fmnist-test"', b'name = "fmnist-tiny"')
        _set_column(files, "results.csv", "preset", "fmnist-tiny")
        files["bundle.json"] = json.dumps({**json.loads(files["bundle.json"]), "preset": "fmnist-tiny"}).encode()

    _rewrite(bundle, rename)
    DEFENSES.unregister("jitter")
    code, out, err = cli("verify", bundle, "--device", "cpu")
    assert code == 1 and "rerunning" not in err
    assert "the bundled preset is named 'fmnist-tiny' but its settings are not those of the built-in preset" in out


def test_a_manifest_entry_listed_twice_refuses_the_bundle(submitted, cli, tmp_path, nothing_trains):
    bundle = _copy(submitted, tmp_path)
    with zipfile.ZipFile(bundle) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    listing = json.loads(files[MANIFEST])["files"]
    entries = [f'"{name}": {json.dumps(entry)}' for name, entry in listing.items()]
    entries.insert(0, f'"results.csv": {json.dumps({"bytes": 1, "sha256": "0" * 64})}')  # json keeps the last
    files[MANIFEST] = ('{"format": 1, "files": {' + ", ".join(entries) + "}}").encode()
    with zipfile.ZipFile(bundle, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    code, _, err = cli("verify", bundle, "--device", "cpu")
    assert code == 2 and err.strip().splitlines() == [f"error: {bundle}: manifest.json lists results.csv more than "
                                                      "once: refused"]
    assert not record_path(bundle).exists()


def _npz(**arrays) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value, dtype=object if name == "pickled" else None)
                        for name, value in arrays.items()})
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["pickled", "shape"])
def test_verify_refuses_bad_predictions_before_training(submitted, cli, tmp_path, nothing_trains, kind):
    import numpy as np

    from tests.helpers import RunsCode

    bundle = _copy(submitted, tmp_path)
    ran = tmp_path / "ran"
    with zipfile.ZipFile(bundle) as archive:
        member = sorted(name for name in archive.namelist() if name.endswith("predictions.npz"))[0]
        with np.load(io.BytesIO(archive.read(member))) as data:
            arrays = {name: data[name] for name in data.files}

    def replace(files: dict) -> None:
        if kind == "pickled":
            files[member] = _npz(**{**arrays, "clean_pred": np.array([RunsCode(ran)] * len(arrays["clean_pred"]),
                                                                     dtype=object)})
        else:
            files[member] = _npz(**{**arrays, "clean_label": arrays["clean_label"][:10],
                                    "clean_pred": arrays["clean_pred"][:10]})

    _rewrite(bundle, replace)
    code, _, err = cli("verify", bundle, "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "rerunning" not in err
    if kind == "pickled":
        assert f"the bundle's {member}: not a readable predictions file (Object arrays cannot be loaded" in err
        assert "refused" in err and not ran.exists()
    else:
        assert f"the bundle's {member} holds 10 for n_clean, its row" in err and "300: refused" in err
    assert "cleanbench-verify-" not in err and not record_path(bundle).exists()


# ---- A corpus of hostile bundles, built here from the real bundle (no binaries committed): every kind is refused
# by both `verify` and `leaderboard` in one line, exit 2, no traceback, nothing left outside the scratch folder.

FORMULA = "=cmd|' /C calc'!A0"


def _rows_edit(change):
    """A change of the bundle's rows: ``change(rows)`` edits the list of row dicts (columns may be dropped)."""
    def edit(files: dict) -> None:
        rows = list(csv.DictReader(io.StringIO(files["results.csv"].decode())))
        change(rows)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        files["results.csv"] = buffer.getvalue().encode()
    return edit


def _drop_column(column: str):
    def change(rows: list) -> None:
        for row in rows:
            del row[column]
    return _rows_edit(change)


def _set_all(column: str, value: str):
    def change(rows: list) -> None:
        for row in rows:
            row[column] = value
    return _rows_edit(change)


def _meta_edit(change):
    def edit(files: dict) -> None:
        meta = json.loads(files["bundle.json"])
        change(meta)
        files["bundle.json"] = json.dumps(meta).encode()
    return edit


def _manifest_edit(change):
    """Rewrite the bundle with a consistent manifest, then ``change(listing)`` edits its file entries."""
    def rewrite(path: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
        manifest = json.loads(files.pop(MANIFEST))
        change(manifest)
        files[MANIFEST] = json.dumps(manifest).encode()
        _write_zip(path, files.items())
    return rewrite


def _write_zip(path: Path, members) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name), data)


def _raw_manifest(data: bytes):
    """Replace the manifest by ``data``."""
    def rewrite(path: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
        _write_zip(path, {**files, MANIFEST: data}.items())
    return rewrite


def _first_entry(manifest: dict) -> dict:
    return manifest["files"]["results.csv"]


def _raw(data_of):
    """Replace the whole file by ``data_of(original bytes)``."""
    def rewrite(path: Path) -> None:
        path.write_bytes(data_of(path.read_bytes()))
    return rewrite


def _forged(change, manifest: bool = True):
    """Rewrite the member files with ``change(files)``; with ``manifest``, a manifest made to match (a consistent
    forgery, so a later check must catch it)."""
    return lambda path: _rewrite(path, change, manifest=manifest)


def _with_members(*members):
    """The bundle's members plus raw extra ``members`` (name or ZipInfo, data), the manifest kept as it was."""
    def rewrite(path: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            files = [(name, archive.read(name)) for name in archive.namelist()]
        _write_zip(path, [*files, *members])
    return rewrite


def _link() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("environment/evil-link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _flip(at: float, length: int = 64):
    """Invert ``length`` bytes from ``at`` (a share of the file's length, or a byte offset when 1 or more)."""
    def flip(data: bytes) -> bytes:
        start = int(at if at >= 1 else len(data) * at)
        return data[:start] + bytes(b ^ 0xFF for b in data[start:start + length]) + data[start + length:]
    return flip


def _lzma(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        files = [(name, archive.read(name)) for name in archive.namelist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as archive:
        for name, data in files:
            archive.writestr(name, data)


HOSTILE = {  # kind: (how to make it from the real bundle, what the one line must say)
    "empty-file": (_raw(lambda data: b""), r"not a cleanbench bundle \(not a zip file\)"),
    "empty-zip": (lambda path: _write_zip(path, []), r"no manifest\.json; not a cleanbench bundle"),
    "truncated": (_raw(lambda data: data[:len(data) // 2]), r"not a zip file|damaged bundle"),
    "truncated-end": (_raw(lambda data: data[:-5]), r"not a zip file|damaged bundle"),
    **{f"corrupted-{where}": (_raw(_flip(where)), r"damaged bundle|does not match its hash|not a zip file|unsafe path")
       for where in (6, 26, 30, 0.2, 1 / 3, 0.5, 0.8)},  # a header's flags, its name's length, its name, data
    "lzma-members": (_lzma, r"uses a compression other than deflate: refused"),
    "csv-not-zip": (_raw(lambda data: b"schema_version,cell_id\n6,x\n"), r"not a zip file"),
    "file-and-folder": (_forged(lambda files: files.update({"preset.toml/x": b"x"})),
                        r"preset\.toml is both a file and the folder of preset\.toml/x: refused"),
    "case-twins": (_forged(lambda files: files.update({"Preset.toml": b"x"})),
                   r"differ only in case: refused"),
    "duplicate-entry": (_with_members(("preset.toml", b"other")), r"preset\.toml appears twice: refused"),
    "path-escape": (_with_members(("../escaped.py", b"x")), r"unsafe path '\.\./escaped\.py'"),
    "absolute-path": (_with_members(("/tmp/cleanbench-absolute.py", b"x")), r"unsafe path"),
    "link": (_with_members((_link(), b"/etc/passwd")), r"not a plain file"),
    "unlisted-file": (_with_members(("extra.py", b"x")), r"extra\.py is not listed in the manifest"),
    "missing-file": (_forged(lambda files: files.pop("preset.toml"), manifest=False),
                     r"preset\.toml is listed in the manifest but missing"),
    "hash-mismatch": (_forged(lambda files: files.update({"preset.toml": files["preset.toml"] + b"\n"}),
                              manifest=False), r"preset\.toml does not match its hash in the manifest"),
    "manifest-not-json": (_raw_manifest(b"{not json"), r"manifest\.json is not a JSON object"),
    "manifest-empty-object": (_manifest_edit(lambda manifest: manifest.clear()),
                              r"manifest\.json: field 'format' is missing"),
    "manifest-format": (_manifest_edit(lambda manifest: manifest.update(format=2)),
                        r"manifest\.json, field 'format': expected 1, got 2"),
    "manifest-no-sha256": (_manifest_edit(lambda manifest: _first_entry(manifest).pop("sha256")),
                           r"manifest\.json, files\['results\.csv'\]: field 'sha256' is missing"),
    "manifest-number-hash": (_manifest_edit(lambda manifest: _first_entry(manifest).update(sha256=12345)),
                             r"files\['results\.csv'\], field 'sha256': expected 64 lowercase hex digits, got 12345"),
    "manifest-text-bytes": (_manifest_edit(lambda manifest: _first_entry(manifest).update(bytes="12")),
                            r"field 'bytes': expected a non-negative integer, got '12'"),
    "manifest-entry-list": (_manifest_edit(lambda manifest: manifest["files"].update({"results.csv": []})),
                            r"files\['results\.csv'\]: expected an object"),
    "manifest-extra-field": (_manifest_edit(lambda manifest: manifest.update(run="evil")),
                             r"manifest\.json: unknown field 'run'"),
    "meta-not-json": (_forged(lambda files: files.update({"bundle.json": b"{not json"})),
                      r"bundle\.json is not UTF-8 JSON"),
    "meta-no-defense": (_forged(_meta_edit(lambda meta: meta.pop("defense"))), r"field 'defense' is missing"),
    "meta-formula-defense": (_forged(_meta_edit(lambda meta: meta.update(defense=FORMULA))),
                             r"bundle\.json, field 'defense': expected a name"),
    "component-no-sha256": (_forged(_meta_edit(lambda meta: meta["components"][0].pop("sha256"))),
                            r"components\[0\]: field 'sha256' is missing"),
    "component-number-hash": (_forged(_meta_edit(lambda meta: meta["components"][0].update(sha256=7))),
                              r"components\[0\], field 'sha256': expected 64 lowercase hex digits, got 7"),
    "component-path-name": (_forged(_meta_edit(lambda meta: meta["components"][0].update(name="../x"))),
                            r"components\[0\], field 'name': expected a name"),
    "rows-not-utf8": (_forged(lambda files: files.update({"results.csv": files["results.csv"] + "é,\n".encode(
        "latin-1")})), r"results\.csv: not a readable CSV file"),
    "rows-no-attack": (_forged(_drop_column("attack")), r"results\.csv: missing column 'attack'"),
    "rows-no-cell-id": (_forged(_drop_column("cell_id")), r"results\.csv: missing column 'cell_id'"),
    "rows-text-seed": (_forged(_set_all("seed", "zero")), r"column 'seed': expected an integer, got 'zero'"),
    "rows-extra-field": (_forged(lambda files: files.update(
        {"results.csv": files["results.csv"] + files["results.csv"].splitlines()[1] + b",x\n"})),
                         r"results\.csv: not a readable CSV file"),
    "rows-formula-defense": (_forged(_set_all("defense", FORMULA)),
                             r"column 'defense': \"=cmd\|' /C calc'!A0\" is not a name"),
    "rows-markup-attack": (_forged(_set_all("attack", "<script>alert(1)</script>")),
                           r"column 'attack': '<script>alert\(1\)</script>' is not a name"),
    "rows-formula-preset": (_forged(_set_all("preset", "@SUM(1+1)")), r"column 'preset': '@SUM\(1\+1\)' is not a name"),
    "source-changed": (_forged(lambda files: files.update(
        {"source/defense/jitter/jitter.py": files["source/defense/jitter/jitter.py"] + b"\n# changed\n"})),
        r"the source of defense 'jitter' in the bundle does not match the hash recorded"),
}


@pytest.fixture
def scratch_root(tmp_path, monkeypatch):
    """Temporary folders made under one folder of the test's, to check that every scratch folder was removed."""
    import tempfile

    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*")}


@pytest.mark.parametrize("command", ["verify", "leaderboard"])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_bundles_are_refused_in_one_line(submitted, cli, tmp_path, scratch_root, nothing_trains, kind,
                                                 command):
    make, message = HOSTILE[kind]
    folder = tmp_path / "in"
    folder.mkdir()
    bundle = _copy(submitted, folder)
    make(bundle)
    before = _files_under(tmp_path)
    board = tmp_path / "board"
    args = ("verify", bundle, "--device", "cpu") if command == "verify" else ("leaderboard", bundle, "--out", board)
    code, out, err = cli(*args)
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in out + err and "rerunning" not in out + err
    assert _files_under(tmp_path) == before  # no record, no output folder, no scratch folder left
    assert not board.exists() and not record_path(bundle).exists() and not list(scratch_root.iterdir())
    assert not Path("/tmp/cleanbench-absolute.py").exists() and not (tmp_path / "escaped.py").exists()


def test_submit_checks_its_bundle_through_the_same_intake(submitted, tmp_path, monkeypatch):
    """``submit`` opens what it wrote through ``open_bundle``; a bundle that fails the intake is not left behind."""
    from benchmark import submit as submit_module

    calls = []
    real = bundle_format.open_bundle

    def spy(path, folder):
        calls.append(path)
        return real(path, folder)

    monkeypatch.setattr(bundle_format, "open_bundle", spy)
    DEFENSES.unregister("jitter")
    plugin = submitted / "jitter.py"
    from benchmark.plugins import register_plugins

    register_plugins([str(plugin)], no_autoload=True)
    try:
        target = tmp_path / "again.zip"
        submit_module.submit(submitted / "run", "jitter", target, preset=str(TEST_PRESET))
        assert calls == [target] and target.is_file()
    finally:
        DEFENSES.unregister("jitter")
