"""One table of what moved, so that plugins written against an old import path keep working, with a
:class:`DeprecationWarning` that names the new one (as timm's ``register_model_deprecations`` keeps old model
names). Nothing else in the project keeps an old path alive: a move is one entry here.

* :data:`MOVED_MODULES`: a module that is gone, and the module that now holds all it held. A finder on
  ``sys.meta_path`` (installed when :mod:`benchmark` is imported, which every import of the engine does first)
  answers the old name with the new module.
* :data:`MOVED_NAMES`: a name a module no longer defines, and where it lives now (``"module:attr"``). The module
  that lost it sets ``__getattr__ = moved_names(__name__)``.

No registered attack or defense has been renamed: names in results rows and presets are the names the registries
hold. A renamed component would be a ``Registry`` matter (its rows would keep the old name), not an import one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any, Callable

MOVED_MODULES: dict[str, str] = {
    "benchmark.data.streaming_batches": "benchmark.data.batches",
    "defenses.cleanclip.augment": "benchmark.augment.image",
    "defenses.cleanclip.text_augment": "benchmark.augment.text",
}

MOVED_NAMES: dict[str, dict[str, str]] = {
    "benchmark.training": {
        "Normalizer": "benchmark.data.batches:Normalizer",
        "PairBatches": "benchmark.data.batches:PairBatches",
    },
    "defenses.cleanclip": {
        "CleanCLIPBatches": "benchmark.augment.views:AugmentedPairBatches",
        "AugmentedViews": "benchmark.augment.views:AugmentedViews",
        "auto_augment": "benchmark.augment.image:auto_augment",
        "cleanclip_loss": "benchmark.training:clip_ssl_loss",
        "self_supervised_loss": "benchmark.training:self_supervised_loss",
    },
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} has moved to {new}; the old path will be removed", DeprecationWarning, stacklevel=3)


def moved_names(module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` that answers the names :data:`MOVED_NAMES` lists for ``module`` from their new place."""
    moved = MOVED_NAMES[module]

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, _, attr = moved[name].partition(":")
        _warn(f"{module}.{name}", f"{new_module}.{attr}")
        return getattr(importlib.import_module(new_module), attr)

    return __getattr__


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name of :data:`MOVED_MODULES` as the new module (the same module object)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        _warn(spec.name, MOVED_MODULES[spec.name])
        module = importlib.import_module(MOVED_MODULES[spec.name])
        self._spec = module.__spec__  # importlib sets the old name's spec on it next; exec_module puts it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The new module is already executed: only its own spec is restored."""
        module.__spec__ = self._spec


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
