"""Result bundles: one zip file that carries a defense's results to someone who did not run them.

``cleanbench submit`` writes one (:mod:`benchmark.submit`), ``cleanbench verify`` reruns some of its cells
(:mod:`benchmark.verify`) and ``cleanbench leaderboard`` reads it as an input. A bundle holds::

    manifest.json                        every other file with its size and SHA-256
    bundle.json                          what was submitted: defense, preset, attacks, seeds, versions, sources
    results.csv                          the defense's rows and the no-defense and benign-control rows they
                                         are compared with
    cache/cells/<key>/predictions.npz    per-image predictions, where the run kept them, in each row's cache
                                         folder (benchmark.cache_layout)
    preset.toml                          the preset the rows were run with
    source/<kind>/<name>/...             each attack's and the defense's source (benchmark.provenance)
    environment/pip-freeze.txt, environment/hardware.json

so an extracted bundle is laid out as a run's output folder and reads as one. Its rows must be cells its preset
plans as they are (:func:`plan_rows`, :func:`unplanned_rows`, checked by ``submit`` before writing and by ``verify`` before rerunning).

A bundle comes from someone else and is untrusted. :func:`open_bundle` is the one intake ``verify``,
``leaderboard`` and ``submit``'s own check share: :func:`extract_bundle` refuses, before anything is written outside
a fresh folder or run, a file that is not a readable zip, any path that could escape it (absolute, ``..``, links,
odd characters), duplicate or conflicting entries (a file and a folder of the same name, names differing only in
case), more than :data:`MAX_FILES` files or :data:`MAX_TOTAL_BYTES` bytes (counted while reading, not only as
declared), a manifest with a field missing, unknown or mistyped, a file the manifest does not list, lists twice or
lists but is missing, and any hash mismatch; then ``bundle.json`` must have every field, typed (names are names:
:mod:`benchmark.names`), the rows must pass the results schema as the leaderboard checks any results file
(:func:`check_rows`), and a source whose hash differs from the one its rows record is refused too. Each refusal is
one :class:`BundleError` line (exit 2 through the CLI), and the folder of a refused bundle is removed. Predictions
are read with ``allow_pickle=False`` (:mod:`benchmark.predictions`). Verifying still runs the plugin's code: that
is what a rerun is.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.errors import UserError
from benchmark.names import NAME_RULE, is_name
from benchmark.provenance import source_hash
from benchmark.results import BENIGN_ATTACK, RESULTS_FILE, ResultsFile
from benchmark.storage import atomic_path, sha256_file

if TYPE_CHECKING:
    from benchmark.presets import Preset
    from benchmark.runner.plan import Plan

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
META = "bundle.json"
PRESET = "preset.toml"
SOURCE_DIR = "source"
MAX_FILES = 2_000
MAX_TOTAL_BYTES = 256 << 20  # predictions of a 1M-image test set take ~4 MB a cell; 256 MiB is far above need
MAX_MANIFEST_BYTES = 4 << 20
RECORD_SUFFIX = ".verification.json"  # `verify` writes its record beside the bundle: BUNDLE.zip.verification.json
_SAFE_PART = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same content gives the same bundle bytes


class BundleError(UserError):
    """A bundle that is unsafe, damaged or altered: refused before anything in it is used or run."""


@dataclass(frozen=True)
class Bundle:
    """An extracted, checked bundle: its folder (laid out as a run folder), ``bundle.json`` and its file hash."""

    path: Path
    folder: Path
    meta: dict[str, Any]
    sha256: str

    @property
    def results(self) -> Path:
        return self.folder / RESULTS_FILE

    def source_dir(self, kind: str, name: str) -> Path:
        return self.folder / SOURCE_DIR / kind / name


def check_member_name(name: str) -> None:
    """Refuse a member path that is absolute, climbs out (``..``), uses backslashes or odd characters."""
    parts = name.split("/")
    if not name or len(name) > 512 or not all(_SAFE_PART.fullmatch(part) for part in parts):
        raise BundleError(f"unsafe path {name!r} in the bundle (absolute, '..', or characters other than letters, "
                          "digits and . _ + -): refused")


def write_bundle(path: Path, files: dict[str, bytes]) -> str:
    """Write ``files`` (bundle path → content) and their manifest to the zip ``path``; returns its SHA-256."""
    for name in files:
        check_member_name(name)
    manifest = {"format": FORMAT_VERSION,
                "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                          for name, data in sorted(files.items())}}
    path = Path(path)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in [*sorted(files.items()), (MANIFEST, json.dumps(manifest, indent=1).encode())]:
                info = zipfile.ZipInfo(name, _ZIP_DATE)
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                archive.writestr(info, data, zipfile.ZIP_DEFLATED)
    return sha256_file(path)


def open_bundle(path: Path, folder: Path) -> Bundle:
    """The one intake for an untrusted bundle, shared by ``verify``, ``leaderboard`` and ``submit``'s own check:
    the archive's structure (a readable zip, no duplicate or conflicting entries, safe paths, limits), its manifest's
    schema and every file's hash, extracted into the new folder ``folder`` (:func:`extract_bundle`); then
    ``bundle.json``'s schema, the rows through the results schema (:func:`check_rows`) and the sources against the
    hashes ``bundle.json`` and the rows record. Raises :class:`BundleError` (one line naming the file and field) on
    the first problem, and then removes ``folder``: nothing of a refused bundle is left."""
    path, folder = Path(path), Path(folder)
    existed = folder.exists()
    try:
        extract_bundle(path, folder)
        meta = _read_meta(path, folder)
        check_rows(path, folder)
        check_sources(folder, meta)
    except UserError:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return Bundle(path, folder, meta, sha256_file(path))


def check_bundle(path: Path) -> Bundle:
    """Open ``path`` through :func:`open_bundle` in a scratch folder removed afterwards (``submit``'s own check of
    what it wrote); returns the checked bundle (its folder no longer exists)."""
    with tempfile.TemporaryDirectory(prefix="cleanbench-bundle-") as scratch:
        return open_bundle(path, Path(scratch) / "bundle")


def extract_bundle(path: Path, folder: Path) -> dict[str, Any]:
    """Extract the zip ``path`` into ``folder`` (which must not exist yet), checking every member against the
    limits and the manifest; returns the manifest."""
    path, folder = Path(path), Path(folder)
    if not path.is_file():
        raise UserError(f"no bundle at {path}")
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is not a cleanbench bundle (not a zip file)")
    try:
        with zipfile.ZipFile(path) as archive:
            return _extract_checked(path, archive, folder)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, UnicodeDecodeError, NotImplementedError,
            struct.error, OSError) as error:  # a damaged archive (CRC, truncated, bad data, garbled headers or
        # names, offsets before the file's start)
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise BundleError(f"{path}: damaged bundle ({reason}): refused") from None


def _extract_checked(path: Path, archive: zipfile.ZipFile, folder: Path) -> dict[str, Any]:
    """Check the members against the limits and the manifest, then extract each, checking its hash."""
    members = _checked_members(path, archive)
    manifest = _read_manifest(path, archive, members)
    listed = manifest["files"]
    for name in listed:
        if name not in members:
            raise BundleError(f"{path}: {name} is listed in the manifest but missing from the bundle: refused")
    for name in members:
        if name != MANIFEST and name not in listed:
            raise BundleError(f"{path}: {name} is not listed in the manifest: refused")
    folder.mkdir(parents=True)  # fresh: nothing inside it can be a link planted beforehand
    for name, expected in listed.items():
        _extract_member(path, archive, members[name], folder, expected)
    return manifest


def _checked_members(path: Path, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_FILES:
        raise BundleError(f"{path}: {len(infos)} files, more than the limit of {MAX_FILES}: refused")
    declared = sum(info.file_size for info in infos)
    if declared > MAX_TOTAL_BYTES:
        raise BundleError(f"{path}: {declared} bytes uncompressed, more than the limit of {MAX_TOTAL_BYTES}: refused")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        check_member_name(info.filename)
        mode = info.external_attr >> 16
        if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: written without a file type
            raise BundleError(f"{path}: {info.filename} is not a plain file (a link or a folder entry): refused")
        if info.flag_bits & 0x1:
            raise BundleError(f"{path}: {info.filename} is encrypted: refused")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):  # what write_bundle writes
            raise BundleError(f"{path}: {info.filename} uses a compression other than deflate: refused")
        if info.filename in members:
            raise BundleError(f"{path}: {info.filename} appears twice: refused")
        members[info.filename] = info
    folded: dict[str, str] = {}
    for name in members:
        other = folded.setdefault(name.casefold(), name)
        if other != name:  # one file on a case-insensitive file system: the second would overwrite the first
            raise BundleError(f"{path}: {other} and {name} differ only in case: refused")
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in members:
                raise BundleError(f"{path}: {parent} is both a file and the folder of {name}: refused")
    return members


def _read_manifest(path: Path, archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> dict[str, Any]:
    if MANIFEST not in members:
        raise BundleError(f"{path}: no {MANIFEST}; not a cleanbench bundle")
    data = _read_limited(archive, members[MANIFEST], MAX_MANIFEST_BYTES, path)
    try:
        manifest = json.loads(data, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as duplicate:
        raise BundleError(f"{path}: {MANIFEST} lists {duplicate.args[0]} more than once: refused") from None
    except ValueError:
        manifest = None
    _check_manifest(path, manifest)
    return manifest


def _check_manifest(path: Path, manifest: Any) -> None:
    """Every field of the manifest present and typed: ``format`` 1 and ``files``, each entry exactly ``bytes`` (a
    non-negative integer) and ``sha256`` (64 lowercase hex digits), each name a safe member path."""
    where = f"{path}: {MANIFEST}"
    if not isinstance(manifest, dict):
        raise BundleError(f"{where} is not a JSON object; not a bundle manifest of format {FORMAT_VERSION}")
    _check_fields(where, manifest, {"format": "format", "files": "files"})
    if manifest["format"] != FORMAT_VERSION or isinstance(manifest["format"], bool):
        raise BundleError(f"{where}, field 'format': expected {FORMAT_VERSION}, got {_short(manifest['format'])}")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"{where}, field 'files': expected an object of file entries, got "
                          f"{type(manifest['files']).__name__}")
    for name, entry in manifest["files"].items():
        check_member_name(name)
        field = f"{where}, files[{name!r}]"
        if not isinstance(entry, dict):
            raise BundleError(f"{field}: expected an object with 'bytes' and 'sha256', got {type(entry).__name__}")
        _check_fields(field, entry, {"bytes": "bytes", "sha256": "sha256"})
        if not _is_count(entry["bytes"]):
            raise BundleError(f"{field}, field 'bytes': expected a non-negative integer, got {_short(entry['bytes'])}")
        if not _is_sha256(entry["sha256"]):
            raise BundleError(f"{field}, field 'sha256': expected 64 lowercase hex digits, got "
                              f"{_short(entry['sha256'])}")


def _check_fields(where: str, record: dict[str, Any], fields: dict[str, str]) -> None:
    """Refuse a JSON object that lacks one of ``fields`` or has a field not among them."""
    for field in fields:
        if field not in record:
            raise BundleError(f"{where}: field {field!r} is missing: refused")
    for field in record:
        if field not in fields:
            raise BundleError(f"{where}: unknown field {_short(field)}: refused")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def _short(value: Any) -> str:
    """A value as a one-line message shows it: repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _DuplicateKey(Exception):
    """A JSON object that names a key twice (``json`` would silently keep the last)."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _extract_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, folder: Path,
                    expected: dict[str, Any]) -> None:
    data = _read_limited(archive, info, info.file_size, path)  # declared sizes were checked against the limit
    if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise BundleError(f"{path}: {info.filename} does not match its hash in the manifest (altered or damaged): "
                          "refused before anything runs")
    target = folder / info.filename
    if not target.resolve().is_relative_to(folder.resolve()):  # cannot happen with checked names; kept as a guard
        raise BundleError(f"{path}: {info.filename} would land outside {folder}: refused")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "xb") as handle:
        handle.write(data)


def _read_limited(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: Path) -> bytes:
    """A member's bytes, stopping past ``limit`` (a zip may declare sizes smaller than what it inflates to)."""
    with archive.open(info) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{path}: {info.filename} is larger than declared or allowed ({limit} bytes): refused")
    return data


_META_FIELDS = {"format": "format", "defense": "name", "preset": "name", "attacks": "names", "seeds": "seeds",
                "data_dir": "text", "cleanbench_version": "text", "git_commit": "text", "created_at": "text",
                "components": "components"}
_COMPONENT_FIELDS = {"kind": "kind", "name": "name", "origin": "origin", "package": "text", "version": "text",
                     "module": "text", "class": "text", "files": "files", "sha256": "sha256"}
ORIGINS = ("built-in", "file", "package", "module")  # benchmark.provenance.Origin.kind


def _read_meta(path: Path, folder: Path) -> dict[str, Any]:
    """``bundle.json``, every field present and typed (:data:`_META_FIELDS`, :data:`_COMPONENT_FIELDS`); names are
    names (:mod:`benchmark.names`)."""
    where = f"{path}: {META}"
    for name in (META, RESULTS_FILE, PRESET):
        if not (folder / name).is_file():
            raise BundleError(f"{path}: no {name}; not a cleanbench bundle")
    try:
        meta = json.loads((folder / META).read_bytes().decode(), object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as duplicate:
        raise BundleError(f"{where} names field {_short(duplicate.args[0])} more than once: refused") from None
    except ValueError:  # UnicodeDecodeError included
        raise BundleError(f"{where} is not UTF-8 JSON: refused") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{where} is not a JSON object: refused")
    _check_typed(where, meta, _META_FIELDS)
    for index, component in enumerate(meta["components"]):
        field = f"{where}, components[{index}]"
        if not isinstance(component, dict):
            raise BundleError(f"{field}: expected an object, got {type(component).__name__}")
        _check_typed(field, component, _COMPONENT_FIELDS)
    return meta


def _check_typed(where: str, record: dict[str, Any], fields: dict[str, str]) -> None:
    _check_fields(where, record, fields)
    for field, kind in fields.items():
        value = record[field]
        problem = _type_problem(kind, value)
        if problem:
            raise BundleError(f"{where}, field {field!r}: expected {problem}, got {_short(value)}")


def _type_problem(kind: str, value: Any) -> str:
    """What ``value`` should have been when it is not of ``kind``, else an empty string."""
    if kind == "format":
        return "" if value == FORMAT_VERSION and not isinstance(value, bool) else str(FORMAT_VERSION)
    if kind == "name":
        return "" if is_name(value) else f"a name ({NAME_RULE})"
    if kind == "names":
        return "" if isinstance(value, list) and all(map(is_name, value)) else f"a list of names ({NAME_RULE})"
    if kind == "seeds":
        return "" if isinstance(value, list) and all(map(_is_count, value)) else "a list of non-negative integers"
    if kind == "text":
        return "" if isinstance(value, str) and len(value) <= 1000 else "a string"
    if kind == "components":
        return "" if isinstance(value, list) and value else "a non-empty list of components"
    if kind == "kind":
        return "" if value in ("attack", "defense") else "'attack' or 'defense'"
    if kind == "origin":
        return "" if value in ORIGINS else f"one of {', '.join(ORIGINS)}"
    if kind == "files":
        ok = isinstance(value, list) and value and all(isinstance(file, str) for file in value)
        if ok:
            for file in value:
                check_member_name(file)
        return "" if ok else "a non-empty list of file paths"
    if kind == "sha256":
        return "" if _is_sha256(value) else "64 lowercase hex digits"
    raise AssertionError(kind)


def check_rows(path: Path, folder: Path) -> None:
    """The bundle's ``results.csv`` through the results schema, as the leaderboard reads any results file
    (:func:`leaderboard.load.check_results_file`: UTF-8, every column, typed values, names that are names)."""
    from leaderboard.load import check_results_file

    try:
        check_results_file(folder / RESULTS_FILE, label=f"{path}:{RESULTS_FILE}")
    except UserError as error:
        raise BundleError(str(error)) from None


def check_sources(folder: Path, meta: dict[str, Any]) -> None:
    """Each bundled source must hash to what ``bundle.json`` records, and every row must record that hash for its
    attack and defense: a source changed after the run (even with the manifest redone) is refused here."""
    recorded = {}
    for component in meta["components"]:
        kind, name, files = component["kind"], component["name"], component["files"]  # typed by _read_meta
        root = folder / SOURCE_DIR / kind / name
        if not all((root / file).is_file() for file in files):
            raise BundleError(f"the bundle lacks source files of {kind} '{name}'")
        actual = source_hash(root, files)
        if actual != component["sha256"]:
            raise BundleError(f"the source of {kind} '{name}' in the bundle does not match the hash recorded for it "
                              f"(changed after the run: {actual[:12]} ≠ {component['sha256'][:12]}): refused")
        recorded[(kind, name)] = actual
    for row in ResultsFile(folder / RESULTS_FILE).rows.values():
        for kind in ("attack", "defense"):
            want = recorded.get((kind, row[kind]))
            if want is not None and row[f"{kind}_source_sha256"] != want:
                raise BundleError(f"row {row['cell_id']} ({row['attack']} × {row['defense']} seed {row['seed']}) "
                                  f"records another source hash for {kind} '{row[kind]}' than the bundled source: "
                                  "refused")


def plan_rows(rows: list[dict[str, str]], defense: str, preset: Preset) -> Plan:
    """The plan of ``preset`` for the rows' attacks, ``defense`` and seeds: what a bundle's rows are checked
    against (``submit`` before writing, ``verify`` before rerunning)."""
    from benchmark.runner import plan_grid

    attacks = sorted({row["attack"] for row in rows} - {BENIGN_ATTACK})
    return plan_grid(preset, attacks, [defense], sorted({int(row["seed"]) for row in rows}))


def unplanned_rows(rows: list[dict[str, str]], plan: Plan) -> list[dict[str, str]]:
    """The rows whose cell id ``plan`` does not give (a bundle must have none: its cells could not be rerun as
    they are)."""
    planned = {cell.row_id for cell in plan.cells}
    return [row for row in rows if row["cell_id"] not in planned]


def record_path(bundle: Path) -> Path:
    """Where ``verify`` writes the verification record of ``bundle``: beside it."""
    return Path(bundle).with_name(Path(bundle).name + RECORD_SUFFIX)


def is_verified(bundle: Bundle) -> bool:
    """Whether a verification record beside the bundle says that ``verify`` reran cells of this very file (same
    SHA-256) and every one matched. The record is as trustworthy as whoever ran ``verify``: rerun it to be sure."""
    try:
        record = json.loads(record_path(bundle.path).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("bundle_sha256") == bundle.sha256 and record.get("verified") is True
            and isinstance(record.get("cells"), list) and bool(record["cells"])
            and all(isinstance(cell, dict) and cell.get("verified") is True for cell in record["cells"]))
