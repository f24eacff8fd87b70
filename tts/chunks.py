"""The chunk contract: every piece of audio the TTS emits says exactly what it is."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A playable piece of one TTS request.

    `start` is the chunk's offset in seconds from the beginning of the request's audio, so playback
    order and gaps are explicit; `text` is the span of the reply this chunk speaks (for heard-text
    tracking after a barge-in). The last chunk of a request has `final=True` (it may be empty).
    """

    request_id: str
    voice_id: str
    index: int
    start: float
    samples: np.ndarray  # mono float32
    sample_rate: int
    text: str
    final: bool = False

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass
class TTSMetrics:
    """Measured figures of one TTS request (all durations in ms, wall clock of the synthesizer)."""

    request_id: str
    voice_id: str
    ttfa_ms: float | None = None  # first text handed in → first audio chunk ready
    synth_ms: float = 0.0  # time spent synthesizing
    generated_audio_ms: float = 0.0
    chunks: int = 0
    chunk_gaps_ms: list[float] = field(default_factory=list)  # between consecutive chunks being ready
    cancelled: bool = False
    cancellation_latency_ms: float | None = None
    cache_hits: int = 0
    cache_lookups: int = 0

    @property
    def rtf(self) -> float | None:
        return self.synth_ms / self.generated_audio_ms if self.generated_audio_ms else None

    def as_dict(self) -> dict:
        gaps = self.chunk_gaps_ms
        return {
            "request_id": self.request_id,
            "voice_id": self.voice_id,
            "chunks": self.chunks,
            "ttfa_ms": _r(self.ttfa_ms),
            "rtf": _r(self.rtf, 3),
            "generated_audio_ms": _r(self.generated_audio_ms),
            "synth_ms": _r(self.synth_ms),
            "cadence_ms": {
                "median": _r(statistics.median(gaps)) if gaps else None,
                "max": _r(max(gaps)) if gaps else None,
            },
            "cancelled": self.cancelled,
            "cancellation_latency_ms": _r(self.cancellation_latency_ms),
            "cache_hits": self.cache_hits,
            "cache_lookups": self.cache_lookups,
        }


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)
