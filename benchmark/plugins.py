"""Finding third-party attacks and defenses: installed packages (entry points) and local files or modules.

* An installed package declares, in its own pyproject::

      [project.entry-points."cleanbench.defenses"]
      mydef = "mypkg.module:MyDefense"

* ``--plugin path/to/file.py`` imports a file whose classes register themselves with ``@DEFENSES.register()``
  (or ``@ATTACKS.register()``); ``--plugin package.module:Class`` registers one class by its base type.

A plugin that fails to load is reported with its name, package and error and the tool carries on without it
(as pytest does). ``CLEANBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` turns entry-point autoloading off.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Sequence

from attacks import ATTACKS
from benchmark.errors import UserError
from benchmark.registry import Registry, import_object
from defenses import DEFENSES

GROUPS: dict[str, Registry] = {"cleanbench.attacks": ATTACKS, "cleanbench.defenses": DEFENSES}
AUTOLOAD_ENV = "CLEANBENCH_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded: which one, from where, and why."""

    name: str
    origin: str
    error: str

    def message(self) -> str:
        return f"plugin '{self.name}' from {self.origin} failed to load and was skipped: {self.error}"


_autoloaded = False


def autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def load_entry_points(force: bool = False) -> list[PluginFailure]:
    """Register every class advertised in the ``cleanbench.*`` entry-point groups (once per process)."""
    global _autoloaded
    if (_autoloaded and not force) or autoload_disabled():
        return []
    _autoloaded = True
    failures = []
    for group, registry in GROUPS.items():
        for entry in entry_points(group=group):
            package = entry.dist.name if entry.dist is not None else "an unknown package"
            origin = f"package '{package}'"
            try:
                registry.add(entry.name, entry.load(), source=origin)
            except Exception as error:  # noqa: BLE001 - a broken plugin must not take the tool down
                failures.append(_failure(entry.name, origin, error))
    return failures


def load_plugins(specs: Sequence[str] = (), no_autoload: bool = False) -> list[PluginFailure]:
    """Load entry-point plugins (unless ``no_autoload``) and the given plugin files or ``module:Class`` specs;
    returns the failure of each one that failed (the others are registered). The CLI process and every worker
    process load their plugins through this one call."""
    failures = [] if no_autoload else load_entry_points()
    for spec in specs or ():
        failures += load_plugin(spec)
    return failures


def load_plugin(spec: str) -> list[PluginFailure]:
    """Load ``path/to/file.py`` or ``module:Class``; a missing file is a user error, a broken one a failure."""
    if ":" in spec and not spec.endswith(".py") and not Path(spec).exists():
        return _guard(spec, f"module '{spec.partition(':')[0]}'", lambda: _register_class(spec))
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"plugin file {spec} does not exist (give a .py file or 'module:Class')")
    return _guard(path.stem, f"file '{path}'", lambda: _import_file(path))


def _guard(name: str, origin: str, load) -> list[PluginFailure]:
    try:
        load()
        return []
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001
        return [_failure(name, origin, error)]


def _failure(name: str, origin: str, error: BaseException) -> PluginFailure:
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return PluginFailure(name, origin, f"{type(error).__name__}: {error}{at}")


def _import_file(path: Path) -> None:
    module_name = f"cleanbench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    for registry, base in _bases():  # classes the file defines but did not register with the decorator
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module_name \
                    and getattr(obj, "name", None) and obj.name not in registry:
                registry.add(obj.name, obj, source=f"file '{path}'")


def _register_class(reference: str) -> None:
    cls = import_object(reference)
    for registry, base in _bases():
        if isinstance(cls, type) and issubclass(cls, base):
            registry.add(cls.name, cls, source=f"module '{reference.partition(':')[0]}'")
            return
    raise UserError(f"{reference} is neither an Attack nor a Defense subclass")


def _bases():
    from attacks.base import Attack
    from defenses.base import Defense

    return [(ATTACKS, Attack), (DEFENSES, Defense)]
