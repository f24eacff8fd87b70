"""Model assets: locating pinned packages, joining split files, sha256 checks.

Uses the real installed packages for the happy path (the Whisper tiny.en and Silero files are
located and checksummed, not loaded), and small temporary files (no model: the `fake_assets`
fixture of tests/conftest.py) for the failure paths: a missing package, a missing file, an altered
file, a corrupted assembled file.
"""

from __future__ import annotations

import pytest

from pipeline import assets
from pipeline.assets import ModelAssetError, model_path


def test_bundled_single_file_models_resolve_in_place():
    d = model_path("tiny.en")
    assert (d / "model.bin").is_file() and (d / "tokenizer.json").is_file()
    assert model_path("silero-vad").joinpath("silero_vad.onnx").is_file()


def test_unknown_model_key_is_a_clear_error():
    with pytest.raises(ModelAssetError, match="unknown model 'nope'"):
        model_path("nope")


def test_split_file_is_joined_into_cache_and_verified(fake_assets):
    register, tmp = fake_assets
    register()
    d = model_path("fake")
    assert d == tmp / "cache" / "fake"
    assert (d / "joined.bin").read_bytes() == b"hello world"


def test_missing_package_names_the_package(fake_assets):
    register, _ = fake_assets
    register(module="not_installed_pkg")
    with pytest.raises(ModelAssetError, match=r"package 'not-installed-pkg' is not installed.*pip install"):
        model_path("fake")


def test_missing_file_in_package_says_reinstall(fake_assets):
    register, _ = fake_assets
    register(part="data/missing.bin")
    with pytest.raises(ModelAssetError, match=r"missing; reinstall 'fake-model-pkg'"):
        model_path("fake")


def test_altered_file_fails_checksum(fake_assets):
    register, _ = fake_assets
    register(sha="0" * 64)
    with pytest.raises(ModelAssetError, match=r"failed its sha256 check.*--force-reinstall --no-deps fake-model-pkg"):
        model_path("fake")


def test_corrupted_assembled_file_is_rebuilt_from_the_packages(fake_assets):
    """A damaged cached copy is not trusted, and not left to fail every later start: it is rebuilt
    (and checked again; a package that is itself wrong fails as in test_altered_file_fails_checksum)."""
    register, tmp = fake_assets
    register()
    d = model_path("fake")
    (d / "joined.bin").write_bytes(b"hellX world")
    assets._verified.clear()
    assert model_path("fake") == d
    assert (d / "joined.bin").read_bytes() == b"hello world"
