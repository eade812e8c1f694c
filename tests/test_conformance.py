"""``cleanbench check``: every built-in passes the conformance suite, and a plugin that breaks the contract fails
the check it breaks, with its reason (a mutable config, randomness not drawn from the seed: an attack's unseeded
``torch.rand``, a defense's unseeded ``random``; an input changed in place, an exception, a defense over its time
budget, a context that leaks the test set)."""

from __future__ import annotations

import textwrap
import time

import pytest
import torch

import cleanbench
from attacks import ATTACKS
from benchmark.conformance import DEFAULT_TIME_BUDGET, check
from benchmark.conformance.common import preset_table
from defenses import DEFENSES

ATTACK = textwrap.dedent('''
    from dataclasses import dataclass
    import torch
    import cleanbench

    @dataclass{decorator}
    class Config:
        value: float = 1.0

    class Broken(cleanbench.Attack):
        """A corner patch, broken as the test needs."""
        name = "{name}"
        Config = Config
        uses_clean_pairs = {uses_clean_pairs}

        def apply(self, images, generator):
            {body}
''')
GOOD_APPLY = "out = images.clone(); out[..., -3:, -3:] = self.config.value; return out"


def attack_plugin(tmp_path, name: str, body: str = GOOD_APPLY, decorator: str = "(frozen=True)",
                  uses_clean_pairs: bool = True):
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(ATTACK.format(name=name, body=body, decorator=decorator, uses_clean_pairs=uses_clean_pairs))
    return path


def failures(results) -> dict[str, str]:
    return {result.name: result.reason for result in results if not result.ok}


@pytest.fixture
def unregister():
    names = []
    yield names.append
    for name in names:
        ATTACKS.unregister(name)
        DEFENSES.unregister(name)


def test_a_conforming_attack_passes_every_check(tmp_path, unregister):
    unregister("good-patch")
    results = check(str(attack_plugin(tmp_path, "good-patch")))
    assert failures(results) == {}
    assert [result.line() for result in results][:2] == ["PASS good-patch/metadata", "PASS good-patch/config-frozen"]


@pytest.mark.parametrize("case, body, decorator, failed, reason", [
    ("mutable-config", GOOD_APPLY, "", {"config-frozen"},
     "Config = Config is a dataclass but not frozen: declare it @dataclass(frozen=True), so nothing changes the "
     "settings a run has recorded"),
    ("not-deterministic", "return (images + 0.1 * torch.rand(images.shape)).clamp(0, 1)", "(frozen=True)",
     {"deterministic"}, "two runs with the same seed triggered the same images differently: draw randomness from "
     "the generator passed to apply (and from context.seed in setup), not torch's global generator"),
    ("changes-its-input", "images[..., -3:, -3:] = 1.0; return images", "(frozen=True)", {"leaves-input-untouched"},
     "apply changed 432 values of its input images in place: write into a copy (images.clone())"),
    ("raises", "raise RuntimeError('trigger not ready')", "(frozen=True)",
     {"apply-keeps-shape-dtype-range", "leaves-input-untouched", "poison-returns-pairs-and-manifest",
      "deterministic"}, "raised RuntimeError: trigger not ready (at raises.py:17)"),
    ("leaves-the-range", "return images * 2", "(frozen=True)", {"apply-keeps-shape-dtype-range"}, None),
])
def test_a_broken_attack_fails_the_check_it_breaks_with_its_reason(tmp_path, unregister, case, body, decorator,
                                                                   failed, reason):
    unregister(case)
    found = failures(check(str(attack_plugin(tmp_path, case, body, decorator))))
    assert set(found) == failed
    if reason is not None:
        assert found[sorted(failed)[0]] == reason


# Brightness from the clean pairs' mean pixel: its victims depend on the clean split.
READS_CLEAN_PAIRS = ("out = images.clone(); out[..., -3:, -3:] = self.context.clean_pairs.images[:8].float().mean() "
                     "/ 255; return out")


@pytest.mark.parametrize("uses_clean_pairs, body, reason", [
    (True, READS_CLEAN_PAIRS, None),
    (False, GOOD_APPLY, None),
    (False, READS_CLEAN_PAIRS, "poisoning failed without context.clean_pairs (AttributeError: 'NoneType' object "
                               "has no attribute 'images'); it declares uses_clean_pairs = False, so its victims are "
                               "shared across clean-split sizes: set uses_clean_pairs = True"),
])
def test_an_attack_that_says_it_does_not_read_the_clean_pairs_is_checked_without_them(tmp_path, unregister,
                                                                                     uses_clean_pairs, body, reason):
    name = f"clean-reader-{uses_clean_pairs}-{len(body)}".lower()
    unregister(name)
    found = failures(check(str(attack_plugin(tmp_path, name, body, uses_clean_pairs=uses_clean_pairs))))
    assert found == ({} if reason is None else {"clean-pairs-declared": reason})


DEFENSE = textwrap.dedent('''
    from dataclasses import dataclass
    import random
    import time
    import torch
    import cleanbench

    @dataclass
    class Config:
        scale: float = 0.01

    class Noisy(cleanbench.Defense):
        """Adds unseeded noise to every weight (and, as asked, sleeps or raises)."""
        name = "noisy"
        Config = Config

        def apply(self, model, clean_data, context):
            {body}
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(random.random() * self.config.scale)
            return model
''')


def test_a_broken_defense_fails_with_its_reasons(tmp_path, unregister):
    unregister("noisy")
    path = tmp_path / "noisy.py"
    path.write_text(DEFENSE.format(body="pass"))
    found = failures(check(str(path)))
    assert set(found) == {"config-frozen", "deterministic"}
    assert found["deterministic"].startswith("two runs with the same seed gave different weights (")


def test_a_defense_that_raises_or_overruns_its_budget_fails_runs_in_budget(tmp_path, unregister):
    unregister("noisy")
    path = tmp_path / "noisy.py"
    path.write_text(DEFENSE.format(body="raise ValueError('no clean pairs for me')"))
    found = failures(check(str(path)))
    assert found["runs-in-budget"] == "raised ValueError: no clean pairs for me (at noisy.py:18)"
    assert found["scorable"] == "not scored: the defense did not run (see runs-in-budget)"
    DEFENSES.unregister("noisy")
    path.write_text(DEFENSE.format(body="time.sleep(5)"))
    start = time.perf_counter()
    found = failures(check(str(path), time_budget=0.5))
    assert found["runs-in-budget"].startswith("raised TimeBudgetExceeded: still running after the budget of 0.5 s")
    assert time.perf_counter() - start < 60


def test_a_context_that_reaches_the_test_set_fails_no_test_set_or_manifest(monkeypatch):
    from benchmark.conformance import defense_checks
    from benchmark.conformance.common import check_preset
    from benchmark.task import build_task

    test_set = build_task(check_preset()).test_set

    class LeakyContext(defense_checks.DefenseContext):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.extra = {"eval": test_set}

    monkeypatch.setattr(defense_checks, "DefenseContext", LeakyContext)
    found = failures(check("none"))
    assert found == {"no-test-set-or-manifest": "context.extra['eval'] is the test set: a defense must never "
                                                "receive it"}


def test_assert_conforms_lists_every_failed_check(tmp_path, unregister):
    unregister("mutable-config")
    with pytest.raises(AssertionError, match=r"FAIL mutable-config/config-frozen: Config = Config is a dataclass"):
        cleanbench.assert_conforms(str(attack_plugin(tmp_path, "mutable-config", decorator="")))


def test_the_toml_of_a_config_is_what_a_preset_would_hold():
    text = preset_table("defenses.my-defense", {"lr": 1e-05, "name": 'a "quoted" ü', "sizes": [1, 2], "unset": None,
                                                "flag": True, "scale": float("inf")})
    assert text == ('[defenses.my-defense]\nlr = 1e-05\nname = "a \\"quoted\\" ü"\nsizes = [1, 2]\nflag = true\n'
                    'scale = inf\n')


def test_cli_check_prints_one_line_per_check_and_exits_0_or_1(cli, tmp_path, unregister):
    code, out, err = cli("check", "badnet", "--no-plugin-autoload")
    assert code == 0 and out.splitlines()[0] == "PASS badnet/metadata" and all(
        line.startswith("PASS badnet/") for line in out.splitlines()) and "8 passed, 0 failed" in err
    unregister("changes-its-input")
    plugin = attack_plugin(tmp_path, "changes-its-input", "images.mul_(0.5); return images")
    code, out, _ = cli("check", plugin, "--no-plugin-autoload")
    assert code == 1 and "FAIL changes-its-input/leaves-input-untouched: apply changed" in out


@pytest.mark.parametrize("args, message", [
    (("nope",), "Unknown attack or defense 'nope'."),
    (("no_such_module:Thing",), "plugin no_such_module:Thing failed to load: ModuleNotFoundError: No module named "
                                "'no_such_module'"),
    (("badnet", "--time-budget", "0"), "time budget = 0.0 s is out of range; allowed: (0, inf)"),
])
def test_cli_check_of_something_that_cannot_be_checked_is_one_line_and_exit_2(cli, args, message):
    code, out, err = cli("check", *args, "--no-plugin-autoload")
    assert code == 2 and out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1


def test_the_cli_default_time_budget_is_the_suites():
    from benchmark.cli.check import DEFAULT_TIME_BUDGET as CLI_DEFAULT

    assert CLI_DEFAULT == DEFAULT_TIME_BUDGET


@pytest.mark.slow
@pytest.mark.parametrize("kind, name", [("attack", name) for name in ATTACKS.names()] +
                         [("defense", name) for name in DEFENSES.names()])
def test_every_builtin_passes_the_conformance_checks(kind, name):
    registry = ATTACKS if kind == "attack" else DEFENSES
    with torch.random.fork_rng(devices=[]):
        results = check(registry.get(name))
    assert [result.line() for result in results if not result.ok] == []
