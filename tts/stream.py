"""Streaming TTS: phrases (or raw LLM deltas) in, ordered and labelled audio chunks out.

Synthesis runs in a worker thread, one phrase at a time, while the previous phrase's chunks are
being played. Cancellation is task cancellation: the consumer's scope is cancelled, the phrase in
flight is abandoned (its audio is discarded when the thread returns), and nothing more is emitted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import AsyncIterable, AsyncIterator, Callable

import numpy as np

from tts.cache import PhraseCache
from tts.chunks import AudioChunk, TTSMetrics
from tts.engine import TTSEngine
from tts.text import PhraseSplitter, normalize_for_speech

log = logging.getLogger(__name__)


class StreamingTTS:
    """Wraps one engine; `stream_text` for LLM deltas, `stream_phrases` for ready phrases, `speak` for full text."""

    def __init__(
        self,
        engine: TTSEngine,
        cache: PhraseCache | None = None,
        chunk_ms: int = 200,
        working: Callable | None = None,
    ) -> None:
        self.engine = engine
        self.cache = cache if cache is not None else PhraseCache()
        self.chunk_samples = engine.sample_rate * chunk_ms // 1000
        self._working = working  # clock.working, so a virtual clock knows synthesis is real work
        self._cancelled: set[str] = set()
        self._active: dict[str, TTSMetrics] = {}
        self.last_metrics: TTSMetrics | None = None

    @property
    def voice_id(self) -> str:
        return self.engine.voice_id

    def new_request_id(self) -> str:
        return uuid.uuid4().hex[:12]

    def cancel(self, request_id: str) -> bool:
        """Stop a request at the next chunk boundary. Returns False for an unknown or finished request."""
        metrics = self._active.get(request_id)
        if metrics is None:
            return False
        self._cancelled.add(request_id)
        return True

    async def speak(self, text: str, request_id: str | None = None) -> AsyncIterator[AudioChunk]:
        """Full text in: split into phrases (first one short), then stream."""

        async def one() -> AsyncIterator[str]:
            yield text

        async for chunk in self.stream_text(one(), request_id):
            yield chunk

    async def stream_text(
        self, deltas: AsyncIterable[str], request_id: str | None = None, on_phrase: Callable[[str], None] | None = None
    ) -> AsyncIterator[AudioChunk]:
        """Incremental text in (LLM deltas as they arrive); phrases are cut and spoken as soon as complete."""

        async def phrases() -> AsyncIterator[str]:
            splitter = PhraseSplitter()
            async for delta in deltas:
                for p in splitter.push(delta):
                    if on_phrase:
                        on_phrase(p)
                    yield p
            for p in splitter.flush():
                if on_phrase:
                    on_phrase(p)
                yield p

        async for chunk in self.stream_phrases(phrases(), request_id):
            yield chunk

    async def stream_phrases(
        self, phrases: AsyncIterable[str], request_id: str | None = None
    ) -> AsyncIterator[AudioChunk]:
        """Ready phrases in (already normalized or not), chunks out; always ends with a final chunk
        unless cancelled."""
        rid = request_id or self.new_request_id()
        m = TTSMetrics(request_id=rid, voice_id=self.voice_id)
        self._active[rid] = m
        self.last_metrics = m
        index = 0
        offset = 0.0
        first_text_at: float | None = None
        last_ready: float | None = None
        lookups0, hits0 = self.cache.lookups, self.cache.hits
        try:
            async for raw in phrases:
                text = normalize_for_speech(raw)
                if not text:
                    continue
                if first_text_at is None:
                    first_text_at = time.perf_counter()
                if rid in self._cancelled:
                    break
                audio = await self._synthesize(text, m)
                if rid in self._cancelled:
                    break
                for samples, span in _slice(audio, text, self.chunk_samples):
                    now = time.perf_counter()
                    if m.ttfa_ms is None:
                        m.ttfa_ms = (now - first_text_at) * 1000
                    if last_ready is not None:
                        m.chunk_gaps_ms.append((now - last_ready) * 1000)
                    last_ready = now
                    chunk = AudioChunk(rid, self.voice_id, index, offset, samples, self.engine.sample_rate, span)
                    index += 1
                    offset += chunk.duration
                    m.chunks += 1
                    m.generated_audio_ms += chunk.duration * 1000
                    yield chunk
                    if rid in self._cancelled:
                        break
                if rid in self._cancelled:
                    break
            if rid not in self._cancelled:
                yield AudioChunk(rid, self.voice_id, index, offset, np.zeros(0, np.float32),
                                 self.engine.sample_rate, "", final=True)
        except (asyncio.CancelledError, GeneratorExit):
            m.cancelled = True
            raise
        finally:
            if rid in self._cancelled:
                m.cancelled = True
            self._cancelled.discard(rid)
            self._active.pop(rid, None)
            m.cache_lookups = self.cache.lookups - lookups0
            m.cache_hits = self.cache.hits - hits0

    async def _synthesize(self, text: str, m: TTSMetrics) -> np.ndarray:
        key = (self.voice_id, self.engine.options, text)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        if self._working is not None:
            async with self._working():
                audio = await asyncio.to_thread(self._safe_synth, text)
        else:
            audio = await asyncio.to_thread(self._safe_synth, text)
        m.synth_ms += (time.perf_counter() - t0) * 1000
        if audio.size:
            self.cache.put(key, audio)
        return audio

    def _safe_synth(self, text: str) -> np.ndarray:
        try:
            return self.engine.synthesize(text)
        except Exception as exc:  # a phrase the voice cannot say must not end the reply
            log.warning("TTS could not speak %r (%s); skipped", text[:80], exc)
            return np.zeros(0, np.float32)


def _slice(audio: np.ndarray, text: str, size: int):
    """Cut a phrase's audio into playable chunks, giving each the words it (roughly) speaks.

    Words are allocated in proportion to audio time, so a played position maps back to heard words
    within about a word.
    """
    if audio.size == 0:
        return
    words = text.split()
    n = max(1, -(-len(audio) // size))
    bounds = [round(len(words) * (i + 1) / n) for i in range(n)]
    prev = 0
    for i in range(n):
        span = " ".join(words[prev : bounds[i]])
        prev = bounds[i]
        yield audio[i * size : (i + 1) * size], span
