"""Making a preset with data sources concrete: ``${ENV}`` paths expanded, ``--data`` overrides applied, every
path checked, and the text side (class names, templates, target) filled in from the evaluation set.

Presets keep ``${CC3M_TRAIN_CSV}``-style paths so one file serves every cluster; they are expanded here, at run
(or ``validate``) time, never when a preset is merely listed. All problems are gathered and reported in one
error, so a user fixes every missing path in one go.
"""

from __future__ import annotations

import dataclasses
import os
import re

from benchmark.data.formats import open_source
from benchmark.errors import UserError
from benchmark.presets import Preset, SourceSpec, TextSpec, unknown_class_message

ROLES = ("train", "eval")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def apply_data_overrides(preset: Preset, overrides: list[str] | tuple[str, ...]) -> Preset:
    """Apply ``--data`` options: ``train=PATH``, ``eval=PATH`` or ``ROLE.KEY=VALUE`` (e.g. ``train.format=csv``).

    A role the preset lacks is created from the overrides, which must then name its ``format`` and ``path``.
    """
    from benchmark.config import build_config

    changes: dict[str, dict[str, str]] = {}
    for text in overrides:
        name, sep, value = text.partition("=")
        role, _, key = name.strip().partition(".")
        if not sep or role not in ROLES:
            raise UserError(f"--data {text!r}: use train=PATH, eval=PATH or ROLE.KEY=VALUE with ROLE train or eval")
        changes.setdefault(role, {})[key or "path"] = value.strip()
    data = preset.data
    for role, values in changes.items():
        current = getattr(data, role)
        merged = {**(dataclasses.asdict(current) if current else {}), **values}
        if "format" not in merged or "path" not in merged:
            raise UserError(f"preset {preset.name} has no data.{role}: give both --data {role}.format=FORMAT "
                            f"and --data {role}=PATH")
        data = dataclasses.replace(data, **{role: build_config(SourceSpec, merged, f"data.{role}")})
    return dataclasses.replace(preset, data=data)


def expand_path(path: str, where: str, problems: list[str]) -> str:
    """``path`` with ``${VAR}`` replaced and ``~`` expanded; an unset variable is added to ``problems``."""
    def substitute(match: re.Match) -> str:
        value = os.environ.get(match.group(1))
        if value is None:
            problems.append(f"{where}: environment variable {match.group(1)} is not set (or pass --data)")
            return match.group(0)
        return value

    return os.path.expanduser(_ENV.sub(substitute, path))


def missing_path(spec: SourceSpec) -> str | None:
    """Why ``spec.path`` cannot be used, or None. Hugging Face hub names are checked when they are loaded."""
    from benchmark.data.hf_pairs import looks_local
    from benchmark.data.webdataset_pairs import find_shards

    path = spec.path
    if not path:
        return "no path given"
    if spec.format == "csv" and not os.path.isfile(path):
        return f"{path} (CSV file) does not exist"
    if spec.format == "webdataset" and not find_shards(path):
        return f"{path} has no WebDataset shards (*.tar)"
    if spec.format in ("imagefolder", "imagenet") and not os.path.isdir(path):
        return f"{path} (image folder) does not exist"
    if spec.format == "hf" and looks_local(path) and not os.path.isdir(path):
        return f"{path} (save_to_disk folder) does not exist"
    return None


def resolve_preset(preset: Preset, overrides: list[str] | tuple[str, ...] = ()) -> Preset:
    """``preset`` ready to run: overrides applied, paths expanded and present, text filled from the eval set.

    A preset without sources (Fashion-MNIST) is returned as it is, after the overrides. Idempotent.
    """
    preset = apply_data_overrides(preset, overrides)
    data = preset.data
    if not data.uses_sources:
        return preset
    problems: list[str] = []
    specs = {}
    for role in ROLES:
        spec = getattr(data, role)
        spec = dataclasses.replace(spec, path=expand_path(spec.path, f"data.{role}.path", problems))
        if not _ENV.search(spec.path):
            reason = missing_path(spec)
            if reason:
                problems.append(f"data.{role}.path: {reason}")
        specs[role] = spec
    if problems:
        raise UserError(f"preset {preset.name}: {len(problems)} data problem(s): " + "; ".join(problems))
    preset = dataclasses.replace(preset, data=dataclasses.replace(data, **specs))
    return dataclasses.replace(preset, text=fill_text(preset.text, specs["eval"]))


def fill_text(text: TextSpec, eval_spec: SourceSpec) -> TextSpec:
    """Class names from the evaluation set; empty template and synonym lists get the defaults of ``TextSpec``."""
    source = open_source(eval_spec, "eval")
    classnames = source.classnames
    if text.classnames and tuple(text.classnames) != classnames:
        raise UserError(f"text.classnames ({len(text.classnames)}) differ from the {len(classnames)} classes of "
                        f"{eval_spec.path}; leave text.classnames out to use the evaluation set's")
    if text.target not in classnames:
        raise UserError(unknown_class_message(text.target, classnames))
    eval_templates = text.eval_templates or source.templates or ("a photo of a {}.",)
    return dataclasses.replace(
        text, classnames=classnames, eval_templates=eval_templates,
        caption_templates=text.caption_templates or eval_templates,
        synonyms=text.synonyms or tuple((name,) for name in classnames),
    )
