"""``cleanbench new attack|defense NAME``: a plugin package that installs and passes its own test as written.

The package (``NAME/``) holds ``pyproject.toml`` with the entry point, the module (``NAME_WITH_UNDERSCORES/
__init__.py``: a working minimal attack or defense that imports only :mod:`cleanbench`), a README and a test that
runs the conformance suite. The files come from ``benchmark/templates/*.tmpl`` (``string.Template``: the
templates hold Python and TOML, whose braces ``str.format`` would trip over).

A bad name, a taken name or an existing folder is a :class:`UserError` before anything is written; the package
is written into a temporary folder beside the target and renamed into place, so it appears whole or not at all.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from string import Template

from attacks import ATTACKS
from benchmark.errors import UserError
from benchmark.plugins import load_entry_points
from benchmark.registry import check_name
from defenses import DEFENSES

KINDS = ("attack", "defense")
TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class PluginNames:
    """The names one plugin goes by: registered and distribution ``name``, Python ``module``, class ``cls``."""

    kind: str
    name: str
    module: str
    cls: str

    @classmethod
    def parse(cls, kind: str, name: str) -> "PluginNames":
        """Check ``kind`` and ``name`` (a registry name whose dashes-to-underscores form is a new module name)."""
        if kind not in KINDS:
            raise UserError(f"cannot make a {kind!r}; choose one of: {', '.join(KINDS)}")
        check_name(kind, name, "the command line")
        module = name.replace("-", "_")
        if not module.isidentifier() or keyword.iskeyword(module) or not module.isascii():
            raise UserError(f"{kind} name {name!r} does not make a Python module name ({module!r}): use letters, "
                            "digits, - and _, starting with a letter")
        if importlib.util.find_spec(module) is not None:
            raise UserError(f"a module named {module!r} already exists in this environment; choose another name")
        return cls(kind, name, module, "".join(part[:1].upper() + part[1:] for part in module.split("_") if part))


def new_plugin(kind: str, name: str, parent: Path) -> Path:
    """Write the plugin package ``parent/name`` and return its folder."""
    names = PluginNames.parse(kind, name)
    _refuse_taken(names)
    parent = Path(parent)
    folder = parent / names.name
    if folder.exists():
        raise UserError(f"{folder} already exists; choose another name or --dir")
    if not parent.is_dir():
        raise UserError(f"--dir {parent} is not a folder")
    files = render(names)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{names.name}-", dir=parent))
    except OSError as error:
        raise UserError(f"--dir {parent} cannot be written: {error.strerror or error}") from None
    staging.chmod(0o777 & ~_umask())  # mkdtemp's folder is private; the package is an ordinary folder
    try:
        for relative, text in files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(text)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def render(names: PluginNames) -> dict[str, str]:
    """The package's files (relative path -> text)."""
    run = (f"cleanbench run --attacks badnet --defenses none,{names.name}" if names.kind == "defense"
           else f"cleanbench run --attacks {names.name} --defenses none")
    values = {"kind": names.kind, "name": names.name, "module": names.module, "cls": names.cls,
              "title": names.cls, "cleanbench_version": _cleanbench_version(), "run_example": run}

    def fill(template: str) -> str:
        return Template((TEMPLATES / template).read_text()).substitute(values)

    return {"pyproject.toml": fill("pyproject.toml.tmpl"), "README.md": fill("README.md.tmpl"),
            f"{names.module}/__init__.py": fill(f"{names.kind}.py.tmpl"),
            f"tests/test_{names.module}.py": fill("test_plugin.py.tmpl")}


def _refuse_taken(names: PluginNames) -> None:
    """A name already registered (built-in or installed) would clash with it at load time."""
    load_entry_points()  # installed plugins' names count too (one that fails to load has none to clash with)
    for registry in (ATTACKS, DEFENSES):
        if names.name in registry:
            raise UserError(f"{registry.kind} '{names.name}' already exists ({registry.source(names.name)}); "
                            "choose another name")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cleanbench_version() -> str:
    try:
        return metadata.version("cleanbench")
    except metadata.PackageNotFoundError:  # a source checkout that was never installed
        return "0"
