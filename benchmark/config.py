"""Frozen-dataclass configs built from plain dicts (TOML tables, CLI overrides) with loud, specific errors.

An unknown key names the keys that exist; a wrong type or out-of-range value names the key, the value and
what is allowed. Range checks live in each config's ``__post_init__`` via :func:`check_range`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from benchmark.errors import UserError, did_you_mean

C = TypeVar("C")


def build_config(cls: type[C], values: dict[str, Any] | None, where: str) -> C:
    """Instantiate dataclass ``cls`` from ``values``; ``where`` names the place in messages ("preset.victim")."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            hint = did_you_mean(key, fields, n=1, cutoff=0.6)
            raise UserError(f"Unknown key '{where}.{key}'.{hint} Known keys: {', '.join(sorted(fields))}.")
    hints = typing.get_type_hints(cls)
    converted = {key: coerce_value(value, hints[key], f"{where}.{key}") for key, value in values.items()}
    try:
        return cls(**converted)
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    except TypeError as error:
        raise UserError(f"{where}: {error}") from None


def coerce_value(value: Any, hint: Any, key: str) -> Any:
    """Accept TOML/JSON/CLI values for simple annotated types, refusing anything that would silently change meaning;
    ``key`` names the setting in messages."""
    if dataclasses.is_dataclass(hint):  # a nested table, e.g. [data.train]
        if not isinstance(value, dict):
            raise UserError(f"{key} must be a table, got {value!r}")
        return build_config(hint, value, key)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None:
            return None
        return coerce_value(value, options[0], key)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise UserError(f"{key} = {value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list, got {value!r}")
        inner = typing.get_args(hint)[0]
        return tuple(coerce_value(item, inner, key) for item in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{key} must be a string, got {value!r}")
        return value
    return value


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                *, low_inclusive: bool = True, high_inclusive: bool = True) -> None:
    """Raise a :class:`UserError` naming ``name`` unless ``value`` lies in the given range."""
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise UserError(f"{name} = {value!r} is out of range; allowed: {span}")


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-ready dict (for cache keys and result provenance)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
