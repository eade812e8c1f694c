"""What the attack and defense checks share: the result type, running one check, the config checks and the
test-sized preset they run on.

A config must be a frozen dataclass (a run records its settings once; nothing may change them afterwards) and
must survive a preset's TOML: written as the ``[attacks.NAME]`` or ``[defenses.NAME]`` table a user would write,
read back and built again, it is the same object. A field TOML cannot hold (an object, a None inside a list)
fails here rather than when a user first puts it in a preset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Callable

from benchmark.config import build_config, config_dict
from benchmark.errors import UserError
from benchmark.plugins import describe_error
from benchmark.presets import Preset, load_preset
from benchmark.registry import check_name

SEED = 0  # the run seed every check uses
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class CheckResult:
    """One check of one component: passed, or failed with a reason a plugin author can act on."""

    component: str  # the registered name, e.g. "my-defense"
    name: str  # the check, e.g. "deterministic"
    ok: bool
    reason: str = ""

    def line(self) -> str:
        """``PASS my-defense/deterministic`` or ``FAIL my-defense/deterministic: reason``."""
        return f"PASS {self.component}/{self.name}" if self.ok else \
            f"FAIL {self.component}/{self.name}: {self.reason}"


def attempt(component: str, name: str, check: Callable[[], str | None]) -> CheckResult:
    """Run ``check``: None means pass, a string is the reason it failed; whatever it raises is a failure too."""
    try:
        reason = check()
    except Exception as error:  # noqa: BLE001 - a plugin that raises fails the check, with the error in one line
        reason = f"raised {describe_error(error)}".splitlines()[0]
    return CheckResult(component, name, reason is None, reason or "")


def check_preset() -> Preset:
    """The default preset, fmnist-tiny, at test size (the sizes of the test suite's copy): every check runs in
    seconds on a CPU, with the data, model and text of the preset a user runs first."""
    preset = load_preset("fmnist-tiny")
    short = {"epochs": 1, "warmup_steps": 2}
    return dataclasses.replace(
        preset, name="fmnist-check", source="cleanbench check (fmnist-tiny at test size)",
        data=dataclasses.replace(preset.data, train_pairs=512, clean_pairs=256, val_pairs=128, test_images=300),
        victim=dataclasses.replace(preset.victim, **short), finetune=dataclasses.replace(preset.finetune, **short))


def metadata_check(cls: type, kind: str) -> str | None:
    """A usable name (it reaches results files and paths) and a version string (it reaches cache keys)."""
    try:
        check_name(kind, getattr(cls, "name", None), cls.__qualname__)
    except UserError as error:
        return str(error)
    if not isinstance(getattr(cls, "version", None), str) or not cls.version:
        return f"version = {getattr(cls, 'version', None)!r}: set a non-empty string, e.g. version = \"1\""
    return None


def config_checks(cls: type, settings: dict[str, Any], table: str) -> list[Callable[[], str | None]]:
    """The ``config-frozen`` and ``config-toml`` checks of ``cls.Config`` (``table``: "defenses.NAME")."""
    config = cls.Config

    def frozen() -> str | None:
        if not dataclasses.is_dataclass(config):
            return f"Config = {config.__qualname__} is not a dataclass: declare it @dataclass(frozen=True)"
        if not config.__dataclass_params__.frozen:
            return (f"Config = {config.__qualname__} is a dataclass but not frozen: declare it "
                    "@dataclass(frozen=True), so nothing changes the settings a run has recorded")
        return None

    def toml() -> str | None:
        if not dataclasses.is_dataclass(config):
            return f"Config = {config.__qualname__} is not a dataclass"
        for label, values in (("the default config", {}), (f"the preset's [{table}]", settings)):
            built = build_config(config, values, table)
            text = preset_table(table, config_dict(built))
            read = tomllib.loads(text)
            for key in table.split("."):
                read = read.get(key, {})
            again = build_config(config, read, table)
            if again != built:
                return f"{label} does not survive a preset's TOML: {built!r} was read back as {again!r}"
        return None

    return [frozen, toml]


def preset_table(table: str, values: dict[str, Any]) -> str:
    """``values`` as the preset table ``[table]`` (None values left out: unset, as in a preset)."""
    header = ".".join(_key(part) for part in table.split("."))
    lines = [f"[{header}]"] + [f"{_key(key)} = {_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")) if not math.isfinite(value) \
            else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise ValueError(f"{value!r} cannot be written in TOML")
