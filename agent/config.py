"""Typed options with documented defaults, loaded from one TOML file and overridable on the CLI.

    # rejoinder.toml
    [stt]
    model = "tiny.en"
    [llm]
    url = "http://127.0.0.1:8000/v1"   # omit for the embedded model
    [vad]
    hangover_ms = 500
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.llm import LLMOptions
from agent.prompts import SPEECH_SYSTEM_PROMPT
from agent.turns import TurnOptions
from pipeline.stages import VoiceOptions
from stt.vad import VADOptions
from stt.whisper import WhisperOptions


@dataclass
class TTSOptions:
    voice: str = "piper-joe"  # bundled voice key, or a path to a Piper .onnx voice
    threads: int = 1
    chunk_ms: int = 200
    voice_options: VoiceOptions = field(default_factory=VoiceOptions)


@dataclass
class EmbeddedLLMOptions:
    # Both cores: measured with `rejoinder bench --compare embedded_llm.threads=1,2` on 2 cores,
    # first token 280 vs 460 ms and server voice-to-voice p50 830 vs 1030 ms, with no underruns;
    # STT and TTS passes are short and interleave with decoding.
    threads: int = 2
    n_ctx: int = 4096  # per slot
    # Replies decoded side by side: with one slot a second call's reply waited behind the first
    # call's whole reply (first token 1.1-6.9 s with two calls). A single call keeps to the slot
    # holding its cached prompt, so prefill still hits.
    slots: int = 2

    def __post_init__(self) -> None:
        if self.threads < 1 or self.slots < 1 or self.n_ctx < 256:
            raise ValueError(f"embedded_llm needs threads >= 1, slots >= 1 and n_ctx >= 256, got {self}")


@dataclass
class AgentConfig:
    stt: WhisperOptions = field(default_factory=WhisperOptions)
    llm: LLMOptions = field(default_factory=LLMOptions)
    embedded_llm: EmbeddedLLMOptions = field(default_factory=EmbeddedLLMOptions)
    tts: TTSOptions = field(default_factory=TTSOptions)
    vad: VADOptions = field(default_factory=VADOptions)
    turns: TurnOptions = field(default_factory=TurnOptions)
    system_prompt: str = SPEECH_SYSTEM_PROMPT
    echo_cancel: bool = True  # remove the agent's own voice from the microphone (speakers, no headset)


_SECTIONS = {"stt": "stt", "llm": "llm", "embedded_llm": "embedded_llm", "tts": "tts", "vad": "vad", "turns": "turns"}
_ALIASES = {("llm", "url"): "base_url"}


def load_config(path: str | Path | None = None, **overrides: Any) -> AgentConfig:
    """Defaults ← TOML file ← CLI overrides (dotted keys like ``stt.model``; None means 'not given')."""
    cfg = AgentConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        with open(p, "rb") as f:
            data = tomllib.load(f)
        for section, values in data.items():
            if section == "system_prompt":
                cfg.system_prompt = str(values)
                continue
            if section not in _SECTIONS or not isinstance(values, dict):
                raise ValueError(f"{p}: unknown section [{section}]; known: {', '.join(_SECTIONS)}")
            for key, value in values.items():
                _set(cfg, f"{section}.{key}", value, source=str(p))
    for dotted, value in overrides.items():
        if value is not None:
            _set(cfg, dotted, value, source="command line")
    for section in _SECTIONS.values():  # once every value is in: options checked together
        options = getattr(cfg, section)
        check = getattr(options, "__post_init__", None)
        if check is not None:
            try:
                check()
            except ValueError as exc:
                raise ValueError(f"[{section}]: {exc}") from None
    return cfg


def _set(cfg: AgentConfig, dotted: str, value: Any, source: str) -> None:
    section, key = dotted.split(".", 1)
    key = _ALIASES.get((section, key), key)
    target = getattr(cfg, section)
    if key in ("rate", "volume") and section == "tts":
        target.voice_options = dataclasses.replace(target.voice_options, **{key: float(value)})
        return
    names = {f.name for f in dataclasses.fields(target)}
    if key not in names:
        raise ValueError(f"{source}: unknown option {section}.{key}; known: {', '.join(sorted(names))}")
    setattr(target, key, value)
