"""Agent audio out: buffer chunks, release them at real-time pace, know exactly what was heard.

Every edge (file timeline, WebRTC track, speaker) plays through a `Playout`: it is the one place
that knows the played position, so barge-in flushes here and heard text is computed here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.audio import AudioFrame, StreamResampler
from pipeline.clock import Clock
from tts.chunks import AudioChunk, words_in_share

log = logging.getLogger(__name__)

Sink = Callable[[AudioFrame], Awaitable[None] | None]


@dataclass
class _Request:
    resampler: StreamResampler
    chunks: list[tuple[AudioChunk, int, int]] = field(default_factory=list)  # chunk, out samples, played
    heard: dict[int, int] = field(default_factory=dict)  # chunk slot → samples the far end confirmed (marks)
    queued: int = 0  # samples queued, not yet played
    final_seen: bool = False
    carry: str = ""  # text of chunks whose audio the resampler has not released yet
    first_played_at: float | None = None
    stopped_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Playout:
    """Paced audio output with a played-position ledger per TTS request."""

    def __init__(
        self, clock: Clock, sink: Sink, sample_rate: int = 24_000, frame_ms: int = 20, max_ahead_s: float = 1.5
    ) -> None:
        self.clock = clock
        self.sink = sink
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.frame_s = frame_ms / 1000
        self.max_ahead = int(max_ahead_s * sample_rate)
        self._queue: deque[tuple[str, int, np.ndarray]] = deque()  # request id, chunk slot, samples
        self._queued = 0
        self._requests: dict[str, _Request] = {}
        self._space = asyncio.Event()
        self._space.set()
        self.underruns = 0
        self._last_rid: str | None = None
        # Set by an edge whose consumer paces itself and pulls frames (aiortc's recv): then `pull`
        # releases frames and `run` only waits, so there is one pacer, not two drifting apart.
        self.paced_by_consumer = False
        # Set by an edge whose far end buffers audio and confirms what it played (Twilio's `mark`
        # echoes): then heard text counts only confirmed frames, not what left this process.
        self.confirmed_by_far_end = False
        self.frames_out = 0  # frames released so far; frame n is confirmed by `confirm(n)`
        self._unconfirmed: deque[tuple[int, list[tuple[str, int, int]]]] = deque()  # frame, (rid, slot, n)
        self.on_flush: Callable[[], None] | None = None  # the edge's own flush (Twilio: send `clear`)

    # --- producer side -------------------------------------------------------------------------
    async def play(self, chunk: AudioChunk) -> None:
        """Queue a chunk; waits while more than `max_ahead_s` is buffered (bounded memory)."""
        req = self._requests.get(chunk.request_id)
        if req is None:
            req = self._requests[chunk.request_id] = _Request(StreamResampler(chunk.sample_rate, self.sample_rate))
        if req.done.is_set() and req.stopped_at is not None:
            return  # stale chunk of a flushed request: dropped by id
        samples = req.resampler(chunk.samples, last=chunk.final)
        if req.carry or not samples.size:
            # the resampler delays audio: words of a chunk with no output yet go with the next output
            text = f"{req.carry} {chunk.text}".strip()
            req.carry = "" if samples.size else text
            chunk = dataclasses.replace(chunk, text=text)
        slot = len(req.chunks)
        req.chunks.append((chunk, len(samples), 0))
        if samples.size:
            self._queue.append((chunk.request_id, slot, samples))
            self._queued += len(samples)
            req.queued += len(samples)
        if chunk.final:
            req.final_seen = True
            if req.queued == 0:
                self._finish(req)
        while self._queued > self.max_ahead:
            self._space.clear()
            await self._space.wait()

    def flush(self, request_id: str | None = None) -> None:
        """Drop queued audio at once (barge-in). With an id, only that request's audio."""
        keep = deque(item for item in self._queue if request_id is not None and item[0] != request_id)
        self._queue = keep
        self._queued = sum(len(s) for _, _, s in keep)
        for rid, req in self._requests.items():
            if request_id in (None, rid) and not req.done.is_set():
                req.queued = 0
                req.final_seen = True
                self._finish(req)
        # frames sent but not confirmed were dropped by the far end's buffer (the edge clears it)
        self._unconfirmed = deque((n, [p for p in parts if request_id not in (None, p[0])])
                                  for n, parts in self._unconfirmed)
        self._space.set()
        if self.on_flush is not None:
            self.on_flush()

    def confirm(self, frame: int) -> None:
        """The far end has played every frame up to `frame` (a `frames_out` value it was sent)."""
        while self._unconfirmed and self._unconfirmed[0][0] <= frame:
            _, parts = self._unconfirmed.popleft()
            for rid, slot, n in parts:
                req = self._requests.get(rid)
                if req is not None:
                    req.heard[slot] = req.heard.get(slot, 0) + n

    async def drain(self, request_id: str) -> None:
        """Wait until everything of a request has been played (or flushed)."""
        req = self._requests.get(request_id)
        if req is not None:
            await req.done.wait()

    # --- what was heard ------------------------------------------------------------------------
    def first_played_at(self, request_id: str) -> float | None:
        req = self._requests.get(request_id)
        return req.first_played_at if req else None

    def stopped_at(self, request_id: str) -> float | None:
        req = self._requests.get(request_id)
        return req.stopped_at if req else None

    def heard_text(self, request_id: str) -> str:
        """The words of a request actually played: whole chunks, plus the played share of a partial one."""
        req = self._requests.get(request_id)
        if req is None:
            return ""
        words: list[str] = []
        for slot, (chunk, total, sent) in enumerate(req.chunks):
            played = req.heard.get(slot, 0) if self.confirmed_by_far_end else sent
            w = chunk.text.split()
            if total and played >= total:
                words += w
            elif total and played:
                words += w[: words_in_share(w, played / total)]
        return " ".join(words)

    @property
    def playing_request(self) -> str | None:
        """Id of the request whose audio was played last (the reply the user is hearing)."""
        return self._last_rid

    def forget(self, request_id: str) -> None:
        """Drop the ledger of a finished request, and any of its audio still queued: a reply
        cancelled without a flush (a session closing mid-reply) must not play on, unowned."""
        if any(item[0] == request_id for item in self._queue):
            log.debug("dropping queued audio of forgotten request %s", request_id)
            self.flush(request_id)
        self._requests.pop(request_id, None)

    @property
    def buffered_s(self) -> float:
        return self._queued / self.sample_rate

    # --- consumer side -------------------------------------------------------------------------
    def pull(self) -> AudioFrame:
        """The next frame, for a consumer that paces itself; the sink sees it too (sync sinks only)."""
        t = self.clock.now()
        frame = AudioFrame(self._next_frame(t), self.sample_rate, t)
        self.sink(frame)
        return frame

    async def run(self) -> None:
        """Release one frame every frame period on the clock, silence when there is nothing to play."""
        if self.paced_by_consumer:
            await asyncio.Event().wait()  # `pull` does the work for as long as the session lives
        t = self.clock.now()
        while True:
            await self.clock.sleep_until(t)
            frame = self._next_frame(t)
            res = self.sink(AudioFrame(frame, self.sample_rate, t))
            if asyncio.iscoroutine(res):
                await res
            t += self.frame_s

    def _next_frame(self, t: float) -> np.ndarray:
        out = np.zeros(self.frame_samples, np.float32)
        filled = 0
        parts: list[tuple[str, int, int]] = []
        while filled < self.frame_samples and self._queue:
            rid, slot, samples = self._queue[0]
            take = min(len(samples), self.frame_samples - filled)
            out[filled : filled + take] = samples[:take]
            req = self._requests[rid]
            if req.first_played_at is None:
                req.first_played_at = t + filled / self.sample_rate
            chunk, total, played = req.chunks[slot]
            req.chunks[slot] = (chunk, total, played + take)
            if self.confirmed_by_far_end:
                parts.append((rid, slot, take))
            req.queued -= take
            self._queued -= take
            filled += take
            if take == len(samples):
                self._queue.popleft()
            else:
                self._queue[0] = (rid, slot, samples[take:])
            if req.queued == 0 and req.final_seen:
                req.stopped_at = t + filled / self.sample_rate
                self._finish(req)
            self._last_rid = rid
        if parts:
            self._unconfirmed.append((self.frames_out, parts))
        self.frames_out += 1
        if filled < self.frame_samples and self._mid_reply():
            self.underruns += 1  # the reply is not over, but there was nothing to play
        if self._queued <= self.max_ahead:
            self._space.set()
        return out

    def _mid_reply(self) -> bool:
        req = self._requests.get(self._last_rid) if self._last_rid else None
        return req is not None and not req.done.is_set() and not req.final_seen

    def _finish(self, req: _Request) -> None:
        if req.stopped_at is None:
            req.stopped_at = self.clock.now()
        req.done.set()
