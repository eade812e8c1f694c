"""Where a result came from: the cleanbench checkout's git commit, and for each attack and defense the package
that provided it, that package's version and a hash of its source.

A row that names only ``defense = mydef`` and a version number cannot tell two labs' ``mydef`` apart, nor tell
whether the code changed since; the source hash can. What counts as a component's source:

* a built-in: its module (a single file, or every ``.py`` file of its folder when it is a package such as
  ``defenses/cleanclip/``); the package is ``cleanbench``;
* a plugin from an installed package (an entry point, or ``--plugin module:Class``): every ``.py`` file of its
  top-level import package (its helpers count too); the package is the distribution that installs it, if any;
* a plugin file (``--plugin path/to/file.py``): that file; no package.

:func:`source_hash` is what ``cleanbench submit`` stores with a bundle and ``verify`` checks again.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from benchmark import __version__

PLUGIN_FILE_PREFIX = "cleanbench_plugin_"  # module names of --plugin files (benchmark.plugins)
_SKIPPED_DIRS = ("__pycache__",)


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the source tree cleanbench runs from ("" for an installed wheel or no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@dataclass(frozen=True)
class Origin:
    """Where one attack or defense class came from: ``kind`` is ``built-in``, ``package`` (installed or
    importable module) or ``file``; ``files`` are its source files relative to ``root``, hashed as ``sha256``."""

    kind: str  # "module" for a class defined interactively, which has no source file to hash
    package: str  # distribution name ("cleanbench" for built-ins; "" when no distribution installs it)
    version: str  # that distribution's version
    module: str  # the module that defines the class
    qualname: str  # the class within it
    root: Path
    files: tuple[str, ...]
    sha256: str

    def label(self) -> str:
        """How ``cleanbench list`` shows it: ``built-in``, ``package NAME VERSION`` or the file's path."""
        if self.kind == "built-in":
            return "built-in"
        if self.kind == "file":
            return str(self.root / self.files[0])
        return f"package {self.package} {self.version}" if self.package else f"module {self.module}"

    def columns(self, prefix: str) -> dict[str, str]:
        """The row's provenance columns for this component (``attack`` or ``defense``)."""
        return {f"{prefix}_package": self.package, f"{prefix}_package_version": self.version,
                f"{prefix}_source_sha256": self.sha256}


@functools.cache
def origin_of(cls: type) -> Origin:
    """The :class:`Origin` of an attack or defense class (cached: classes do not change while a process runs)."""
    module = sys.modules.get(cls.__module__)
    if not Path(getattr(module, "__file__", None) or "").is_file():  # defined interactively: no source to hash
        return Origin("module", "", "", cls.__module__, cls.__qualname__, Path("."), (), "")
    path = Path(module.__file__).resolve()
    if _is_builtin(path):
        root, files = _module_files(path)
        return _origin("built-in", "cleanbench", __version__, cls, root, files)
    if cls.__module__.startswith(PLUGIN_FILE_PREFIX):
        return _origin("file", "", "", cls, path.parent, (path.name,))
    top = sys.modules.get(cls.__module__.partition(".")[0], module)
    top_file = getattr(top, "__file__", None) or module.__file__  # a namespace package has no file of its own
    root, files = _module_files(Path(top_file).resolve())
    package = _distribution(top.__name__)
    return _origin("package", package, _version(package), cls, root, files)


def source_hash(root: Path, files: tuple[str, ...] | list[str]) -> str:
    """SHA-256 over the relative paths and contents of ``files`` under ``root`` (order does not matter)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256((Path(root) / name).read_bytes()).digest())
    return digest.hexdigest()


def _origin(kind: str, package: str, version: str, cls: type, root: Path, files: tuple[str, ...]) -> Origin:
    return Origin(kind, package, version, cls.__module__, cls.__qualname__, root, files, source_hash(root, files))


def _module_files(path: Path) -> tuple[Path, tuple[str, ...]]:
    """A module's source: the file, or for a package (``__init__.py``) every ``.py`` file under its folder."""
    if path.name != "__init__.py":
        return path.parent, (path.name,)
    folder = path.parent
    files = sorted(str(file.relative_to(folder.parent)) for file in folder.rglob("*.py")
                   if not any(part in _SKIPPED_DIRS for part in file.relative_to(folder).parts))
    return folder.parent, tuple(files)


def _is_builtin(path: Path) -> bool:
    repo = Path(__file__).resolve().parent.parent
    return path.is_relative_to(repo) and path.relative_to(repo).parts[0] in ("attacks", "defenses", "benchmark")


@functools.cache
def _distribution(top_level: str) -> str:
    """The installed distribution that provides the import package ``top_level`` ("" if none does)."""
    names = metadata.packages_distributions().get(top_level, [])
    return names[0] if names else ""


def _version(package: str) -> str:
    if not package:
        return ""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""
