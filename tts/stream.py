"""Streaming TTS: phrases (or raw LLM deltas) in, ordered and labelled audio chunks out.

Synthesis is pulled: each time the consumer asks for a chunk, the engine runs one bounded step (a
window of tens of ms) in a worker thread, so audio flows as fast as playout takes it and the first
chunk is ready after one small window, not after a whole phrase (see `tts.piper_engine`).

Cancellation has two doors and one rule. `cancel(request_id)` or cancelling the consumer's task
both stop the request within the phrase in flight; once the request is acknowledged no chunk of it
is ever emitted, and the time from the cancel request to the acknowledgement is recorded in the
request's `TTSMetrics`. The step already running in its thread is abandoned (its audio discarded);
nothing waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from pipeline.stages import TTSEngine
from tts.cache import PhraseCache
from tts.chunks import AudioChunk, TTSMetrics, words_in_share
from tts.text import PhraseSplitter, normalize_for_speech

log = logging.getLogger(__name__)

_END = object()


@dataclass
class _Request:
    metrics: TTSMetrics
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_at: float | None = None  # perf_counter of the cancel request
    acked: bool = False
    busy: bool = False  # the generator is running (awaiting synthesis), not parked at a yield
    finished: bool = False  # the final chunk has been handed out


class _Cancelled(Exception):
    pass


class StreamingTTS:
    """Wraps one engine; `stream_text` for LLM deltas, `stream_phrases` for ready phrases, `speak` for full text.

    `first_chunk_ms` sizes the first chunk of a request (shorter = earlier first audio); later
    chunks are `chunk_ms` long (the last chunk of a phrase may be shorter).
    """

    def __init__(
        self,
        engine: TTSEngine,
        cache: PhraseCache | None = None,
        chunk_ms: int = 200,
        working: Callable | None = None,
        first_chunk_ms: int | None = None,
    ) -> None:
        self.engine = engine
        self.cache = cache if cache is not None else PhraseCache()
        self._warming = False  # `warm`: what is synthesized now goes straight into the kept cache
        self.chunk_samples = engine.sample_rate * chunk_ms // 1000
        self.first_chunk_samples = engine.sample_rate * (first_chunk_ms or chunk_ms) // 1000
        self._working = working  # clock.working, so a virtual clock knows synthesis is real work
        self._active: dict[str, _Request] = {}
        self.last_metrics: TTSMetrics | None = None

    @property
    def voice_id(self) -> str:
        return self.engine.voice_id

    def new_request_id(self) -> str:
        return uuid.uuid4().hex[:12]

    def cancel(self, request_id: str) -> bool:
        """Stop a request within the phrase in flight. True if this call cancelled it; False (and
        nothing changes) for an unknown, finished or already cancelled request."""
        req = self._active.get(request_id)
        if req is None or req.finished or req.cancel_at is not None:
            return False
        req.cancel_at = time.perf_counter()
        if not req.busy:
            # Parked at a yield: the generator checks the flag before anything else when resumed,
            # so from this instant no chunk of the request can be emitted.
            self._ack(req)
        req.wake.set()
        return True

    def metrics(self, request_id: str) -> TTSMetrics | None:
        """The live metrics of a request in progress (None once it has ended)."""
        req = self._active.get(request_id)
        return req.metrics if req else None

    async def warm(self, phrases: list[str]) -> None:
        """Synthesize `phrases` into the cache, kept, so that saying them later (a greeting, an IVR
        prompt) starts with no synthesis. Give the phrases as the reply will cut them."""

        async def source() -> AsyncIterator[str]:
            for p in phrases:
                yield p

        self._warming = True
        try:
            async with contextlib.aclosing(self.stream_phrases(source())) as chunks:
                async for _ in chunks:
                    pass
        finally:
            self._warming = False

    async def speak(self, text: str, request_id: str | None = None) -> AsyncGenerator[AudioChunk, None]:
        """Full text in: split into phrases (first one short), then stream."""

        async def one() -> AsyncIterator[str]:
            yield text

        async with contextlib.aclosing(self.stream_text(one(), request_id)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def stream_text(
        self, deltas: AsyncIterable[str], request_id: str | None = None, on_phrase: Callable[[str], None] | None = None
    ) -> AsyncGenerator[AudioChunk, None]:
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

        async with contextlib.aclosing(self.stream_phrases(phrases(), request_id)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def stream_phrases(
        self, phrases: AsyncIterable[str], request_id: str | None = None
    ) -> AsyncGenerator[AudioChunk, None]:
        """Ready phrases in (already normalized or not), chunks out; always ends with a final chunk
        unless cancelled. Close the generator (`contextlib.aclosing`) when abandoning it early, so
        the request ends at once rather than when it is garbage-collected."""
        rid = request_id or self.new_request_id()
        m = TTSMetrics(request_id=rid, voice_id=self.voice_id)
        req = _Request(m)
        self._active[rid] = req
        self.last_metrics = m
        index = 0
        offset = 0.0
        first_text_at: float | None = None
        last_ready: float | None = None
        playhead: float | None = None  # where a player that started at the first chunk would be

        def emit(samples: np.ndarray, span: str) -> AudioChunk:
            nonlocal index, offset, last_ready, playhead
            now = time.perf_counter()
            if m.ttfa_ms is None:
                assert first_text_at is not None, "a chunk is emitted only after a phrase's text arrived"
                m.ttfa_ms = (now - first_text_at) * 1000
                playhead = now
            assert playhead is not None, "the first chunk (ttfa) set the playhead"
            if last_ready is not None:
                m.chunk_gaps_ms.append((now - last_ready) * 1000)
            if now > playhead:  # the player would have run dry waiting for this chunk
                if index > 0:
                    m.underruns += 1
                    m.underrun_ms += (now - playhead) * 1000
                playhead = now
            last_ready = now
            chunk = AudioChunk(rid, self.voice_id, index, offset, samples, self.engine.sample_rate, span)
            index += 1
            offset += chunk.duration
            playhead += chunk.duration
            m.chunks += 1
            m.generated_audio_ms += chunk.duration * 1000
            return chunk

        try:
            phrase_iter = phrases.__aiter__()
            while True:
                raw = await self._guarded(req, phrase_iter.__anext__(), stop=StopAsyncIteration)
                if raw is _END:
                    break
                text = normalize_for_speech(raw)
                if not text:
                    continue
                if first_text_at is None:
                    first_text_at = time.perf_counter()
                key = (self.voice_id, self.engine.options, text)
                m.cache_lookups += 1
                cached = self.cache.get(key)
                if cached is not None:
                    m.cache_hits += 1
                    pieces: Iterator | None = None
                    source = _pieces_of(cached)
                else:
                    # The first window of a phrase is small only when a listener would be waiting
                    # for it; with audio buffered ahead, bigger windows cost less (fewer margins).
                    ahead = (playhead - time.perf_counter()) if playhead is not None else 0.0
                    first = self.first_chunk_samples if index == 0 else max(
                        self.chunk_samples, min(int(ahead / 2 * self.engine.sample_rate), self.engine.sample_rate)
                    )
                    pieces = self._engine_pieces(text, first)
                    source = None
                words = text.split()
                said = 0  # words handed out in spans so far
                done_samples = 0
                buf: list[np.ndarray] = []
                held = 0
                kept: list[np.ndarray] = []
                total = 0
                while True:
                    if source is not None:
                        item = next(source, _END)
                    else:
                        assert pieces is not None, "no cached audio: the engine's pieces were set above"
                        item = await self._step(req, pieces, m)
                    if item is not _END:
                        piece, total = cast("tuple[np.ndarray, int]", item)  # not _END: a (samples, phrase total) piece
                        if piece.size:
                            buf.append(piece)
                            held += piece.size
                            if source is None:
                                kept.append(piece)
                                m.synthesized_audio_ms += piece.size * 1000 / self.engine.sample_rate
                    last = item is _END
                    want = self.first_chunk_samples if index == 0 else self.chunk_samples
                    while held >= want or (last and held):
                        samples = np.concatenate(buf) if len(buf) > 1 else buf[0]
                        if held - want < self.chunk_samples // 4 and done_samples + held >= total:
                            want = held  # the phrase's tail: no sliver of a chunk after this one
                        out, rest = samples[:want], samples[want:]
                        buf, held = ([rest], rest.size) if rest.size else ([], 0)
                        done_samples += out.size
                        upto = len(words) if last and not held else words_in_share(
                            words, done_samples / max(total, done_samples, 1))
                        span, said = " ".join(words[said:upto]), max(said, upto)
                        self._check(req)
                        yield emit(out, span)
                        self._check(req)
                        want = self.chunk_samples
                    if last:
                        break
                if source is None and kept:
                    self.cache.put(key, np.concatenate(kept), keep=self._warming)
            self._check(req)
            req.finished = True
            yield AudioChunk(rid, self.voice_id, index, offset, np.zeros(0, np.float32), self.engine.sample_rate,
                             "", final=True)
        except _Cancelled:
            return  # acknowledged in _ack: nothing more is emitted
        except (asyncio.CancelledError, GeneratorExit):
            # The consumer's task was cancelled (or it closed us): acknowledge now.
            if not req.finished:
                if req.cancel_at is None:
                    req.cancel_at = time.perf_counter()
                self._ack(req)
            raise
        finally:
            self._active.pop(rid, None)

    # --- internals ----------------------------------------------------------------------------
    def _ack(self, req: _Request) -> None:
        if req.acked:
            return
        req.acked = True
        req.metrics.cancelled = True
        assert req.cancel_at is not None, "a request is acknowledged only after its cancel was requested"
        req.metrics.cancellation_latency_ms = (time.perf_counter() - req.cancel_at) * 1000

    def _check(self, req: _Request) -> None:
        if req.cancel_at is not None:
            self._ack(req)
            raise _Cancelled

    async def _guarded(self, req: _Request, awaitable, stop: type[BaseException] | None = None):
        """Await `awaitable` unless the request is cancelled first (then ack and stop at once)."""
        self._check(req)
        fut = asyncio.ensure_future(awaitable)
        if fut.done():
            return _result(fut, stop)
        waiter = asyncio.ensure_future(req.wake.wait())
        req.busy = True
        try:
            await asyncio.wait((fut, waiter), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            _abandon(fut)
            raise
        finally:
            req.busy = False
            waiter.cancel()
        if req.cancel_at is not None:
            _abandon(fut)
            self._check(req)
        return _result(fut, stop)

    async def _step(self, req: _Request, pieces: Iterator, m: TTSMetrics):
        """One bounded synthesis step in a worker thread."""
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        if self._working is not None:
            async with self._working():
                item = await self._guarded(req, loop.run_in_executor(None, next, pieces, _END))
        else:
            item = await self._guarded(req, loop.run_in_executor(None, next, pieces, _END))
        m.synth_ms += (time.perf_counter() - t0) * 1000
        return item

    def _engine_pieces(self, text: str, first_samples: int) -> Iterator[tuple[np.ndarray, int]]:
        stream = getattr(self.engine, "stream", None)
        try:
            if stream is not None:
                yield from stream(text, first_samples=first_samples)
            else:
                audio = self.engine.synthesize(text)
                yield audio, audio.size
        except Exception as exc:  # a phrase the voice cannot say must not end the reply
            log.warning("TTS could not speak %r (%s); skipped", text[:80], exc)


def _pieces_of(audio: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
    yield audio, audio.size


def _result(fut: asyncio.Future, stop: type[BaseException] | None):
    try:
        return fut.result()
    except BaseException as exc:
        if stop is not None and isinstance(exc, stop):
            return _END
        raise


def _abandon(fut: asyncio.Future) -> None:
    """Let a step we no longer want finish on its own, without an 'exception never retrieved'."""
    if fut.done():
        if not fut.cancelled():
            fut.exception()
        return
    fut.cancel()  # a thread step cannot be interrupted: it ends within its window, result dropped
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
