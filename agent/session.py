"""A session wires one transport to listening, the agent and speaking.

    audio input ──frames──▶ EchoCanceller ──▶ VADSegmenter ──events──▶ TurnManager ──chunks──▶ Playout ──▶ out
                                  ▲ played reference                      ▲ │                       │
                                  │                           transcripts │ ▼ events, audio         │
                                  │                               StreamingTranscriber              │
                                  └─────────────────────────────────────────────────────────────────┘

The stages are built by `AgentStack.new_session` (agent/stack.py); the session only runs them. Per
input frame: echo removal, the VAD's events to the turn manager, then `turns.listen`, the media-time
tick that lets the transcriber run an interim pass on the utterance so far (the manager owns the
transcriber, since it also feeds it the VAD events in order).

The session owns the tasks of one conversation inside one TaskGroup (input loop, playout); the
turn manager owns the per-reply scopes (agent/reply.py). When the input ends, the session waits for
the reply in flight to finish playing, then stops everything it started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Callable

from agent.turns import TurnManager
from pipeline.audio import AudioFrame, sanitize
from pipeline.clock import Clock
from stt.echo import EchoCanceller
from stt.vad import VADSegmenter
from tts.playout import Playout

log = logging.getLogger(__name__)


class Session:
    def __init__(
        self, segmenter: VADSegmenter, turns: TurnManager, playout: Playout, clock: Clock,
        echo: EchoCanceller | None = None, on_closed: Callable[[], None] | None = None,
        tap: Callable[[AudioFrame], None] | None = None,
    ) -> None:
        self.segmenter, self.turns, self.playout, self.clock = segmenter, turns, playout, clock
        self.echo = echo  # fed the played audio by the playout's sink (see AgentStack.new_session)
        self.bad_samples = 0
        self.hung_up = False  # the agent ended the call (end_call): the input stops, no new turn starts
        self.on_closed = on_closed  # told once when run() ends (the stack's metrics count calls)
        self.tap = tap  # sees each microphone frame as it came in (a call recording's caller channel)

    async def user_typed(self, text: str) -> None:
        """A user turn that came as text (keypad digits from a phone edge): see `TurnManager.user_typed`."""
        await self.turns.user_typed(text)

    def hang_up(self) -> None:
        """Stop reading the input (from inside the reply that said goodbye, once it was played)."""
        self.hung_up = True

    async def run(self, frames: AsyncIterable[AudioFrame]) -> None:
        async with asyncio.TaskGroup() as tg:
            playout = tg.create_task(self.playout.run(), name="playout")
            self.turns.greet()  # the agent speaks first, if configured
            try:
                async for frame in frames:
                    if self.hung_up:
                        break
                    clean, bad = sanitize(frame.samples)
                    if bad:
                        self.bad_samples += bad
                        frame = AudioFrame(clean, frame.sample_rate, frame.timestamp)
                    if self.tap is not None:
                        self.tap(frame)
                    if self.echo is not None:
                        frame = self.echo.process(frame)
                    self.segmenter.set_min_speech_ms(self.turns.min_speech_ms(self.segmenter.options.min_speech_ms))
                    for event in self.segmenter.process(frame):
                        await self.turns.handle(event)
                    self.turns.listen(frame.end, self.segmenter.utterance_audio)  # interim STT, backchannel timer
                if not self.hung_up:
                    for event in self.segmenter.flush(self.clock.now()):
                        await self.turns.handle(event)
                await self.turns.wait_reply()
            finally:
                await self.turns.aclose()
                playout.cancel()
                if self.on_closed is not None:
                    self.on_closed()
        if self.bad_samples:
            log.warning("input had %d NaN/inf samples; they were replaced with silence", self.bad_samples)

    def idle(self) -> bool:
        return self.turns.idle()
