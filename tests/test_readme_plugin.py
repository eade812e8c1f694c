"""The plugin example in README.md works as written and imports only ``cleanbench``: a newcomer's first plugin must
not be broken, nor depend on the engine's internal modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import cleanbench
from benchmark import plugins

README = Path(__file__).parent.parent / "README.md"
INTERNAL = {"attacks", "defenses", "benchmark", "leaderboard"}  # the engine: importable, but not the public API


def readme_plugin() -> str:
    return re.search(r"```python\n(# my_defense.py.*?)```", README.read_text(), re.S).group(1)


def imported_packages(code: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").partition(".")[0])
    return modules


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


def test_readme_walkthrough_is_new_install_check_run():
    block = re.search(r"```bash\n(cleanbench new defense my-defense.*?)```", README.read_text(), re.S).group(1)
    commands = [line.partition("#")[0].strip() for line in block.splitlines()]
    assert commands == ["cleanbench new defense my-defense", "pip install -e my-defense",
                        "cleanbench check my-defense", "cleanbench run --attacks badnet --defenses none,my-defense"]
