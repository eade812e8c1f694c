"""Finding third-party attacks and defenses: installed packages (entry points) and local files or modules.

* An installed package declares, in its own pyproject::

      [project.entry-points."cleanbench.defenses"]
      mydef = "mypkg.module:MyDefense"

* ``--plugin path/to/file.py`` imports a file whose classes register themselves with ``@DEFENSES.register()``
  (or ``@ATTACKS.register()``); ``--plugin package.module:Class`` registers one class by its base type.

An autoloaded entry point that fails to load is reported with its name, package and error and the tool carries
on without it (as pytest does): the user did not ask for it. A plugin the user names (``--plugin``, ``cleanbench
check``) must load, or the command stops with a :class:`UserError` before any work: a run without the plugin it was
asked for would only waste the time it takes. ``CLEANBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` turns autoloading off.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Sequence

from attacks import ATTACKS
from benchmark.errors import UserError
from benchmark.registry import Registry, import_object
from defenses import DEFENSES

GROUPS: dict[str, Registry] = {"cleanbench.attacks": ATTACKS, "cleanbench.defenses": DEFENSES}
AUTOLOAD_ENV = "CLEANBENCH_DISABLE_PLUGIN_AUTOLOAD"
_LOADER_FILES = ("<", sysconfig.get_paths()["stdlib"], str(Path(__file__).parent))  # import machinery, registry


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


def register_plugins(specs: Sequence[str] = (), no_autoload: bool = False) -> list[PluginFailure]:
    """Register the entry-point plugins (unless ``no_autoload``) and the given plugin files or ``module:Class``
    specs; returns the failure of each entry point that failed (the others are registered), for the caller to
    report. A named spec that fails raises a :class:`UserError` (:func:`load_plugin`). The CLI process, a Python
    caller of :func:`benchmark.api.run_grid` and every worker process load their plugins through this one call."""
    failures = [] if no_autoload else load_entry_points()
    for spec in specs or ():
        load_plugin(spec)
    return failures


def load_plugin(spec: str) -> list[type]:
    """Load ``path/to/file.py`` or ``module:Class`` and return the classes it registered; a file or module that
    is missing or raises is a :class:`UserError` naming the plugin and the error."""
    if ":" in spec and not spec.endswith(".py") and not Path(spec).exists():
        return _guard(spec, lambda: [_register_class(spec)])
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"plugin file {spec} does not exist (give a .py file or 'module:Class')")
    return _guard(spec, lambda: _import_file(path))


def _guard(spec: str, load: Callable[[], list[type]]) -> list[type]:
    try:
        return load()
    except UserError:  # already names the plugin (a refused name, a missing attribute)
        raise
    except Exception as error:  # noqa: BLE001 - whatever a plugin raises is reported in one line
        raise UserError(f"plugin {spec} failed to load: {describe_error(error)}") from None


def _failure(name: str, origin: str, error: BaseException) -> PluginFailure:
    return PluginFailure(name, origin, describe_error(error))


def describe_error(error: BaseException) -> str:
    """The error in one line, with the file and line it was raised at."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)  # the plugin's, not the loader's
              if not frame.filename.startswith(_LOADER_FILES)]
    at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{at}"


def _import_file(path: Path) -> list[type]:
    module_name = f"cleanbench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    found = []
    for registry, base in _bases():  # classes the file defines, registered with the decorator or here
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module_name \
                    and getattr(obj, "name", None):
                if obj.name not in registry:
                    registry.add(obj.name, obj, source=f"file '{path}'")
                found.append(obj)
    return found


def _register_class(reference: str) -> type:
    cls = import_object(reference)
    for registry, base in _bases():
        if isinstance(cls, type) and issubclass(cls, base):
            registry.add(cls.name, cls, source=f"module '{reference.partition(':')[0]}'")
            return cls
    raise UserError(f"{reference} is neither an Attack nor a Defense subclass")


def _bases():
    from attacks.base import Attack
    from defenses.base import Defense

    return [(ATTACKS, Attack), (DEFENSES, Defense)]
