"""Fakes for fast, deterministic tests of the agent's logic on a virtual clock (no models)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from agent.llm import LLMError
from pipeline.audio import AudioFrame
from pipeline.clock import Clock
from pipeline.stages import VoiceOptions


@dataclass
class FakeTranscription:
    text: str


class FakeSTT:
    """Returns scripted transcripts in order; records the audio lengths it was given."""

    def __init__(self, texts: list[str], delay_s: float = 0.0) -> None:
        self.texts = list(texts)
        self.calls: list[int] = []
        self.delay_s = delay_s  # real seconds per call (runs in a worker thread, as Whisper does)

    def transcribe(self, audio: np.ndarray) -> FakeTranscription:
        self.calls.append(len(audio))
        time.sleep(self.delay_s)
        return FakeTranscription(self.texts.pop(0) if self.texts else "")


class FakeLLM:
    """Streams a scripted reply word by word, `token_s` apart on the clock; can fail mid-stream."""

    def __init__(self, clock: Clock, replies: list[str], token_s: float = 0.03, fail_after: int | None = None,
                 ttft_s: float = 0.1) -> None:
        self.clock, self.replies, self.token_s = clock, list(replies), token_s
        self.fail_after, self.ttft_s = fail_after, ttft_s
        self.requests: list[list[dict]] = []
        self.closed = 0
        self.prefilled: list[list[dict]] = []  # prompts read ahead by prefill()
        self.prefill_s = 0.05

    async def prefill(self, messages: list[dict]) -> bool:
        self.prefilled.append(messages)
        await self.clock.sleep_until(self.clock.now() + self.prefill_s)
        return True

    async def stream(self, messages: list[dict]):
        self.requests.append(messages)
        reply = self.replies.pop(0) if self.replies else "Okay."
        try:
            await self.clock.sleep_until(self.clock.now() + self.ttft_s)
            for i, word in enumerate(reply.split(" ")):
                if self.fail_after is not None and i >= self.fail_after:
                    raise LLMError("LLM endpoint http://fake/v1 failed: connection reset")
                yield word if i == 0 else " " + word
                await self.clock.sleep_until(self.clock.now() + self.token_s)
        finally:
            self.closed += 1


class FakeTTSEngine:
    """A 'voice' that says every character for 60 ms as a quiet tone (so audio length tracks text)."""

    voice_id = "fake-voice"
    sample_rate = 16_000
    options = VoiceOptions()

    def __init__(self) -> None:
        self.calls: list[str] = []

    def synthesize(self, text: str) -> np.ndarray:
        self.calls.append(text)
        n = int(len(text) * 0.06 * self.sample_rate)
        return (0.1 * np.sin(np.arange(n) * 0.05)).astype(np.float32)


@dataclass
class RecordingSink:
    """Collects what the playout released, by media time."""

    frames: list[AudioFrame] = field(default_factory=list)

    def __call__(self, frame: AudioFrame) -> None:
        self.frames.append(frame)

    def voiced_times(self) -> list[float]:
        return [f.timestamp for f in self.frames if np.any(f.samples)]


async def settle(clock: Clock, seconds: float) -> None:
    """Let the virtual clock run for `seconds` of media time."""
    await clock.sleep_until(clock.now() + seconds)
    await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def fake_llm_endpoint(chat):
    """A fake OpenAI-compatible server on 127.0.0.1 (aiohttp) that lists one model and answers
    chat completions with `chat(request)`; yields its `/v1` URL."""
    from aiohttp import web

    async def models(_):
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "x"}]})

    app = web.Application()
    app.add_routes([web.get("/v1/models", models), web.post("/v1/chat/completions", chat)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
    finally:
        await runner.cleanup()


class FakeSession:
    """A browser session without models: consumes the microphone, plays silence through a real
    Playout, and says it is listening once the first frame arrives."""

    def __init__(self, clock: Clock, sink, output_rate: int, on_event) -> None:
        from tts.playout import Playout

        self.playout = Playout(clock, sink, sample_rate=output_rate)
        self.on_event = on_event
        self.frames = 0

    async def run(self, frames) -> None:
        async with asyncio.TaskGroup() as tg:
            playout = tg.create_task(self.playout.run())
            try:
                async for _ in frames:
                    self.frames += 1
                    if self.frames == 1:
                        self.on_event({"type": "state", "state": "listening"})
            finally:
                playout.cancel()


class FakeStack:
    """What `rejoinder serve` needs from `agent.stack.AgentStack`: sessions, here `FakeSession`s."""

    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []

    def new_session(self, clock, sink, output_rate=48_000, on_event=None, turn_options=None) -> FakeSession:
        s = FakeSession(clock, sink, output_rate, on_event or (lambda e: None))
        self.sessions.append(s)
        return s
