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
    ttfa_ms: float | None = None  # first (non-empty) text handed in → first audio chunk ready
    synth_ms: float = 0.0  # wall time spent waiting on synthesis steps
    synthesized_audio_ms: float = 0.0  # audio made by the engine (cache hits excluded)
    generated_audio_ms: float = 0.0  # audio emitted in chunks (cache hits included)
    chunks: int = 0
    # Cadence: gaps between consecutive chunks becoming ready (across phrases too). When the consumer
    # pulls as fast as it can (a benchmark), a gap is synthesis time; in a session it is paced by
    # playout. Underruns: chunks that a player starting at the first chunk and playing without a
    # pause would have waited for (after the first), and the total silence they would have caused.
    chunk_gaps_ms: list[float] = field(default_factory=list)
    underruns: int = 0
    underrun_ms: float = 0.0
    cancelled: bool = False
    cancellation_latency_ms: float | None = None  # cancel requested → the request acknowledged it
    cache_hits: int = 0
    cache_lookups: int = 0

    @property
    def rtf(self) -> float | None:
        """Real-time factor of the engine: synthesis time / synthesized audio (cache hits excluded)."""
        return self.synth_ms / self.synthesized_audio_ms if self.synthesized_audio_ms else None

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
            "underruns": self.underruns,
            "underrun_ms": _r(self.underrun_ms),
            "cancelled": self.cancelled,
            "cancellation_latency_ms": _r(self.cancellation_latency_ms),
            "cache_hits": self.cache_hits,
            "cache_lookups": self.cache_lookups,
        }


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def words_in_share(words: list[str], share: float) -> int:
    """How many of a phrase's words lie in its first `share` of audio: a word counts once over
    half of it is in. Speech time follows letters (phonemes) more than word count, so positions
    go by characters: "a" takes far less time than "unfortunately"."""
    if share <= 0 or not words:
        return 0
    if share >= 1:
        return len(words)
    mids, at = [], 0
    for w in words:
        mids.append(at + len(w) / 2)
        at += len(w) + 1  # the space: a short pause
    cut = share * (at - 1)
    return sum(1 for mid in mids if mid <= cut)
