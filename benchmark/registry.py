"""One generic registry for every kind of pluggable component (attacks, defenses).

Everything registers one way, built-in or plugin: the :meth:`Registry.register` decorator on the class (an
entry point or a ``module:Class`` plugin is added as the class it names; see :mod:`benchmark.plugins`). A
registry's built-ins are the modules of one package (``attacks``, ``defenses``), imported on the registry's first
use, so importing the package, ``--help`` and the torch-free leaderboard import no attack or defense code.
Unknown names fail with a did-you-mean and the list of what exists.

A registry checks what it is given at registration, as lm-evaluation-harness's ``Registry(name, base_cls=...)``
does: a class that does not derive from the kind's contract (``base_cls``, given lazily as ``"module:Class"`` so
that importing the registry imports no contract code), that is abstract, or that the kind's ``check`` refuses (a
defense's stage) is refused there, in one line, not when a grid cell first builds it.

Selections (``--attacks``, ``--defenses``, ``cleanbench list``) are comma-separated names, shell wildcards
(``detect-*``), ``all`` and exclusions (``all,-badclip``): :func:`select`.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, Sequence, TypeVar

from benchmark.errors import UserError, did_you_mean
from benchmark.names import check_name

T = TypeVar("T")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_WILDCARD = re.compile(r"[*?\[]")  # no registered name has these (NAME_PATTERN), so an item with one is a pattern


@dataclass
class Entry(Generic[T]):
    """A registered name: either a loaded class or a lazy ``module:Class`` reference, and where it came from."""

    name: str
    source: str
    target: type[T] | str


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

    def __init__(self, kind: str, builtins: str | None = None, *, base_cls: type | str | None = None,
                 check: Callable[[type], str | None] | None = None) -> None:
        self.kind = kind
        self.builtins = builtins  # the package whose modules define the built-ins (each registers itself)
        self.base_cls = base_cls  # the contract every class derives from: a class or a lazy "module:Class"
        self.check = check  # a further contract: the problem with a class in a few words, or None
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
            self.add(name or getattr(cls, "name", None), cls, source=source or describe_origin(cls))
            return cls

        return decorator

    def add(self, name: str, target: type[T] | str, *, source: str = "built-in") -> None:
        """Register ``target`` (a class or a lazy ``module:Class`` string) under ``name``."""
        if not isinstance(target, str):  # a lazy "module:Class" is checked when it is loaded (get)
            self._check_contract(name, target, source)  # first: a class of another kind may have no name at all
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
        if isinstance(entry.target, str):  # a lazy "module:Class": checked as it is loaded, as a class is when added
            cls = import_object(entry.target)
            self._check_contract(name, cls, entry.source)
            entry.target = cls
        return entry.target

    def _check_contract(self, name: str, cls: type, source: str) -> None:
        """Refuse, in one line, a class that is not of this kind: not derived from ``base_cls``, abstract, or
        refused by ``check``."""
        problem = None
        if self.base_cls is not None:
            if isinstance(self.base_cls, str):
                self.base_cls = import_object(self.base_cls)
            if not (isinstance(cls, type) and issubclass(cls, self.base_cls)):
                problem = f"{_describe(cls)} does not derive from {_dotted(self.base_cls)}"
        if problem is None and inspect.isabstract(cls):
            missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
            problem = f"{_describe(cls)} is abstract (it does not implement {missing})"
        if problem is None and self.check is not None:
            problem = self.check(cls)
        if problem is not None:
            raise UserError(f"{self.kind} '{name}' from {source}: {problem}")

    def unknown_message(self, name: str) -> str:
        self._load_builtins()
        return unknown_message(self.kind, name, sorted(self._entries))

    def source(self, name: str) -> str:
        self._load_builtins()
        return self._entries[name].source

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        self._load_builtins()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def resolve(self, spec: str) -> list[str]:
        """Turn a selection into checked names: comma-separated names, wildcards and ``all``, then exclusions
        (``"badnet,wanet"``, ``"detect-*"``, ``"all,-badclip"``; see :func:`select`). A name given plainly is
        loaded, so a plugin that fails to load is reported here."""
        chosen = select(spec, self.names(), self.kind)
        for item in _items(spec):
            if item in chosen:
                self.get(item)
        return chosen

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def select(spec: str, available: Sequence[str], kind: str) -> list[str]:
    """The names of ``available`` that the selection ``spec`` chooses. Its comma-separated items are names,
    shell wildcards (``detect-*``) and ``all``, taken in the order given (a wildcard's matches in the order of
    ``available``), then exclusions ``-NAME`` or ``-PATTERN``; a selection of exclusions only starts from all.
    An item that matches nothing, or a selection that leaves nothing, is a :class:`UserError` naming what exists."""
    items = _items(spec)
    if not items:
        raise UserError(f"no {kind} named: give a comma-separated list of names or wildcards, or 'all'")
    included = [item for item in items if not item.startswith("-")]
    excluded = [item[1:].strip() for item in items if item.startswith("-")]
    chosen: list[str] = []
    for item in included or ["all"]:
        chosen += _matches(item, available, kind)
    dropped = {name for item in excluded for name in _matches(item, available, kind, excluding=True)}
    chosen = [name for name in dict.fromkeys(chosen) if name not in dropped]
    if not chosen:
        raise UserError(f"'{spec}' selects no {kind}. Available: {', '.join(available) or '(none)'}.")
    return chosen


def _items(spec: str) -> list[str]:
    return [item.strip() for item in spec.split(",") if item.strip()]


def _matches(item: str, available: Sequence[str], kind: str, *, excluding: bool = False) -> list[str]:
    if item == "all":
        return list(available)
    if _WILDCARD.search(item):
        found = [name for name in available if fnmatch.fnmatchcase(name, item)]
        if not found:
            shown = f"-{item}" if excluding else item
            raise UserError(f"no {kind} matches '{shown}'. Available: {', '.join(available) or '(none)'}.")
        return found
    if item not in available:
        raise UserError(unknown_message(kind, item, available))
    return [item]


def unknown_message(kind: str, name: str, names: Sequence[str]) -> str:
    """"Unknown attack 'x'." with a did-you-mean and the list of ``names``."""
    return f"Unknown {kind} '{name}'.{did_you_mean(name, names)} Available: {', '.join(names) or '(none)'}."


def describe_origin(cls: type) -> str:
    """"built-in" for cleanbench's own classes, else the file the class was defined in."""
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    if not file:  # defined in __main__ of ``python -c``, a notebook, an interactive session
        return f"module '{cls.__module__}'"
    path = Path(file).resolve()
    if path.is_relative_to(_PACKAGE_ROOT) and path.parts[len(_PACKAGE_ROOT.parts)] in ("attacks", "defenses", "benchmark"):
        return "built-in"
    return f"file '{path}'"


def _describe(cls: object) -> str:
    return f"class {cls.__name__}" if isinstance(cls, type) else f"{cls!r} (not a class)"


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _same_target(entry: Entry, target: object) -> bool:
    """Re-registering the same class (a module imported twice, a lazy string being resolved) is harmless."""
    if entry.target is target:
        return True
    if isinstance(entry.target, str) and isinstance(target, type):
        return entry.target == f"{target.__module__}:{target.__qualname__}"
    return False
