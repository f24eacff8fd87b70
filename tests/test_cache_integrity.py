"""The model cache (`$REJOINDER_CACHE`): what is cached is verified on every load and rebuilt when
damaged; a cache that cannot be written is one clear error, raised only when something must be built.

Fakes: a tiny packaged "model" (the `fake_assets` fixture of tests/conftest.py) for the joined files.
Real: the Piper voice, split into its streaming parts in a temporary cache (`models`). Read-only is
real (chmod) and, when the tests run as root (whom permission bits do not bind), also enforced by
refusing writes under the directory the way the kernel would (`read_only`).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest

from pipeline import assets
from pipeline.assets import CacheError, model_path


@pytest.fixture
def read_only(monkeypatch):
    """`read_only(root)`: make the tree at `root` read-only for the rest of the test."""
    roots: list[Path] = []

    def make(root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        for p in [root, *root.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        roots.append(root)
        if os.geteuid() == 0:
            _refuse_writes(monkeypatch, root)

    yield make
    for root in roots:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def _refuse_writes(monkeypatch, root: Path) -> None:
    base = os.path.realpath(root)

    def under(path) -> bool:
        if isinstance(path, int):
            return False
        real = os.path.realpath(os.fspath(path))
        return real == base or real.startswith(base + os.sep)

    def denied(path) -> PermissionError:
        return PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    os_open, os_mkdir, os_replace, os_unlink, py_open = os.open, os.mkdir, os.replace, os.unlink, builtins.open

    def guarded_os_open(path, flags, *a, **k):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
            raise denied(path)
        return os_open(path, flags, *a, **k)

    def guarded_mkdir(path, *a, **k):
        if under(path):
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "File exists", os.fspath(path))
            raise denied(path)
        return os_mkdir(path, *a, **k)

    def guarded_replace(src, dst, *a, **k):
        if under(src) or under(dst):
            raise denied(dst)
        return os_replace(src, dst, *a, **k)

    def guarded_unlink(path, *a, **k):
        if under(path):
            raise denied(path)
        return os_unlink(path, *a, **k)

    def guarded_open(file, mode="r", *a, **k):
        if under(file) and any(c in mode for c in "wax+"):
            raise denied(file)
        return py_open(file, mode, *a, **k)

    for name, fn in (("open", guarded_os_open), ("mkdir", guarded_mkdir), ("replace", guarded_replace),
                     ("rename", guarded_replace), ("unlink", guarded_unlink), ("remove", guarded_unlink)):
        monkeypatch.setattr(os, name, fn)
    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)


# --- joined model files (a fake packaged model) --------------------------------------------------
def test_a_truncated_joined_file_is_rebuilt_from_the_packages(fake_assets, caplog):
    register, tmp = fake_assets
    register()
    joined = model_path("fake") / "joined.bin"
    joined.write_bytes(b"hello")  # truncated: a crash, a full disk, a copy that stopped
    with caplog.at_level(logging.WARNING, logger="pipeline.assets"):
        assert model_path("fake") == joined.parent
    assert joined.read_bytes() == b"hello world"
    assert [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()] != []


def test_a_cache_path_that_is_a_file_is_a_clear_error(fake_assets, monkeypatch):
    register, tmp = fake_assets
    register()
    blocker = tmp / "not-a-dir"
    blocker.write_text("oops")
    monkeypatch.setenv("REJOINDER_CACHE", str(blocker))
    with pytest.raises(CacheError, match=rf"cache path {re.escape(str(blocker))} is a file.*REJOINDER_CACHE"):
        model_path("fake")


def test_a_read_only_cache_holding_valid_files_still_loads(fake_assets, read_only):
    register, tmp = fake_assets
    register()
    model_path("fake")
    assets._verified.clear()
    read_only(tmp / "cache")
    assert (model_path("fake") / "joined.bin").read_bytes() == b"hello world"


def test_a_read_only_empty_cache_is_a_clear_error(fake_assets, read_only):
    register, tmp = fake_assets
    register()
    read_only(tmp / "cache")
    with pytest.raises(CacheError, match=rf"{re.escape(str(tmp / 'cache'))}.* is not writable.*REJOINDER_CACHE"):
        model_path("fake")


def test_a_full_disk_is_a_clear_error_and_leaves_no_half_written_file(fake_assets, monkeypatch):
    register, tmp = fake_assets
    register()

    def full(src, dst, length=0):
        dst.write(b"hel")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(assets.shutil, "copyfileobj", full)
    with pytest.raises(CacheError, match=r"no space left to write the cache at .*free some disk space"):
        model_path("fake")
    assert list((tmp / "cache" / "fake").iterdir()) == []


def test_a_manifest_names_what_is_wrong(tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"one")
    (tmp_path / "b.onnx").write_bytes(b"two")
    assert assets.manifest_problem(tmp_path, ["a.onnx", "b.onnx"]) == "has no checksum manifest"
    assets.write_manifest(tmp_path, ["a.onnx", "b.onnx"])
    recorded = json.loads((tmp_path / assets.MANIFEST).read_text())["sha256"]
    assert recorded["a.onnx"] == assets.sha256_of(tmp_path / "a.onnx")
    assert assets.manifest_problem(tmp_path, ["a.onnx", "b.onnx"]) is None
    (tmp_path / "b.onnx").write_bytes(b"tw")
    assert assets.manifest_problem(tmp_path, ["a.onnx", "b.onnx"]).startswith("has a damaged b.onnx")
    (tmp_path / "a.onnx").unlink()
    assert assets.manifest_problem(tmp_path, ["a.onnx", "b.onnx"]) == "lacks a.onnx"
    (tmp_path / assets.MANIFEST).write_text("{not json")
    assert assets.manifest_problem(tmp_path, ["a.onnx"]).startswith("has an unreadable checksum manifest")
    assert assets.manifest_problem(tmp_path / "nothing", ["a.onnx"]) == "is not built yet"


# --- the Piper voice's streaming parts (real voice) ----------------------------------------------
@pytest.fixture(scope="module")
def built_parts(tmp_path_factory) -> Path:
    """The voice split once into a private cache; each test starts from a copy of it."""
    from tts.piper_engine import _resolve, _split_voice

    root = tmp_path_factory.mktemp("built-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("REJOINDER_CACHE", str(root))
    try:
        assert _split_voice(_resolve("piper-joe")[0]) is not None
    finally:
        mp.undo()
    return root / "piper-stream"


@pytest.fixture
def cache(built_parts, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(built_parts, root / "piper-stream")
    monkeypatch.setenv("REJOINDER_CACHE", str(root))
    return root


def _voice():
    from tts.piper_engine import PiperEngine

    return PiperEngine(warmup=False)


def _parts_dir(root: Path) -> Path:
    (d,) = (root / "piper-stream").iterdir()
    return d


@pytest.mark.models
def test_a_truncated_cached_part_is_rebuilt_and_the_voice_speaks(cache, caplog):
    """Was: onnxruntime's raw "protobuf parsing failed" traceback, on this and every later start."""
    flow = _parts_dir(cache) / "flow.onnx"
    flow.write_bytes(flow.read_bytes()[: flow.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="tts.piper_engine"):
        engine = _voice()
    assert engine.streaming and engine.synthesize("Hello there.").size > 0
    rebuilt = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert len(rebuilt) == 1 and "flow.onnx" in rebuilt[0], rebuilt
    assert assets.manifest_problem(flow.parent, ["prior.onnx", "flow.onnx", "decoder.onnx"]) is None


@pytest.mark.models
def test_a_cache_path_that_is_a_file_is_a_clear_error_for_the_voice(tmp_path, monkeypatch):
    """Was: a raw NotADirectoryError caught and turned into a silent fall-back to slower synthesis."""
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    monkeypatch.setenv("REJOINDER_CACHE", str(blocker))
    with pytest.raises(CacheError, match=rf"cache path {re.escape(str(blocker))} is a file.*REJOINDER_CACHE"):
        _voice()


@pytest.mark.models
def test_a_read_only_cache_with_valid_parts_loads_the_voice(cache, read_only):
    read_only(cache)
    engine = _voice()
    assert engine.streaming and engine.synthesize("Hello there.").size > 0


@pytest.mark.models
def test_a_read_only_empty_cache_is_a_clear_error_for_the_voice(tmp_path, monkeypatch, read_only):
    root = tmp_path / "cache"
    read_only(root)
    monkeypatch.setenv("REJOINDER_CACHE", str(root))
    with pytest.raises(CacheError, match=rf"{re.escape(str(root))}.* is not writable.*REJOINDER_CACHE"):
        _voice()
