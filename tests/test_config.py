"""Configuration (pure logic): defaults ← TOML file ← command line; unknown keys are named."""

from __future__ import annotations

import pytest

from agent.config import load_config


def test_defaults():
    cfg = load_config()
    assert cfg.stt.model in ("tiny.en", "base") and cfg.llm.base_url is None and cfg.tts.voice == "piper-joe"
    assert cfg.echo_cancel and cfg.turns.barge_in


def test_file_then_command_line(tmp_path):
    f = tmp_path / "r.toml"
    f.write_text('[llm]\nurl = "http://x:1/v1"\nmodel = "m"\n[vad]\nhangover_ms = 400\n'
                 '[turns]\nignore_backchannels = true\n[tts]\nrate = 1.2\n')
    cfg = load_config(f, **{"llm.model": "override", "stt.model": None})
    assert cfg.llm.base_url == "http://x:1/v1" and cfg.llm.model == "override"
    assert cfg.vad.hangover_ms == 400 and cfg.turns.ignore_backchannels
    assert cfg.tts.voice_options.rate == 1.2


@pytest.mark.parametrize("text,message", [
    ("[nope]\nx = 1\n", "unknown section"),
    ("[vad]\nhangover = 1\n", "unknown option vad.hangover"),
])
def test_unknown_names_are_errors(tmp_path, text, message):
    f = tmp_path / "r.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(f)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config("/nonexistent/r.toml")


def test_options_set_from_a_file_are_checked_together(tmp_path):
    """A bad value in the file is a one-line error naming its section, not a crash at start-up;
    values that are only valid together (pause before hangover) may come in any order."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[embedded_llm]\nslots = 0\n")
    with pytest.raises(ValueError, match=r"\[embedded_llm\].*slots"):
        load_config(bad)
    good = tmp_path / "good.toml"
    good.write_text("[vad]\npause_ms = 800\nhangover_ms = 1000\n")
    assert load_config(good).vad.hangover_ms == 1000
