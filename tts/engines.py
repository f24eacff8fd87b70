"""The voices, by name, and the one factory that loads the configured one.

Adding a voice engine is one file (a module with `load(options: TTSOptions) -> TTSEngine`, see
`pipeline.stages`), one line in `ENGINES`, and its test; `[tts] backend = "NAME"` picks it. Modules
are imported only when chosen.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from pipeline.stages import TTSEngine, VoiceOptions

ENGINES: dict[str, str] = {
    "piper": "tts.piper_engine",  # Piper (VITS, ONNX Runtime) in this process, streamed: the embedded default
}


@dataclass
class TTSOptions:
    backend: str = "piper"  # an engine of `ENGINES`
    voice: str = "piper-joe"  # piper: a bundled voice key, or a path to a Piper .onnx voice
    threads: int = 1
    chunk_ms: int = 200
    voice_options: VoiceOptions = field(default_factory=VoiceOptions)

    def __post_init__(self) -> None:
        if self.backend not in ENGINES:
            raise ValueError(f"unknown TTS backend '{self.backend}'; known: {', '.join(ENGINES)}")
        if self.threads < 1 or self.chunk_ms < 20:
            raise ValueError(f"tts needs threads >= 1 and chunk_ms >= 20, got {self.threads}, {self.chunk_ms}")


def load_tts(options: TTSOptions | None = None) -> TTSEngine:
    """Load the configured voice (blocking: the model loads and warms up)."""
    options = options or TTSOptions()
    options.__post_init__()  # fields may have been set after construction (the config file)
    engine: TTSEngine = importlib.import_module(ENGINES[options.backend]).load(options)
    return engine
