"""The shared fakes and helpers of the test suite: one fake per role, one scripted-conversation rig.

Test modules import from here (never from one another; tests/test_layout.py checks it), and each
module's docstring names the fakes it uses and the real components it runs. By role:

- STT engine: `FakeSTT` (for Whisper: scripted texts, or an answer computed from the audio; a real
  delay per call in its worker thread; records the calls).
- LLM: `FakeLLM` (for the LLM client: a scripted token stream on the clock, prefill, a failure
  mid-stream); `FakeLLMServer` (for an OpenAI-compatible server, aiohttp on 127.0.0.1: streams,
  fails, stalls, streams slowly; records requests), with `sse_chunk`.
- TTS engine: `FakeTTSEngine` (for the Piper voice: 60 ms of quiet tone per character).
- Clock: `HandClock` (moved by hand; injected sleeps recorded and skipped). `VirtualClock`
  (pipeline/clock.py) is the real media clock the other fakes run on.
- Edges: `RecordingSink` (the speaker side: collects the playout's frames); `silent_mic` and
  `offer_sdp` (a client's microphone and a real aiortc offer); `closed_port`.
- Agent stack: `FakeStack` / `FakeSession` (for `agent.stack.AgentStack` behind the server);
  `FakeSpeechStack` (the same, with the speech API's voice and recogniser).
- Conversation: `Rig` (the real turn manager, `StreamingTTS`, playout and conversation context on
  a `VirtualClock`, over `FakeSTT`, `FakeLLM` and `FakeTTSEngine`), with `AUDIO`, `REPLY`,
  `leftover_tasks`, `settle`.

Real clips live in tests/data (`DATA`; see tests/data/SOURCES.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.llm import LLMError
from pipeline.audio import AudioFrame
from pipeline.clock import Clock
from pipeline.stages import TranscriptionResult, VoiceOptions

if TYPE_CHECKING:
    from agent.turns import State, TurnOptions

DATA = Path(__file__).parent / "data"


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, for loose transcript comparisons."""
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()


def energetic_span(x: np.ndarray) -> tuple[float, float]:
    """First and last 30 ms of sound within 25 dB of the clip's loudest 10 ms (seconds from the start)."""
    frames = x[: len(x) // 160 * 160].reshape(-1, 160).astype(np.float64)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    run = np.convolve(db > db.max() - 25, np.ones(3), "valid") == 3
    idx = np.flatnonzero(run)
    return idx[0] * 0.01, (idx[-1] + 3) * 0.01


# --- STT -----------------------------------------------------------------------------------------


class FakeSTT:
    """The fake STT engine: what `stt.transcriber` calls in a worker thread, as it calls Whisper.

    Each call answers the next of `texts`; once they are used up (or with none), `answer(audio)`,
    which by default is "". So `FakeSTT(["hello", "stop"])` scripts a conversation, and
    `FakeSTT(answer=lambda audio: f"{len(audio)} samples")` says which audio a pass was given.
    `delay_s` is slept (real seconds, in the worker thread) per call. Records each call's audio
    length as it starts (`calls`) and how many ran at once (`active`, `max_active`).
    """

    def __init__(self, texts: Sequence[str] = (), *, answer: Callable[[np.ndarray], str] | None = None,
                 delay_s: float = 0.0) -> None:
        self.texts = list(texts)
        self.answer = answer or (lambda audio: "")
        self.delay_s = delay_s
        self.calls: list[int] = []
        self.active = self.max_active = 0
        self._lock = threading.Lock()

    def transcribe(self, audio: np.ndarray) -> TranscriptionResult:
        with self._lock:
            self.calls.append(len(audio))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            text = self.texts.pop(0) if self.texts else self.answer(audio)
        try:
            time.sleep(self.delay_s)
        finally:
            with self._lock:
                self.active -= 1
        return TranscriptionResult(text, self.delay_s, len(audio) / 16_000)


# --- LLM -----------------------------------------------------------------------------------------


class FakeLLM:
    """Streams a scripted reply word by word, `token_s` apart on the clock; can fail mid-stream."""

    def __init__(self, clock: Clock, replies: list[Any], token_s: float = 0.03, fail_after: int | None = None,
                 ttft_s: float = 0.1) -> None:
        self.clock, self.replies, self.token_s = clock, list(replies), token_s
        self.fail_after, self.ttft_s = fail_after, ttft_s
        self.requests: list[list[dict]] = []
        self.closed = 0
        self.prefilled: list[list[dict]] = []  # prompts read ahead by prefill()
        self.prefill_s = 0.05
        self.options: list[dict] = []  # each request's keyword arguments (grammar=, tools=)

    async def prefill(self, messages: list[dict]) -> bool:
        self.prefilled.append(messages)
        await self.clock.sleep_until(self.clock.now() + self.prefill_s)
        return True

    async def stream(self, messages: list[dict], **kw):
        """`kw`: what a tool-using reply adds (`grammar=` GBNF text, `tools=` OpenAI specs), recorded in
        `options`; a reply that is a dict {"name", "arguments"} is a native tool call."""
        self.requests.append(messages)
        self.options.append(kw)
        reply = self.replies.pop(0) if self.replies else "Okay."
        if isinstance(reply, dict):
            await self.clock.sleep_until(self.clock.now() + self.ttft_s)
            self.closed += 1
            yield {"name": reply["name"], "arguments": json.dumps(reply.get("arguments", {})), "id": "call-1"}
            return
        try:
            await self.clock.sleep_until(self.clock.now() + self.ttft_s)
            for i, word in enumerate(reply.split(" ")):
                if self.fail_after is not None and i >= self.fail_after:
                    raise LLMError("LLM endpoint http://fake/v1 failed: connection reset")
                yield word if i == 0 else " " + word
                await self.clock.sleep_until(self.clock.now() + self.token_s)
        finally:
            self.closed += 1


def sse_chunk(delta: dict[str, str]) -> bytes:
    """One server-sent chat-completion chunk carrying `delta`, as an OpenAI-compatible server sends it."""
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return f"data: {json.dumps(body)}\n\n".encode()


class FakeLLMServer:
    """The fake OpenAI-compatible endpoint: aiohttp on 127.0.0.1 (`port`, 0 for any), used as
    `async with FakeLLMServer(...) as server:`. It lists one model and answers chat completions the
    way the mode in the URL's first path segment says (`server.url(mode)`); `root` is the mode
    served at plain `/v1` (`server.url()`), or None to serve nothing there (so it answers 404).

    Modes: "ok" streams a role-only chunk (not a token), then `deltas`, then [DONE]; "fail" answers
    HTTP 500 ("model exploded"); "stall_headers" sends nothing for 30 s; "stall_body" sends the role
    chunk, then nothing; "slow" streams 1000 tokens 20 ms apart. A request that does not stream (a
    prefill) is answered with one plain-completion token. Unknown modes answer 404. Records every
    request's JSON (`requests`) and sets `disconnected` when a client hangs up mid-stream.
    """

    DELTAS = ("Hello", " there", ",", " friend", ".")

    def __init__(self, *, deltas: Sequence[str] = DELTAS, root: str | None = "ok", port: int = 0,
                 model: str = "fake") -> None:
        self.deltas, self.root, self.port, self.model = list(deltas), root, port, model
        self.requests: list[dict] = []
        self.disconnected = asyncio.Event()
        self._runner: Any = None  # aiohttp's AppRunner, once started

    def url(self, mode: str | None = None) -> str:
        return f"http://127.0.0.1:{self.port}/v1" if mode is None else f"http://127.0.0.1:{self.port}/{mode}/v1"

    async def __aenter__(self) -> FakeLLMServer:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/{mode}/v1/models", self._models)
        app.router.add_post("/{mode}/v1/chat/completions", self._chat)
        if self.root is not None:
            app.router.add_get("/v1/models", self._models)
            app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = runner = web.AppRunner(app, shutdown_timeout=0.2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self.port = runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request):
        from aiohttp import web

        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "x"}]})

    async def _chat(self, request):
        from aiohttp import web

        mode = request.match_info.get("mode", self.root)
        if mode not in ("ok", "fail", "stall_headers", "stall_body", "slow"):
            raise web.HTTPNotFound()
        self.requests.append(await request.json())
        if mode == "fail":
            return web.json_response({"error": {"message": "model exploded", "type": "server_error"}}, status=500)
        if mode == "stall_headers":
            await asyncio.sleep(30)
        if not self.requests[-1].get("stream"):  # a prefill: one token, as a plain completion
            return web.json_response({
                "id": "x", "object": "chat.completion", "created": 0, "model": self.model,
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "Hel"}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse_chunk({"role": "assistant", "content": ""}))  # role-only: not a token
        try:
            if mode == "ok":
                for d in self.deltas:
                    await resp.write(sse_chunk({"content": d}))
                await resp.write(b"data: [DONE]\n\n")
            elif mode == "stall_body":
                await asyncio.sleep(30)
            elif mode == "slow":
                for i in range(1000):
                    await resp.write(sse_chunk({"content": f" w{i}"}))
                    await asyncio.sleep(0.02)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return resp


# --- TTS -----------------------------------------------------------------------------------------


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


# --- clocks --------------------------------------------------------------------------------------


class HandClock:
    """A clock that is wherever the test puts it (`t`): `now()` for what reads a `Clock`; `sleep`
    (what the LLM supervisor is given) records each delay and moves `t` on at once, except that a
    sleep of `forever_s` or more waits for real until it is cancelled (a probe interval cut short
    by a report or an exit)."""

    def __init__(self, t: float = 100.0, forever_s: float = 1e6) -> None:
        self.t, self.forever_s = t, forever_s
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if seconds >= self.forever_s:
            await asyncio.sleep(3600)
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


async def settle(clock: Clock, seconds: float) -> None:
    """Let the virtual clock run for `seconds` of media time."""
    await clock.sleep_until(clock.now() + seconds)
    await asyncio.sleep(0)


async def until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait (real time, polling every 5 ms) until `cond()`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# --- edges ---------------------------------------------------------------------------------------


@dataclass
class RecordingSink:
    """Collects what the playout released, by media time."""

    frames: list[AudioFrame] = field(default_factory=list)

    def __call__(self, frame: AudioFrame) -> None:
        self.frames.append(frame)

    def voiced_times(self) -> list[float]:
        return [f.timestamp for f in self.frames if np.any(f.samples)]


def silent_mic():
    """A client's microphone (`transport.client.ScriptedMicTrack`) that sends 0.1 s of silence."""
    from transport.client import ScriptedMicTrack

    return ScriptedMicTrack(np.zeros(1600, np.float32), 16_000, lead_s=0.0)


async def offer_sdp(direction: str | None = None) -> str:
    """A real aiortc offer: from an `AgentCall` with `silent_mic()`, or (`direction`) from a peer
    with an audio transceiver that sends nothing."""
    from aiortc import RTCPeerConnection

    from transport.client import AgentCall

    if direction is None:
        call = AgentCall(silent_mic())
        await call.pc.setLocalDescription(await call.pc.createOffer())
        sdp = call.pc.localDescription.sdp
        await call.close()
        return sdp
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeSession:
    """A browser session without models: consumes the microphone, plays silence through a real
    Playout, and says it is listening once the first frame arrives."""

    def __init__(self, clock: Clock, sink, output_rate: int, on_event) -> None:
        from tts.playout import Playout

        self.playout = Playout(clock, sink, sample_rate=output_rate)
        self.on_event = on_event
        self.frames = 0
        self.call = None  # the edge's CallControl, as given to new_session
        self.hung_up = False

    def hang_up(self) -> None:
        self.hung_up = True

    async def run(self, frames) -> None:
        async with asyncio.TaskGroup() as tg:
            playout = tg.create_task(self.playout.run())
            try:
                async for _ in frames:
                    if self.hung_up:
                        break
                    self.frames += 1
                    if self.frames == 1:
                        self.on_event({"type": "state", "state": "listening"})
            finally:
                playout.cancel()


class FakeStack:
    """What `rejoinder serve` needs from `agent.stack.AgentStack`: sessions, here `FakeSession`s."""

    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []

    def new_session(self, clock, sink, output_rate=48_000, on_event=None, turn_options=None, call=None,
                    agent=None) -> FakeSession:
        s = FakeSession(clock, sink, output_rate, on_event or (lambda e: None))
        s.call = call
        self.sessions.append(s)
        return s


class FakeSpeechStack(FakeStack):
    """`FakeStack` plus what the speech API needs (transport/speech_api.py's `SpeechStack`): the real
    `StreamingTTS` over `FakeTTSEngine` (16 kHz, 60 ms of tone per character) and `FakeSTT`, whose
    answer says how much 16 kHz audio it was given ("N samples"). Records each request's `speeds`
    and the `rates` audio arrived at; `up` is what `health()` reports."""

    def __init__(self) -> None:
        from tts.stream import StreamingTTS

        super().__init__()
        self.engine = FakeTTSEngine()
        self.tts = StreamingTTS(self.engine, chunk_ms=100)
        self.stt = FakeSTT(answer=lambda audio: f"{len(audio)} samples")
        self.speeds: list[float] = []
        self.rates: list[int] = []
        self.up = True

    @property
    def speech_rate(self) -> int:
        return self.engine.sample_rate

    async def synthesize_stream(self, text: str, speed: float = 1.0):
        self.speeds.append(speed)
        async with contextlib.aclosing(self.tts.speak(text)) as chunks:
            async for chunk in chunks:
                if chunk.samples.size:
                    yield chunk.samples

    async def transcribe_audio(self, samples: np.ndarray, rate: int) -> str:
        from pipeline.audio import resample

        self.rates.append(rate)
        return (await asyncio.to_thread(self.stt.transcribe, resample(samples, rate, 16_000))).text

    def health(self) -> dict:
        return {"ok": self.up, "components": {}}


# --- the scripted conversation -------------------------------------------------------------------

AUDIO = np.zeros(16000, np.float32)  # one second of a user's utterance (the fake STT does not listen)
REPLY = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen fourteen fifteen."


def leftover_tasks(before: set[asyncio.Task]) -> set[asyncio.Task]:
    """Tasks started since `before` was taken that are still running."""
    return {t for t in asyncio.all_tasks() if t not in before and not t.done()}


class Rig:
    """One scripted conversation: the real turn manager, `StreamingTTS`, playout and conversation
    context on a `VirtualClock`, with `FakeSTT(texts)`, `FakeLLM(clock, replies, **llm_kw)` (or the
    given `llm`, e.g. a real client) and `FakeTTSEngine`; the playout plays into a `RecordingSink`.
    `async with Rig(...) as rig:` runs the playout and closes the turn manager at the end. `tools` (a
    `ToolBox`), `tool_mode` and `call` (e.g. `agent.recorded_call.RecordedCall`) go to the turn manager."""

    def __init__(self, texts: list[str], replies: list[Any], options: TurnOptions | None = None, *, llm=None,
                 tools=None, tool_mode: str = "grammar", call=None, flow=None, flow_prompt=None,
                 **llm_kw) -> None:
        from agent.context import Conversation
        from agent.turns import TurnManager, TurnOptions
        from pipeline.clock import VirtualClock
        from stt.transcriber import StreamingTranscriber
        from tts.playout import Playout
        from tts.stream import StreamingTTS

        self.clock = VirtualClock()
        self.sink = RecordingSink()
        self.playout = Playout(self.clock, self.sink, sample_rate=16000)
        self.stt = FakeSTT(texts)
        self.llm = llm if llm is not None else FakeLLM(self.clock, replies, **llm_kw)
        self.engine = FakeTTSEngine()
        self.tts = StreamingTTS(self.engine, working=self.clock.working)
        self.events: list[dict] = []
        transcriber = StreamingTranscriber(self.stt, self.clock, (options or TurnOptions()).transcriber_options())
        self.turns = TurnManager(transcriber, self.llm, self.tts, self.playout, self.clock,
                                 Conversation("be brief"), options=options, on_event=self.events.append,
                                 tools=tools, tool_mode=tool_mode, call=call,  # type: ignore[arg-type]
                                 flow=flow, flow_prompt=flow_prompt)

    async def __aenter__(self) -> Rig:
        self._playout_task = asyncio.create_task(self.playout.run())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.turns.aclose()
        self._playout_task.cancel()
        await asyncio.gather(self._playout_task, return_exceptions=True)

    async def user_says(self, duration: float = 1.0) -> float:
        """User speaks for `duration`, then the VAD ends the turn 0.5 s later. Returns last voiced time."""
        from pipeline.events import SpeechEnded, SpeechStarted

        t = self.clock.now()
        await self.turns.handle(SpeechStarted(t))
        await settle(self.clock, duration + 0.5)
        await self.turns.handle(SpeechEnded(t, t + duration, self.clock.now(), AUDIO))
        return t + duration

    async def wait_state(self, state: State, limit: float = 5.0) -> None:
        """Let the clock run until the turn manager is in `state`; fail after `limit` media seconds."""
        t0 = self.clock.now()
        while self.turns.state is not state:
            assert self.clock.now() - t0 < limit, f"never reached {state}"
            await settle(self.clock, 0.01)


@contextlib.asynccontextmanager
async def served(stack, token=None, **kw):
    """A real `rejoinder serve` app for `stack` on 127.0.0.1 (any free port); yields its base URL."""
    from aiohttp import web

    from transport.server import ServeOptions, make_app, make_runner

    opts = ServeOptions(host="127.0.0.1", port=0, token=token, **kw)
    app = make_app(stack, opts)
    runner = make_runner(app, opts)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
