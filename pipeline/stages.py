"""The engine protocol: one phrase of text in, its audio out. Everything streaming is built on top.

A new voice backend is one file implementing `TTSEngine`; `tts.stream.StreamingTTS` gives it
incremental input, chunking, cancellation, caching and metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class VoiceOptions:
    """What a user expects to tune: speaking rate (1.0 = the voice's natural speed) and volume."""

    rate: float = 1.0
    volume: float = 1.0

    def __post_init__(self) -> None:
        if not 0.25 <= self.rate <= 4.0:
            raise ValueError(f"speaking rate {self.rate} out of range 0.25–4.0")
        if not 0.0 <= self.volume <= 2.0:
            raise ValueError(f"volume {self.volume} out of range 0.0–2.0")


class TTSEngine(Protocol):
    voice_id: str
    sample_rate: int
    options: VoiceOptions

    def synthesize(self, text: str) -> np.ndarray:
        """Blocking: mono float32 audio for one phrase (may be empty if nothing is speakable)."""
        ...


class StreamingTTSEngine(TTSEngine, Protocol):
    """Optional: an engine that can hand out a phrase's audio in pieces. `StreamingTTS` uses
    `stream` when an engine has it, and `synthesize` (one piece per phrase) otherwise."""

    def stream(self, text: str, first_samples: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
        """Blocking iterator of (audio piece, expected total samples of the phrase); the first piece
        about `first_samples` long; each `next()` a bounded amount of work, so a caller can stop
        between pieces."""
        ...
