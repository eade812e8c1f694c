"""One generic registry for every kind of pluggable component (attacks, defenses).

Everything registers one way, built-in or plugin: the :meth:`Registry.register` decorator on the class (an
entry point or a ``module:Class`` plugin is added as the class it names; see :mod:`benchmark.plugins`). A
registry's built-ins are the modules of one package (``attacks``, ``defenses``), imported on the registry's first
use, so importing the package, ``--help`` and the torch-free leaderboard import no attack or defense code.
Unknown names fail with a did-you-mean and the list of what exists.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
import re
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from benchmark.errors import UserError, did_you_mean

T = TypeVar("T")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


@dataclass
class Entry(Generic[T]):
    """A registered name: either a loaded class or a lazy ``module:Class`` reference, and where it came from."""

    name: str
    source: str
    target: type[T] | str

    def load(self) -> type[T]:
        if isinstance(self.target, str):
            self.target = import_object(self.target)
        return self.target


def import_object(reference: str) -> type:
    """Import ``"package.module:Attr"`` and return the attribute."""
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise UserError(f"'{reference}' is not of the form 'module:Class'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"module '{module_name}' has no attribute '{attr}'") from None


class Registry(Generic[T]):
    """Names to classes for one kind of component (``kind`` is used in messages, e.g. "attack")."""

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind = kind
        self.builtins = builtins  # the package whose modules define the built-ins (each registers itself)
        self._entries: dict[str, Entry[T]] = {}
        self._builtins_loaded = builtins is None

    def _load_builtins(self) -> None:
        """Import every module of the built-ins' package (but ``base``) once; each registers its class."""
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        try:
            package = importlib.import_module(self.builtins)
            for module in pkgutil.iter_modules(package.__path__):
                if module.name != "base" and not module.name.startswith("_"):
                    importlib.import_module(f"{self.builtins}.{module.name}")
        except BaseException:
            self._builtins_loaded = False
            raise

    def unregister(self, name: str) -> None:
        """Forget ``name`` if registered (tests and notebooks that load a plugin file more than once)."""
        self._load_builtins()
        self._entries.pop(name, None)

    def register(self, name: str | None = None, *, source: str | None = None) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@ATTACKS.register()`` registers under the class's ``name`` attribute."""

        def decorator(cls: type[T]) -> type[T]:
            self.add(name or getattr(cls, "name"), cls, source=source or describe_origin(cls))
            return cls

        return decorator

    def add(self, name: str, target: type[T] | str, *, source: str = "built-in") -> None:
        """Register ``target`` (a class or a lazy ``module:Class`` string) under ``name``."""
        check_name(self.kind, name, source)
        if source != "built-in":  # a plugin may not take a built-in's name (built-ins are loading themselves)
            self._load_builtins()
        existing = self._entries.get(name)
        if existing is not None and not _same_target(existing, target):
            raise UserError(
                f"{self.kind} '{name}' is already registered (from {existing.source}); "
                f"cannot register it again from {source}"
            )
        if existing is None or isinstance(existing.target, str):
            self._entries[name] = Entry(name, existing.source if existing else source, target)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``, or a :class:`UserError` that suggests close names."""
        self._load_builtins()
        entry = self._entries.get(name)
        if entry is None:
            raise UserError(self.unknown_message(name))
        return entry.load()

    def unknown_message(self, name: str) -> str:
        self._load_builtins()
        names = sorted(self._entries)
        return f"Unknown {self.kind} '{name}'.{did_you_mean(name, names)} Available: {', '.join(names) or '(none)'}."

    def source(self, name: str) -> str:
        self._load_builtins()
        return self._entries[name].source

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        self._load_builtins()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def resolve(self, spec: str) -> list[str]:
        """Turn a comma-separated selection (``"badnet,wanet"`` or ``"all"``) into checked names."""
        requested = [part.strip() for part in spec.split(",") if part.strip()]
        if not requested:
            raise UserError(f"no {self.kind} named: give a comma-separated list or 'all'")
        if requested == ["all"]:
            return self.names()
        for name in requested:
            self.get(name)
        return list(dict.fromkeys(requested))

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def check_name(kind: str, name: object, source: str) -> None:
    """Refuse a name that is not a plain word. Names end up in results files, HTML, log lines and the commands
    users copy; one with path syntax (``../evil``, ``/tmp/x``) is stopped here, so no code that ever builds a
    path from a name can be led outside the output folder."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise UserError(f"{kind} name {name!r} from {source} is not allowed: use letters, digits and - _ . + "
                        "(at most 64, no '..')")


def describe_origin(cls: type) -> str:
    """"built-in" for cleanbench's own classes, else the file the class was defined in."""
    module = sys.modules.get(cls.__module__)
    path = Path(getattr(module, "__file__", "") or "").resolve()
    if path.is_relative_to(_PACKAGE_ROOT) and path.parts[len(_PACKAGE_ROOT.parts)] in ("attacks", "defenses", "benchmark"):
        return "built-in"
    return f"file '{path}'" if path.name else f"module '{cls.__module__}'"


def _same_target(entry: Entry, target: object) -> bool:
    """Re-registering the same class (a module imported twice, a lazy string being resolved) is harmless."""
    if entry.target is target:
        return True
    if isinstance(entry.target, str) and isinstance(target, type):
        return entry.target == f"{target.__module__}:{target.__qualname__}"
    return False
