"""The speech recognisers, by name, and the one factory that loads the configured one.

Adding an engine is one file (a module with `load(options) -> STTEngine`, see `pipeline.stages`),
one line in `ENGINES`, and its test; `[stt] backend = "NAME"` (or `--stt-backend`) picks it. Modules
are imported only when chosen, so an engine's heavy dependencies cost nothing until it is used.
"""

from __future__ import annotations

import importlib

from pipeline.stages import STTEngine
from stt.whisper import WhisperOptions

ENGINES: dict[str, str] = {
    "whisper": "stt.whisper",  # faster-whisper (CTranslate2) in this process: the embedded default
    "openai": "stt.openai_stt",  # any OpenAI-compatible /v1/audio/transcriptions endpoint (`url`)
}


def backend_of(options: WhisperOptions) -> str:
    """The engine `options` asks for; a clear error naming the known ones if it is not registered."""
    name = options.backend or ("openai" if options.url else "whisper")
    if name not in ENGINES:
        raise ValueError(f"unknown STT backend '{name}'; known: {', '.join(ENGINES)}")
    return name


def load_stt(options: WhisperOptions | None = None) -> STTEngine:
    """Load the configured speech recogniser (blocking: models load from disk)."""
    options = options or WhisperOptions()
    module = importlib.import_module(ENGINES[backend_of(options)])
    engine: STTEngine = module.load(options)
    return engine
