"""The registry and plugin discovery: what a third party relies on to add an attack or defense without forking."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap

import pytest

from attacks import ATTACKS
from benchmark import plugins
from benchmark.errors import UserError
from benchmark.registry import Registry
from defenses import DEFENSES


def test_unknown_name_suggests_close_names_and_lists_all():
    with pytest.raises(UserError) as info:
        ATTACKS.get("badnett")
    message = str(info.value)
    assert "Unknown attack 'badnett'" in message
    assert "Did you mean: badnet" in message.split("Available")[0]
    assert "Available: " in message and "badnet" in message.split("Available: ")[1]


def test_duplicate_name_from_a_different_class_is_refused():
    registry: Registry = Registry("attack")

    class First:
        name = "x"

    class Second:
        name = "x"

    registry.register()(First)
    with pytest.raises(UserError, match="already registered"):
        registry.register()(Second)
    registry.register()(First)  # the same class twice (a module imported twice) is harmless
    assert registry.get("x") is First


def test_resolve_all_and_lists():
    assert "badnet" in ATTACKS.resolve("all")
    assert DEFENSES.resolve("finetune, none") == ["finetune", "none"]
    with pytest.raises(UserError, match="Unknown defense 'nope'"):
        DEFENSES.resolve("none,nope")


def test_lazy_builtins_resolve_to_classes():
    from defenses.base import Defense

    for name in DEFENSES.names():
        assert issubclass(DEFENSES.get(name), Defense)
        assert DEFENSES.source(name) == "built-in"


def test_builtins_register_once_with_the_decorator_on_first_use_and_importing_the_packages_is_cheap():
    code = ("import sys, attacks, defenses; loaded = 'torch' in sys.modules; "
            "assert attacks.ATTACKS.names() and defenses.DEFENSES.names(); sys.exit(loaded)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    # every module of the package defines one registered class, but the contract and shared helpers: the registry
    # skips private modules (``_name``), and attacks.surrogate is the surrogate CLIP label-consistent and badclip train
    shared = {"base", "surrogate"}
    for registry in (ATTACKS, DEFENSES):
        modules = {registry.get(name).__module__ for name in registry.names() if registry.source(name) == "built-in"}
        package = sys.modules[registry.builtins]
        assert modules == {f"{registry.builtins}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                           if m.name not in shared and not m.name.startswith("_")}


PLUGIN_DEFENSE = """
from dataclasses import dataclass
from defenses.base import Defense

@dataclass(frozen=True)
class Config:
    pass

class {cls}(Defense):
    '''A plugin defense that returns the model unchanged.'''
    name = "{name}"
    version = "7"
    Config = Config

    def apply(self, model, clean_data, context):
        return model
"""


def test_entry_point_plugin_from_an_installed_distribution(tmp_path, monkeypatch):
    """A throwaway distribution (dist-info + module on sys.path) advertises a defense in cleanbench.defenses."""
    (tmp_path / "throwaway_defense.py").write_text(PLUGIN_DEFENSE.format(cls="Throwaway", name="throwaway"))
    dist = tmp_path / "throwaway_defense-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-defense\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[cleanbench.defenses]\nthrowaway = throwaway_defense:Throwaway\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert plugins.load_entry_points(force=True) == []
        assert DEFENSES.get("throwaway").version == "7"
        assert DEFENSES.source("throwaway") == "package 'throwaway-defense'"
    finally:
        DEFENSES.unregister("throwaway")
        sys.modules.pop("throwaway_defense", None)


def test_broken_entry_point_is_reported_and_skipped(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs a missing library')\n")
    dist = tmp_path / "broken_plugin-0.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.2\n")
    (dist / "entry_points.txt").write_text("[cleanbench.attacks]\nbroken = broken_plugin:Broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    failures = plugins.load_entry_points(force=True)
    assert [f.name for f in failures] == ["broken"]
    message = failures[0].message()
    assert "package 'broken-plugin'" in message and "needs a missing library" in message
    assert "broken" not in ATTACKS


def test_autoload_can_be_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    assert plugins.autoload_disabled()
    assert plugins.load_entry_points(force=True) == []


def test_local_file_plugin(tmp_path):
    path = tmp_path / "my_defense.py"
    path.write_text(PLUGIN_DEFENSE.format(cls="MyDefense", name="my-defense"))
    try:
        assert [cls.name for cls in plugins.load_plugin(str(path))] == ["my-defense"]
        assert DEFENSES.get("my-defense").version == "7"
        assert DEFENSES.source("my-defense") == f"file '{path}'"
    finally:
        DEFENSES.unregister("my-defense")


def test_a_named_plugin_that_fails_to_import_is_a_user_error(tmp_path):
    path = tmp_path / "bad_defense.py"
    path.write_text(textwrap.dedent("""
        import numpy
        1 / 0
    """))
    with pytest.raises(UserError) as error:
        plugins.load_plugin(str(path))
    assert str(error.value) == f"plugin {path} failed to load: ZeroDivisionError: division by zero (at bad_defense.py:3)"


def test_a_named_module_that_does_not_exist_is_a_user_error():
    with pytest.raises(UserError) as error:
        plugins.register_plugins(["no_such_module:Thing"], no_autoload=True)
    assert str(error.value) == ("plugin no_such_module:Thing failed to load: ModuleNotFoundError: "
                                "No module named 'no_such_module'")


def test_missing_plugin_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        plugins.load_plugin(str(tmp_path / "nope.py"))


def test_a_class_that_is_not_the_kinds_contract_is_refused_at_registration_in_one_line():
    class NotAnAttack:
        name = "not-an-attack"

    with pytest.raises(UserError) as error:
        ATTACKS.add("not-an-attack", NotAnAttack, source="file '/p/x.py'")
    assert str(error.value) == ("attack 'not-an-attack' from file '/p/x.py': class NotAnAttack does not derive from "
                                "attacks.base.Attack")
    assert "not-an-attack" not in ATTACKS
    with pytest.raises(UserError, match=r"^defense 'badnet-as-defense' from test: class BadNet does not derive "
                                        r"from defenses\.base\.Defense$"):
        DEFENSES.add("badnet-as-defense", ATTACKS.get("badnet"), source="test")


def test_a_lazy_module_class_entry_is_checked_when_it_is_loaded():
    DEFENSES.add("lazy-badnet", "attacks.badnet:BadNet", source="test")
    try:
        with pytest.raises(UserError, match="class BadNet does not derive from defenses.base.Defense"):
            DEFENSES.get("lazy-badnet")
    finally:
        DEFENSES.unregister("lazy-badnet")


def test_a_defense_must_derive_from_its_stages_contract(tmp_path):
    from defenses.base import Defense

    class DataButNotDetector(Defense):
        name = "data-not-detector"
        stage = "data"

        def apply(self, model, clean_data, context):
            return model

    with pytest.raises(UserError) as error:
        DEFENSES.register()(DataButNotDetector)
    message = str(error.value)
    assert "\n" not in message and message.startswith("defense 'data-not-detector' from file ")
    assert message.endswith("class DataButNotDetector has stage 'data' but does not derive from "
                            "defenses.base.Detector")
    assert "data-not-detector" not in DEFENSES

    class NoSuchStage(DataButNotDetector):
        name = "no-such-stage"
        stage = "pre-training"

    with pytest.raises(UserError, match="has stage 'pre-training'; the stages are: post-training, training, data"):
        DEFENSES.add("no-such-stage", NoSuchStage, source="test")

    path = tmp_path / "abstract_defense.py"  # a plugin file: the same line, naming the file
    path.write_text("from defenses.base import Defense, Detector\nfrom defenses import DEFENSES\n\n"
                    "@DEFENSES.register()\nclass Half(Detector):\n    name = 'half'\n")
    with pytest.raises(UserError) as error:
        plugins.load_plugin(str(path))
    assert str(error.value) == (f"defense 'half' from file '{path}': class Half is abstract "
                                "(it does not implement score)")


def test_selection_takes_wildcards_all_and_exclusions():
    assert DEFENSES.resolve("detect-*") == ["detect-dao", "detect-kdist", "detect-slof"]
    every = ATTACKS.resolve("all")
    assert ATTACKS.resolve("all,-badclip") == [name for name in every if name != "badclip"]
    assert ATTACKS.resolve("-badclip") == ATTACKS.resolve("all,-badclip")  # exclusions only: all but those
    assert ATTACKS.resolve("wanet, bad*, badnet") == ["wanet", "badclip", "badnet"]  # given order, no repeats
    assert DEFENSES.resolve("all,-detect-*,-none") == [name for name in DEFENSES.names()
                                                        if not name.startswith("detect-") and name != "none"]


@pytest.mark.parametrize("spec, message", [
    ("detekt-*", "no defense matches 'detekt-*'. Available: cleanclip, detect-dao"),
    ("all,-detekt-*", "no defense matches '-detekt-*'. Available: cleanclip, detect-dao"),
    ("all,-fintune", "Unknown defense 'fintune'. Did you mean: finetune"),
    ("all,-*", "'all,-*' selects no defense. Available: cleanclip"),
])
def test_a_selection_item_that_matches_nothing_names_what_exists(spec, message):
    with pytest.raises(UserError) as error:
        DEFENSES.resolve(spec)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
