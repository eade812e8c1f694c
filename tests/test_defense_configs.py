"""Every registered defense validates its settings before any training: unknown keys and bad recipe values."""

from __future__ import annotations

import dataclasses

import pytest

from benchmark.errors import UserError
from defenses import DEFENSES


@pytest.mark.parametrize("name", DEFENSES.names())
def test_unknown_key_names_the_defense_and_the_known_keys(name):
    with pytest.raises(UserError, match=rf"Unknown key 'defenses\.{name}\.no_such_key'.*Known keys:"):
        DEFENSES.get(name).from_settings({"no_such_key": 1})


@pytest.mark.parametrize("name", DEFENSES.names())
@pytest.mark.parametrize(("key", "value", "allowed"), [("epochs", 0, "[1, 10000]"), ("lr", 0.0, "(0.0, 1.0]"),
                                                       ("batch_size", 1, "[2, 1000000]")])
def test_recipe_overrides_are_range_checked(name, key, value, allowed):
    cls = DEFENSES.get(name)
    if key not in {field.name for field in dataclasses.fields(cls.Config)}:
        pytest.skip(f"{name} has no {key} setting")
    with pytest.raises(UserError) as info:
        cls.from_settings({key: value})
    assert str(info.value) == f"defenses.{name}: {key} = {value!r} is out of range; allowed: {allowed}"
