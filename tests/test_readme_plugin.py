"""The plugin example in README.md works as written and imports only ``cleanbench``: a newcomer's first plugin must
not be broken, nor depend on the engine's internal modules."""

from __future__ import annotations

import re

import cleanbench
from benchmark import plugins
from tests.helpers import INTERNAL, README, imported_packages, readme_walkthrough


def readme_plugin() -> str:
    return re.search(r"```python\n(# my_defense.py.*?)```", README.read_text(), re.S).group(1)


def test_readme_plugin_imports_cleanbench_and_no_internal_module():
    modules = imported_packages(readme_plugin())
    assert "cleanbench" in modules and not modules & INTERNAL


def test_readme_plugin_loads_and_passes_the_conformance_checks(tmp_path):
    path = tmp_path / "my_defense.py"
    path.write_text(readme_plugin())
    try:
        [defense] = plugins.load_plugin(str(path))
        assert cleanbench.DEFENSES.get("my-defense") is defense
        results = cleanbench.check(defense)
    finally:
        cleanbench.DEFENSES.unregister("my-defense")
    assert [result.line() for result in results if not result.ok] == []
    assert {result.name for result in results} >= {"config-frozen", "deterministic", "runs-in-budget", "scorable"}


WALKTHROUGH = ["cleanbench new defense my-defense", "pip install -e my-defense", "cleanbench check my-defense",
               "cleanbench run --attacks badnet --defenses none,my-defense --out results",
               "cleanbench submit results --defense my-defense -o my-defense.zip",
               "cleanbench verify my-defense.zip", "cleanbench leaderboard my-defense.zip --out board"]


def test_readme_walkthrough_is_new_install_check_run_submit_verify_leaderboard():
    """The commands the slow test in test_new_plugin.py runs, in a scratch environment, on the test preset."""
    assert readme_walkthrough() == WALKTHROUGH
