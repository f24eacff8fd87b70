"""The small protocols every stage speaks: what a speech recogniser, a voice and an LLM look like.

The ground floor: stages (`stt/`, `tts/`), edges (`transport/`) and the agent all meet here, so none
has to import another to agree on a shape. A new speech engine is one file implementing
`STTEngine` (registered in `stt/engines.py`); a new voice, one file implementing `TTSEngine`
(registered in `tts/engines.py`): `stt.transcriber.StreamingTranscriber` gives the first interim and
speculative passes, `tts.stream.StreamingTTS` incremental input, chunking, cancellation, caching and
metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    compute_s: float  # wall time of the call
    audio_s: float
    path: str = "full"  # Whisper: short | full | fallback (short output rejected, then full)


class STTEngine(Protocol):
    """Blocking whole-utterance transcription of 16 kHz mono float32 audio (run in a worker thread)."""

    def transcribe(self, audio: np.ndarray) -> TranscriptionResult: ...


class LLM(Protocol):
    """A chat model that streams text deltas. Optional: `async prefill(messages) -> bool` reads a
    prompt into the server's cache ahead of the request (agent/llm.py)."""

    def stream(self, messages: list[dict]) -> AsyncIterator[str]: ...


class CallControl(Protocol):
    """What a tool can do to the call, whichever edge carries it. Each edge implements what it can:
    the browser ends the WebRTC call and shows a transfer or the digits on the page; a phone edge
    sends BYE, REFER and RFC 4733 events. `say` speaks through the current reply."""

    async def hang_up(self, reason: str = "") -> None:
        """End the call; called from inside the reply that said goodbye, once it has been played, so
        an edge must not wait here for the session to stop (it would wait for itself): it starts the
        teardown and returns."""
        ...

    async def transfer(self, target: str) -> bool:
        """Hand the caller to `target` (a number, a SIP URI, a queue name); False if refused."""
        ...

    async def send_dtmf(self, digits: str) -> None:
        """Send telephone keypad digits (0-9, *, #, A-D) to the far end."""
        ...


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
