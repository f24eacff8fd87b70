"""Twilio Media Streams (and the same shape from Telnyx, Fonoster): a phone call over a WebSocket.

Point a number at `GET /phone/twilio/twiml?token=T` (TwiML: `<Connect><Stream>` to
`wss://HOST/phone/twilio`, the token passed as a `<Parameter>`, since Stream URLs take no query
string). Messages in: `connected`, `start` (streamSid, mediaFormat audio/x-mulaw 8000 Hz),
`media` (base64 μ-law, 20 ms; transport/g711.py), `dtmf`, `mark`, `stop`; out: `media`, `mark`, `clear`.

What the caller heard is what the far end *played*, not what was sent: after every few frames a
`mark` named with the playout's frame counter goes out, and the playout counts a frame heard only
when its mark comes back (`Playout.confirm`); a barge-in flushes the playout, which sends `clear`, so
audio still in Twilio's buffer is dropped and never counted. (Pipecat estimates this from timing.)

Fields that differ elsewhere: Telnyx sends `start.media_format` (snake case) with `encoding: "PCMU"`
and `sample_rate`; Fonoster's Media Streams follow Twilio's names. Both are read here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from aiohttp import WSMsgType, web

from pipeline.audio import AudioFrame
from pipeline.clock import Clock, RealClock
from pipeline.dtmf import DigitCollector
from pipeline.mic_timeline import MicTimeline
from transport.g711 import decode, encode

log = logging.getLogger(__name__)

RATE = 8000
FRAME = 160  # samples in 20 ms
MARK_EVERY = 5  # frames between marks: the heard position is known to 100 ms
MAX_MESSAGE = 64 * 1024  # a media message is ~300 bytes; anything near this is not Twilio


class StreamSession(Protocol):
    playout: Any

    async def run(self, frames: AsyncIterator[AudioFrame]) -> None: ...
    def hang_up(self) -> None: ...


class StreamStack(Protocol):
    def new_session(self, clock: Clock, sink: Callable[[AudioFrame], Any], output_rate: int = ...,
                    on_event: Callable[[dict], None] | None = ..., call: Any = ...) -> StreamSession: ...


TransferHook = Callable[[str, str], Awaitable[bool]]  # (callSid, target) → transferred


@dataclass
class StreamCall:
    """`CallControl` on a media stream. The stream cannot end or move the phone call itself: hanging
    up closes the stream (with `<Connect><Stream>`, Twilio then runs the TwiML after it, by default
    ending the call); a transfer needs the user's `transfer_hook` (Twilio's REST API: update the call
    with `<Dial>TARGET</Dial>`), without which it is refused and the agent says so."""

    stream: TwilioStream
    transfer_hook: TransferHook | None = None

    async def hang_up(self, reason: str = "") -> None:
        self.stream.closing = reason or "hang_up"
        self.stream.session_end()

    async def transfer(self, target: str) -> bool:
        if self.transfer_hook is None or not self.stream.call_sid:
            return False
        ok = await self.transfer_hook(self.stream.call_sid, target)
        if ok:
            self.stream.transfers.append(target)
        return ok

    async def send_dtmf(self, digits: str) -> None:
        log.info("media stream %s: cannot send DTMF %r (the stream carries audio only)", self.stream.sid, digits)


class TwilioStream:
    """One call's WebSocket: decodes the caller's audio into frames, sends the agent's, keeps the marks."""

    def __init__(self, ws: web.WebSocketResponse, stack: StreamStack | Any, token: str | None,
                 transfer_hook: TransferHook | None = None, clock: Clock | None = None) -> None:
        self.ws, self.stack, self.token = ws, stack, token
        self.clock = clock or RealClock()
        self.sid: str | None = None
        self.call_sid: str | None = None
        self.closing: str | None = None
        self.transfers: list[str] = []
        self.dtmf: list[str] = []
        self.bad_messages = 0
        self.call = StreamCall(self, transfer_hook)
        self._frames: asyncio.Queue[AudioFrame | None] = asyncio.Queue(maxsize=500)  # 10 s
        self._timeline = MicTimeline(self.clock, name="media stream")
        self._session: StreamSession | None = None
        self._send_lock = asyncio.Lock()
        self.session_end: Callable[[], None] = lambda: None
        self._keys = DigitCollector(self._typed)  # "4 7 1 2 #" → one user turn "4712"
        self._typing: set[asyncio.Task] = set()

    def _typed(self, digits: str) -> None:
        typed = getattr(self._session, "user_typed", None)
        if typed is None:
            return
        log.info("media stream %s: keypad entry %r", self.sid, digits)
        task = asyncio.get_running_loop().create_task(typed(digits), name="keypad turn")
        self._typing.add(task)
        task.add_done_callback(self._typing.discard)

    async def run(self) -> None:
        """Read messages until `stop` or a close; one agent session from `start` to the end."""
        session_task: asyncio.Task | None = None
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT:
                    break
                started = self._handle(msg.data)
                if started and session_task is None:
                    session_task = asyncio.create_task(self._run_session(), name=f"stream-{self.sid}")
                if self.closing:
                    break
        finally:
            self._keys.close()
            for t in list(self._typing):
                t.cancel()
            if not self._frames.full():  # (when full, the session sees hang_up on its next frame)
                self._frames.put_nowait(None)
            if session_task is not None:
                if self._session is not None:
                    self._session.hang_up()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(session_task, timeout=10)
                if not session_task.done():
                    session_task.cancel()
            if not self.ws.closed:
                await self.ws.close()

    def _handle(self, text: str) -> bool:
        """One message; True when it started the call."""
        if len(text) > MAX_MESSAGE:
            return self._bad("a message over 64 KiB")
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            return self._bad("a message that is not JSON")
        if not isinstance(msg, dict):
            return self._bad("a message that is not an object")
        event = msg.get("event")
        if event == "start":
            return self._start(msg)
        if self.sid is None and event in ("media", "mark", "dtmf"):
            return self._bad(f"'{event}' before 'start'")
        if event == "media":
            self._media(msg)
        elif event == "mark":
            name = (msg.get("mark") or {}).get("name", "")
            if isinstance(name, str) and name.isdigit() and self._session is not None:
                self._session.playout.confirm(int(name))
        elif event == "dtmf":
            digit = (msg.get("dtmf") or {}).get("digit")
            if isinstance(digit, str) and len(digit) == 1 and digit in "0123456789*#ABCD":
                self.dtmf.append(digit)
                self._keys.press(digit)
            else:
                self._bad("a dtmf event with no digit")
        elif event == "stop":
            self.closing = "stop"
        elif event != "connected":
            self._bad(f"an unknown event {event!r}")
        return False

    def _start(self, msg: dict) -> bool:
        start = msg.get("start") or {}
        fmt = start.get("mediaFormat") or start.get("media_format") or {}
        encoding = str(fmt.get("encoding", "audio/x-mulaw")).lower()
        rate = fmt.get("sampleRate", fmt.get("sample_rate", RATE))
        if encoding not in ("audio/x-mulaw", "pcmu") or rate != RATE:
            self.closing = f"unsupported media format {fmt}"
            log.warning("media stream: %s; only 8 kHz μ-law is supported", self.closing)
            return False
        params = start.get("customParameters") or start.get("custom_parameters") or {}
        if self.token and not hmac.compare_digest(str(params.get("token", "")), self.token):
            self.closing = "wrong or missing token"
            log.warning("media stream refused: %s (pass it as <Parameter name=\"token\">)", self.closing)
            return False
        self.sid = str(msg.get("streamSid") or start.get("streamSid") or start.get("stream_id") or "stream")
        self.call_sid = start.get("callSid") or start.get("call_control_id")
        return True

    def _media(self, msg: dict) -> None:
        payload = (msg.get("media") or {}).get("payload")
        if not isinstance(payload, str):
            self._bad("media without a payload")
            return
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._bad("media whose payload is not base64")
            return
        if not data:
            return
        t = self._timeline.stamp(len(data) / RATE)
        if t is not None and not self._frames.full():
            self._frames.put_nowait(AudioFrame(decode(data), RATE, t))

    def _bad(self, what: str) -> bool:
        self.bad_messages += 1
        if self.bad_messages <= 3:
            log.warning("media stream %s: ignored %s", self.sid, what)
        return False

    async def _run_session(self) -> None:
        session = self._session = self.stack.new_session(self.clock, self._send_frame, output_rate=RATE,
                                                         call=self.call)
        session.playout.confirmed_by_far_end = True
        session.playout.on_flush = lambda: asyncio.ensure_future(self._send({"event": "clear"}))
        self.session_end = session.hang_up

        async def frames() -> AsyncIterator[AudioFrame]:
            while (f := await self._frames.get()) is not None:
                yield f

        try:
            await session.run(frames())
        finally:
            if self.closing is None:
                self.closing = "session ended"
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def _send_frame(self, frame: AudioFrame) -> None:
        """The playout's sink: every frame goes out (silence too: the far end's clock needs audio)."""
        n = self._session.playout.frames_out - 1 if self._session is not None else 0
        await self._send({"event": "media", "media": {"payload": base64.b64encode(
            encode(np.asarray(frame.samples))).decode()}})
        if n % MARK_EVERY == MARK_EVERY - 1:
            await self._send({"event": "mark", "mark": {"name": str(n)}})

    async def _send(self, body: dict) -> None:
        if self.ws.closed or self.sid is None:
            return
        async with self._send_lock:
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await self.ws.send_str(json.dumps({**body, "streamSid": self.sid}))


def twiml(ws_url: str, token: str | None) -> str:
    """The TwiML that connects a call to this server's media stream endpoint."""
    param = f'<Parameter name="token" value="{token}"/>' if token else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{ws_url}">{param}'
            f"</Stream></Connect></Response>")
