"""Configuration (pure logic): defaults ← TOML file ← command line; unknown keys are named.

Real: `load_config` and the option dataclasses, on temporary TOML files. No fakes, no models."""

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


def _leaves(options, prefix: str):
    """(dotted name, default value, type hint) of every field of `options`, nested tables included."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, hints[f.name]


def _other(name: str, value, hint):
    """A valid value of the field's type that differs from its default."""
    import types
    import typing

    special = {"stt.backend": "whisper", "tts.backend": "piper", "llm.tool_mode": "native",  # one of a few names
               "embedded_llm.model": "qwen2.5-1.5b"}
    if name in special:
        return special[name]
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kind = next(k for k in kinds if k is not type(None))
    if kind is bool:
        return not value if value is not None else True
    if kind is int:
        return value + 1
    if kind is float:
        return round(value * 1.1 + 0.01, 4)
    return f"{value or 'x'}-2" if name != "llm.base_url" else "http://127.0.0.1:9/v1"


def _toml(value) -> str:
    import json

    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


def test_every_option_of_every_section_round_trips_through_the_file(tmp_path):
    """Each field of each option dataclass (nested tables too) set alone in a TOML file comes back
    from `load_config` with that value, and leaves every other field at its default."""
    from agent.config import SECTIONS, AgentConfig

    defaults = AgentConfig()
    fields = [(s, *leaf) for s in SECTIONS for leaf in _leaves(getattr(defaults, s), f"{s}.")]
    assert {"echo", "transcriber", "supervisor", "stt", "tts", "vad", "turns", "llm"} <= set(SECTIONS)
    assert len(fields) >= 80, len(fields)  # every stage's options, not a handful
    for section, name, default, hint in fields:
        value = _other(name, default, hint)
        table, _, key = name.rpartition(".")
        f = tmp_path / "one.toml"
        f.write_text(f"[{table}]\n{key} = {_toml(value)}\n")
        cfg = load_config(f)
        got = cfg
        for part in name.split("."):
            got = getattr(got, part)
        assert got == value, f"{name}: set {value!r}, loaded {got!r}"
        for other_section in SECTIONS:
            if other_section != section:
                assert getattr(cfg, other_section) == getattr(defaults, other_section), (name, other_section)
    for top, value in (("echo_cancel", False), ("system_prompt", "Be brief.")):
        f = tmp_path / "top.toml"
        f.write_text(f"{top} = {_toml(value)}\n")
        assert getattr(load_config(f), top) == value


@pytest.mark.parametrize("text,message", [
    ("[vad]\nhangover_ms = \"long\"\n", r"vad.hangover_ms must be int, got 'long'"),
    ("[turns]\nbarge_in = 1\n", r"turns.barge_in must be bool"),
    ("[tts]\nbackend = \"nope\"\n", r"unknown TTS backend 'nope'; known: piper"),
    ("[tts.voice_options]\nrate = 9.0\n", r"\[tts\].*rate 9.0 out of range"),
    ("[supervisor.backoff]\nmax = 1\n", r"unknown option supervisor.backoff.max"),
    ("[tts]\nvoice_options = 1\n", r"tts.voice_options is a table"),
    ("[vad\n", r"not valid TOML"),
])
def test_bad_values_are_one_line_errors_that_name_the_option(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(f)


def test_an_unknown_stt_backend_is_named_with_the_known_ones():
    from stt.engines import backend_of

    cfg = load_config(**{"stt.backend": "nope"})
    with pytest.raises(ValueError, match="unknown STT backend 'nope'; known: whisper, openai"):
        backend_of(cfg.stt)
    assert backend_of(load_config(**{"stt.url": "http://127.0.0.1:9/v1"}).stt) == "openai"


@pytest.mark.models
def test_sections_reach_the_session_they_configure(tmp_path):
    """The [echo] and [transcriber] sections are not just parsed: a new session's echo canceller and
    transcriber run with them. Fakes for STT, LLM and voice; the real Silero VAD is loaded."""
    from agent.stack import AgentStack
    from pipeline.clock import VirtualClock
    from tests.fakes import FakeLLM, FakeSTT, FakeTTSEngine

    f = tmp_path / "r.toml"
    f.write_text("[echo]\nmax_delay_ms = 700.0\n[transcriber]\ninterim_interval_s = 0.9\n")
    cfg = load_config(f)
    clock = VirtualClock()
    session = AgentStack(cfg, FakeSTT([]), FakeTTSEngine(), FakeLLM(clock, [])).new_session(clock, sink=lambda f: None)
    assert session.echo is not None and session.echo.o.max_delay_ms == 700.0
    assert session.turns.transcriber.options.interim_interval_s == 0.9
    assert session.turns.transcriber.options.speculative == cfg.turns.preemptive
