"""Sweeps: one setting of the preset varied over a list of values, each swept key a grid axis.

``--sweep KEY=V1,V2,...`` (repeatable) on ``run`` and ``validate``, or a preset's ``[sweep]`` table
(``"defenses.cleanclip.inmodal_weight" = [0, 0.5, 1, 2, 4, 8]``), names a setting in the preset's own dotted form:
``data.KEY``, ``victim.KEY``, ``finetune.KEY``, ``detection.KEY``, ``pretrain.KEY``, ``attacks.NAME.KEY`` or
``defenses.NAME.KEY``. Several swept keys give their cartesian product. Each point of the sweep is the preset
with those values set, checked like the preset itself (an unknown key or a value out of range is one line before
anything runs), planned and run on its own into the same output folder. Artifacts are keyed by content, so
whatever a point does not change is shared with the other points: a sweep over a defense's setting trains no
victim beyond the plain grid's, and evaluates the other defenses' cells once.

Rows record their point in the ``sweep`` column; the leaderboard keeps every point apart as its own setting
(``fmnist-tiny [defenses.cleanclip.inmodal_weight=2]``) and draws each swept key's curves.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import typing
from dataclasses import dataclass
from typing import Any

from benchmark.config import coerce_value
from benchmark.errors import UserError, did_you_mean
from benchmark.presets import Preset, SweepAxis
from benchmark.results import sweep_label

SWEEPABLE = ("data", "victim", "finetune", "detection", "attacks", "defenses", "pretrain")


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: the swept keys' values, and the preset with them set."""

    values: tuple[tuple[str, Any], ...]
    preset: Preset

    @property
    def label(self) -> str:
        """The point as rows and pages name it: ``key=value`` pairs joined by ``, `` (empty: no sweep)."""
        return sweep_label(dict(self.values))


def parse_sweep_option(text: str) -> SweepAxis:
    """``KEY=V1,V2,...`` as an axis; each value is read as a TOML value (``2``, ``0.5``, ``true``, ``"x"``),
    else as text."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise UserError(f"--sweep {text!r}: expected KEY=V1,V2,... e.g. --sweep defenses.cleanclip.inmodal_weight=0,1,2")
    return SweepAxis(key, tuple(_value(item.strip()) for item in values.split(",")))


def _value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def axes_of(preset: Preset, options: list[str] | tuple[str, ...] = ()) -> list[SweepAxis]:
    """The preset's declared sweeps, with the ``--sweep`` options added (an option replaces a declared key)."""
    axes = {axis.key: axis for axis in preset.sweeps}
    for axis in map(parse_sweep_option, options):
        axes[axis.key] = axis
    for axis in axes.values():
        if not axis.values:
            raise UserError(f"sweep {axis.key}: no values")
        if len(set(map(repr, axis.values))) != len(axis.values):
            raise UserError(f"sweep {axis.key}: a value is listed twice ({', '.join(map(repr, axis.values))})")
    return list(axes.values())


def sweep_points(preset: Preset, axes: list[SweepAxis]) -> list[SweepPoint]:
    """Every point of the sweep (the cartesian product of the axes), each preset checked; no axes: the preset."""
    if not axes:
        return [SweepPoint((), preset)]
    points = []
    for combination in itertools.product(*(axis.values for axis in axes)):
        values = tuple(zip((axis.key for axis in axes), combination))
        point = preset
        for key, value in values:
            point = with_setting(point, key, value)
        points.append(SweepPoint(values, point))
    return points


def with_setting(preset: Preset, key: str, value: Any) -> Preset:
    """``preset`` with the dotted ``key`` set to ``value``, checked as the preset file's value would be."""
    section, _, rest = key.partition(".")
    if section not in SWEEPABLE or not rest:
        hint = did_you_mean(section, SWEEPABLE, n=1, cutoff=0.6)
        sections = ", ".join(f"{name}.KEY" for name in SWEEPABLE if name not in ("attacks", "defenses"))
        raise UserError(f"sweep key {key!r}: expected one of {sections}, attacks.NAME.KEY or defenses.NAME.KEY.{hint}")
    if section in ("attacks", "defenses"):
        name, _, field = rest.partition(".")
        if not field or "." in field:
            raise UserError(f"sweep key {key!r}: expected {section}.NAME.KEY, e.g. {section}.{name or 'NAME'}.KEY")
        from attacks import ATTACKS
        from defenses import DEFENSES

        (ATTACKS if section == "attacks" else DEFENSES).get(name)  # an unknown name: the did-you-mean message
        tables = {k: dict(v) for k, v in getattr(preset, section).items()}
        tables.setdefault(name, {})[field] = value
        return dataclasses.replace(preset, **{section: tables})  # the key and value are checked when planned
    if "." in rest:
        raise UserError(f"sweep key {key!r}: expected {section}.KEY (a nested table cannot be swept)")
    spec = getattr(preset, section)
    fields = {f.name for f in dataclasses.fields(spec)}
    if rest not in fields:
        raise UserError(f"Unknown key '{key}'.{did_you_mean(rest, fields, n=1, cutoff=0.6)} "
                        f"Known keys: {', '.join(sorted(fields))}.")
    hint = typing.get_type_hints(type(spec))[rest]
    try:
        replaced = dataclasses.replace(spec, **{rest: coerce_value(value, hint, key)})
        return dataclasses.replace(preset, **{section: replaced})  # checks how the victim starts (Preset)
    except UserError as error:
        raise UserError(f"sweep {key}={value!r}: {error}") from None
