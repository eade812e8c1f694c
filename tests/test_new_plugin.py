"""``cleanbench new attack|defense NAME``: a package that imports only ``cleanbench``, passes the conformance
checks as written and, installed (slow test, in a scratch environment), passes its own test; a bad name is one
line and exit 2 with nothing written."""

from __future__ import annotations

import csv
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from attacks import ATTACKS
from benchmark.conformance import check
from defenses import DEFENSES
from tests.helpers import INTERNAL, imported_packages, readme_walkthrough, write_small_preset

FILES = {"pyproject.toml", "README.md", "{module}/__init__.py", "tests/test_{module}.py"}


def files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("kind, name, module", [("defense", "my-defense", "my_defense"),
                                                ("attack", "my-patch", "my_patch")])
def test_new_writes_a_package_that_imports_only_cleanbench_and_passes_the_checks(cli, tmp_path, monkeypatch, kind,
                                                                                 name, module):
    code, out, err = cli("new", kind, name, "--dir", tmp_path)
    assert (code, err) == (0, "")
    folder = tmp_path / name
    assert out.startswith(f"created {folder}")
    assert files_under(folder) == {path.format(module=module) for path in FILES}
    for source in (folder / module / "__init__.py", folder / "tests" / f"test_{module}.py"):
        modules = imported_packages(source.read_text())
        assert "cleanbench" in modules and not modules & INTERNAL, source
    pyproject = (folder / "pyproject.toml").read_text()
    cls = "MyDefense" if kind == "defense" else "MyPatch"
    assert f'[project.entry-points."cleanbench.{kind}s"]\n{name} = "{module}:{cls}"' in pyproject
    monkeypatch.syspath_prepend(str(folder))
    try:
        results = check(f"{module}:{cls}")
    finally:
        (DEFENSES if kind == "defense" else ATTACKS).unregister(name)
        sys.modules.pop(module, None)
    assert [result.line() for result in results if not result.ok] == []


@pytest.mark.parametrize("args, message", [
    (("defense", "9lives"), "defense name '9lives' does not make a Python module name ('9lives'): use letters, "
                            "digits, - and _, starting with a letter"),
    (("defense", "my.defense"), "defense name 'my.defense' does not make a Python module name ('my.defense'): use "
                                "letters, digits, - and _, starting with a letter"),
    (("defense", "../up"), "defense name '../up' from the command line is not allowed: use 1-64 lowercase "
                           "letters, digits and - _ . + starting with a letter or digit (no '..')"),
    (("defense", "finetune"), "defense 'finetune' already exists (built-in); choose another name"),
    (("attack", "json"), "a module named 'json' already exists in this environment; choose another name"),
    (("widget", "thing"), "cannot make a 'widget'; choose one of: attack, defense"),
    (("defense", "taken"), "{dir}/taken already exists; choose another name or --dir"),
])
def test_a_bad_name_is_one_line_exit_2_and_nothing_written(cli, tmp_path, args, message):
    (tmp_path / "taken").mkdir()
    code, out, err = cli("new", *args, "--dir", tmp_path)
    assert (code, out) == (2, "")
    assert err == f"error: {message.format(dir=tmp_path)}\n"
    assert [path.name for path in tmp_path.iterdir()] == ["taken"]


@pytest.mark.slow
def test_the_new_package_installs_and_passes_its_own_test_and_check(tmp_path):
    """In a scratch environment layered on this one (the shared one keeps no test plugin): pip install -e, then
    the package's own pytest, ``cleanbench check NAME`` and ``cleanbench list`` through its entry point, then the
    rest of the README's walkthrough: run, submit, verify and a leaderboard that shows the entry verified."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "outer.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    subprocess.run([python, "-m", "benchmark.cli", "new", "defense", "my-defense", "--dir", tmp_path], check=True)
    package = tmp_path / "my-defense"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", package],
                   check=True)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, *args], cwd=package, capture_output=True, text=True, timeout=900)

    own_test = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
    assert own_test.returncode == 0, own_test.stdout[-2000:]
    checked = run("-m", "benchmark.cli", "check", "my-defense")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "PASS my-defense/runs-in-budget" in checked.stdout
    listed = run("-m", "benchmark.cli", "list", "defenses")
    assert listed.returncode == 0 and "my-defense" in listed.stdout

    # The rest of the README's walkthrough as written, at test size: run, submit, verify, leaderboard
    preset = str(write_small_preset(tmp_path / "small.toml"))
    test_size = {"run": ["--preset", preset, "--seeds", "0", "--device", "cpu", "--workers", "1"],
                 "submit": ["--preset", preset], "verify": ["--device", "cpu"]}
    for command in readme_walkthrough()[3:]:
        args = command.split()[1:]
        done = run("-m", "benchmark.cli", *args, *test_size.get(args[0], []))
        assert done.returncode == 0, f"{command}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
    with open(package / "board" / "leaderboard.csv", newline="") as handle:
        board = list(csv.DictReader(handle))
    assert {row["evidence"] for row in board if row["defense"] == "my-defense"} == {"verified"}
