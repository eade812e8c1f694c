"""Provenance: where each attack and defense came from (package, version, source hash), as rows and ``list`` show
it."""

from __future__ import annotations

import sys

from attacks import ATTACKS
from benchmark import __version__, plugins
from benchmark.provenance import origin_of, source_hash
from benchmark.results import COLUMNS, PROVENANCE_COLUMNS, SCHEMA_VERSION, UPGRADABLE, ResultsFile
from benchmark.runner.record import origin_columns
from defenses import DEFENSES
from tests.results_rows import known_rows, write_results

PLUGIN = """
from dataclasses import dataclass
from defenses.base import Defense
from {helper} import NOTE

@dataclass(frozen=True)
class Config:
    pass

class Traced(Defense):
    '''A plugin defense that returns the model unchanged.'''
    name = "{name}"
    version = "3"
    Config = Config

    def apply(self, model, clean_data, context):
        return model
"""


def test_a_builtin_is_cleanbench_and_its_module_or_package_folder():
    cleanclip = origin_of(DEFENSES.get("cleanclip"))
    assert (cleanclip.kind, cleanclip.package, cleanclip.version, cleanclip.label()) == (
        "built-in", "cleanbench", __version__, "built-in")
    assert cleanclip.files == ("cleanclip/__init__.py",)  # a package: every .py file of its folder
    assert cleanclip.sha256 == source_hash(cleanclip.root, cleanclip.files)
    assert origin_of(ATTACKS.get("badnet")).files == ("badnet.py",)


def test_rows_record_package_version_and_source_hash():
    columns = origin_columns("badnet", "finetune")
    assert set(columns) == set(PROVENANCE_COLUMNS) and set(PROVENANCE_COLUMNS) <= set(COLUMNS)
    assert (columns["attack_package"], columns["defense_package_version"]) == ("cleanbench", __version__)
    assert columns["defense_source_sha256"] == origin_of(DEFENSES.get("finetune")).sha256
    assert origin_columns("none", "none")["attack_source_sha256"] == ""  # the benign control runs no attack code


def test_a_plugin_file_is_its_path_and_hash(tmp_path, cli):
    (tmp_path / "helper_a.py").write_text("NOTE = 1\n")
    path = tmp_path / "traced_file.py"
    path.write_text(PLUGIN.format(helper="helper_a", name="traced-file"))
    sys.path.insert(0, str(tmp_path))
    try:
        plugins.load_plugin(str(path))
        origin = origin_of(DEFENSES.get("traced-file"))
        assert (origin.kind, origin.package, origin.label()) == ("file", "", str(path))
        assert origin.sha256 == source_hash(tmp_path, ["traced_file.py"])
        code, out, _ = cli("list", "defenses", "--no-plugin-autoload")  # the label, as list shows it (wrapped)
        assert code == 0 and "traced-file" in out
    finally:
        DEFENSES.unregister("traced-file")
        sys.path.remove(str(tmp_path))


def test_an_installed_package_is_its_distribution_and_version(tmp_path, monkeypatch, cli):
    package = tmp_path / "traced_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper_b.py").write_text("NOTE = 2\n")
    (package / "defense.py").write_text(PLUGIN.format(helper="traced_pkg.helper_b", name="traced-pkg"))
    dist = tmp_path / "traced_pkg-2.5.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: traced-pkg\nVersion: 2.5\n")
    (dist / "RECORD").write_text("traced_pkg/__init__.py,,\ntraced_pkg/defense.py,,\ntraced_pkg/helper_b.py,,\n")
    (dist / "entry_points.txt").write_text("[cleanbench.defenses]\ntraced-pkg = traced_pkg.defense:Traced\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert plugins.load_entry_points(force=True) == []
        origin = origin_of(DEFENSES.get("traced-pkg"))
        assert origin.label() == "package traced-pkg 2.5"
        assert set(origin.files) == {"traced_pkg/__init__.py", "traced_pkg/defense.py", "traced_pkg/helper_b.py"}
        code, out, _ = cli("list", "defenses", "--no-plugin-autoload")
        assert code == 0 and "package traced-pkg 2.5" in out
    finally:
        DEFENSES.unregister("traced-pkg")
        for name in [name for name in sys.modules if name.startswith("traced_pkg")]:
            del sys.modules[name]


def test_files_of_schema_3_read_with_empty_provenance(tmp_path):
    old = [column for column in COLUMNS if column not in UPGRADABLE[3]]
    rows = [{**row, "schema_version": "3"} for row in known_rows()]
    path = write_results(tmp_path / "results.csv", rows, columns=old)
    row = next(iter(ResultsFile(path).rows.values()))
    assert row["defense_source_sha256"] == "" and row["torch_threads"] == "" and row["schema_version"] == str(SCHEMA_VERSION)


def test_files_of_schema_5_read_with_the_cpu_not_recorded(tmp_path):
    path = write_results(tmp_path / "results.csv", [{**row, "schema_version": "5"} for row in known_rows()],
                         columns=[column for column in COLUMNS if column != "cpu"])
    row = next(iter(ResultsFile(path).rows.values()))
    assert row["cpu"] == "" and row["stage"] == "post-training" and row["schema_version"] == str(SCHEMA_VERSION)
