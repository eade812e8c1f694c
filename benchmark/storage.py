"""Crash-safe file writes and content-hashed keys: a kill at any point never leaves a partial file in place."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from benchmark.errors import UserError
from benchmark.faults import failpoint

TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        failpoint(f"before-rename:{path.name}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(root: Path) -> int:
    """Delete the temporary files of :func:`atomic_path` under ``root`` left by killed processes; returns how many.

    A SIGKILL skips the ``finally`` that removes them; they are never read (only a completed rename publishes a
    file), so they are only clutter. A temporary file of a process that is still alive is left alone.
    """
    removed = 0
    for tmp in Path(root).rglob(f".*{TEMP_SUFFIX}"):
        pid = tmp.name.removesuffix(TEMP_SUFFIX).rpartition(".")[2]
        if tmp.is_file() and pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True


def check_output_folder(folder: Path, option: str = "--out") -> None:
    """Refuse an output folder the run could not write, before any work: a file, or a path whose nearest
    existing folder does not take new entries (procfs, a read-only mount, no permission). Nothing is left behind:
    a probe folder is made in that nearest existing folder and removed at once."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder} is a file; give a folder (it is created if missing)")
    existing = next(parent for parent in (folder, *folder.absolute().parents) if parent.exists())
    if not existing.is_dir():
        raise UserError(f"{option} {folder} cannot be created: {existing} is a file")
    try:
        probe = tempfile.mkdtemp(prefix=".cleanbench-probe-", dir=existing)
    except OSError as error:
        raise UserError(f"{option} {folder} cannot be written: {existing} does not take new files "
                        f"({error.strerror or error}); choose another folder") from None
    os.rmdir(probe)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts: the cache key of an artifact."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
