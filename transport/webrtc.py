"""WebRTC as an edge: one aiortc peer per browser, carrying the user's microphone in and the agent's
voice out, plus a data channel ("events") for JSON events both ways.

    browser mic ──RTP/Opus──▶ track_frames() ──AudioFrame──▶ Session ──▶ Playout ──sink──▶ AgentAudioTrack ──▶ browser

aiortc pulls audio out (`MediaStreamTrack.recv()`), so the output track paces itself to the wall
clock; it holds at most a few 20 ms frames, so a barge-in flush in `Playout` is heard at once.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from pipeline.audio import AudioFrame
from pipeline.clock import Clock, RealClock
from pipeline.mic_timeline import MicTimeline
from pipeline.tasks import TaskSet
from transport.browser_call import BrowserCall
from transport.guard import BadJSON, loads_bounded
from transport.pacing import FramePacer

if TYPE_CHECKING:
    from aiortc import RTCDataChannel

log = logging.getLogger(__name__)

OUT_RATE = 48_000
OUT_FRAME = OUT_RATE * 20 // 1000  # 960 samples = 20 ms
EVENTS_CHANNEL = "events"
MAX_EVENT_CHARS = 4096  # the page's events are under 100 bytes
MAX_EVENT_DEPTH = 4
MAX_CLIENT_TURNS = 10_000  # client_v2v figures kept per call: a client cannot grow the table without end


# --- audio in ------------------------------------------------------------------------------------
def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Any av audio frame (s16/s32/flt, packed or planar, mono or stereo) → mono float32 in [-1, 1]."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        data = data.reshape(channels, -1)  # (channels, samples)
    else:
        data = data.reshape(-1, channels).T  # packed: interleaved in one row
    if data.dtype.kind in "iu":
        # PyAV types to_ndarray() as a float|int array union; the kind check leaves only integer dtypes
        data = data.astype(np.float32) / (float(np.iinfo(data.dtype).max) + 1.0)  # type: ignore[type-var]
    mono = data.mean(axis=0) if channels > 1 else data[0]
    return np.ascontiguousarray(mono, dtype=np.float32)


async def track_frames(track: MediaStreamTrack, clock: Clock,
                       timeline: MicTimeline | None = None) -> AsyncIterator[AudioFrame]:
    """The remote microphone as pipeline frames, stamped on the session clock when they arrive.

    `MicTimeline` stamps them: contiguous, and never ahead of the clock, so the VAD's "last voiced"
    time is when the server heard it, and a burst of late packets after an uplink stall (or a sender
    faster than real time) cannot push media time ahead for the rest of the call; what would run
    ahead, or arrives stale, is dropped. Ends with the track.
    """
    timeline = timeline if timeline is not None else MicTimeline(clock, name="webrtc microphone")
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            if timeline.dropped:
                log.info("webrtc microphone: dropped %d late or early frame(s) (%.1f s of audio), "
                         "re-anchored %d time(s)", timeline.dropped, timeline.dropped_s, timeline.reanchors)
            return
        if not isinstance(frame, av.AudioFrame):  # an audio track's frames are; the type says Frame | Packet
            continue
        t = timeline.stamp(frame.samples / frame.sample_rate)
        if t is not None:
            yield AudioFrame(frame_to_mono(frame), frame.sample_rate, t)


# --- audio out -----------------------------------------------------------------------------------
class AgentAudioTrack(MediaStreamTrack):
    """The agent's voice: 20 ms, 48 kHz, s16 mono frames, paced to the wall clock.

    `push` is the session's `Playout` sink. The queue is tiny (`max_frames`): Playout already paces,
    this only absorbs scheduling jitter, and after a flush nothing stale is left to play.
    """

    kind = "audio"

    def __init__(self, max_frames: int = 4, grace_s: float = 0.010) -> None:
        super().__init__()
        self._frames: deque[np.ndarray] = deque()
        self._max_frames = max_frames
        self._grace_s = grace_s
        self._arrived = asyncio.Event()
        self._pacer = FramePacer(OUT_RATE, reanchor_after_s=0.5)  # far behind (loop stalled): re-anchor, no burst
        self._pts = 0
        self.dropped = 0  # frames dropped because the queue was full (the loop stalled)
        self._source: Callable[[], AudioFrame] | None = None
        self.sent_voiced_at: float | None = None  # wall time of the first non-silent frame sent

    def push(self, frame: AudioFrame) -> None:
        """Queue one Playout frame (mono float32 at 48 kHz, 20 ms)."""
        if frame.sample_rate != OUT_RATE:
            raise ValueError(f"AgentAudioTrack needs {OUT_RATE} Hz frames, got {frame.sample_rate} Hz; "
                             f"create the session with output_rate={OUT_RATE}")
        pcm = np.clip(frame.samples * 32768.0, -32768, 32767).astype(np.int16)
        self._frames.append(pcm)
        while len(self._frames) > self._max_frames:
            self._frames.popleft()
            self.dropped += 1
        self._arrived.set()

    def clear(self) -> None:
        self._frames.clear()

    def attach(self, source: Callable[[], AudioFrame]) -> None:
        """Pull frames from `source` (a `Playout.pull`) at send time instead of a pushed queue: one
        pacer (this track, on the wall clock), so no drift between two, and a flush is heard at once."""
        self._source = source

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self._pts)
        if self._source is not None:
            frame = self._source()
            if frame.sample_rate != OUT_RATE:
                raise ValueError(f"AgentAudioTrack needs {OUT_RATE} Hz frames, got {frame.sample_rate} Hz")
            self._frames.append(np.clip(frame.samples * 32768.0, -32768, 32767).astype(np.int16))
        elif not self._frames:
            # Playout runs on the same clock, slightly out of phase: give its next frame a moment
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), self._grace_s)
            except TimeoutError:
                pass
        pcm = self._frames.popleft() if self._frames else np.zeros(OUT_FRAME, np.int16)
        if len(pcm) != OUT_FRAME:
            pcm = np.pad(pcm, (0, max(0, OUT_FRAME - len(pcm))))[:OUT_FRAME]
        if self.sent_voiced_at is None and np.any(pcm):
            self.sent_voiced_at = time.monotonic()
        out = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        out.sample_rate = OUT_RATE
        out.pts = self._pts
        out.time_base = fractions.Fraction(1, OUT_RATE)
        self._pts += OUT_FRAME
        return out


# --- configuration -------------------------------------------------------------------------------
def parse_ice_server(spec: str) -> RTCIceServer:
    """`stun:host:port`, `turn:host:port?transport=udp`, or `turn:USER:PASS@host:port` (credentials)."""
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in ("stun", "stuns", "turn", "turns") or not rest:
        raise ValueError(f"--ice-server {spec!r}: expected stun:HOST[:PORT] or turn:[USER:PASS@]HOST[:PORT]")
    if "@" in rest:
        cred, host = rest.rsplit("@", 1)
        user, _, password = cred.partition(":")
        return RTCIceServer(urls=f"{scheme}:{host}", username=user or None, credential=password or None)
    return RTCIceServer(urls=spec)


def rtc_configuration(ice_servers: list[str]) -> RTCConfiguration:
    """Explicit ICE servers only: with an empty list aiortc would otherwise use a public STUN server."""
    return RTCConfiguration(iceServers=[parse_ice_server(s) for s in ice_servers])


_loopback_enabled = False


def enable_loopback_candidates() -> None:
    """Offer 127.0.0.1 as a host ICE candidate (aioice leaves it out), for same-machine peers.

    Needed where loopback is the only interface (a network namespace, CI); harmless elsewhere.
    Process-wide and idempotent.
    """
    global _loopback_enabled
    if _loopback_enabled:
        return
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses.append("127.0.0.1")
        return addresses

    aioice.ice.get_host_addresses = with_loopback
    _loopback_enabled = True


# --- one browser ---------------------------------------------------------------------------------
class PlayoutLike(Protocol):
    """What a peer uses of the session's output (`tts.playout.Playout`): it pulls frames at send time,
    and reads which words of the reply playing were heard."""

    paced_by_consumer: bool

    def pull(self) -> AudioFrame: ...

    @property
    def playing_request(self) -> str | None: ...

    def heard_text(self, request_id: str) -> str: ...


class SessionLike(Protocol):
    playout: PlayoutLike  # paced and pulled by the outgoing track

    async def run(self, frames: AsyncIterator[AudioFrame]) -> None: ...


class StackLike(Protocol):
    """What a peer needs from the agent: `agent.stack.AgentStack` (or a fake in tests)."""

    def new_session(self, clock: Clock, sink: Callable[[AudioFrame], Any], output_rate: int = ...,
                    on_event: Callable[[dict], None] | None = ..., call: Any = ...) -> SessionLike: ...


class PeerSession:
    """One browser: its peer connection, one agent session, the events channel, and the teardown.

    `closed` is set once everything it started has stopped (session task, peer connection, tracks).
    """

    def __init__(self, stack: StackLike, ice_servers: list[str] | None = None, idle_timeout_s: float = 600.0,
                 connect_timeout_s: float = 30.0, name: str = "peer") -> None:
        self.stack, self.name = stack, name
        self.clock = RealClock()
        self.pc = RTCPeerConnection(rtc_configuration(ice_servers or []))
        self.out_track = AgentAudioTrack()
        self.channel: RTCDataChannel | None = None  # the browser's "events" channel, once it opens one
        self.idle_timeout_s, self.connect_timeout_s = idle_timeout_s, connect_timeout_s
        self.created = time.monotonic()
        self.connected_at: float | None = None
        self.last_activity = time.monotonic()
        self.events: deque[dict] = deque(maxlen=1000)  # the latest events sent to the browser
        self.client_v2v: dict[int, float] = {}  # turn → voice-to-voice the browser measured (ms)
        self.turns: dict[int, dict] = {}  # turn → server metrics, with "client_v2v_ms" beside them
        self.closed = asyncio.Event()
        self.on_closed: Callable[[], Any] = lambda: None  # the server forgets the peer here
        self._pending: list[str] = []
        self.dropped_messages = 0  # data channel messages that were not a usable event
        self._tasks = TaskSet(prefix=name)  # every task this peer starts; close() cancels them
        self._session_task: asyncio.Task | None = None
        self.call: BrowserCall | None = None  # what the agent's call-control tools act on
        self._closing = False
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def accept(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Apply the browser's offer and return our answer (ICE candidates gathered, no trickle)."""
        await self.pc.setRemoteDescription(offer)
        self.pc.addTrack(self.out_track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._tasks.spawn(self._watchdog(), "watchdog")
        return self.pc.localDescription

    # --- events ----------------------------------------------------------------------------------
    def send(self, event: dict) -> None:
        """Send one JSON event to the browser (queued until the channel opens)."""
        self.events.append(event)
        text = json.dumps(event, default=float)
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(text)
        else:
            self._pending.append(text)

    def _on_agent_event(self, event: dict) -> None:
        self.last_activity = time.monotonic()
        if event.get("type") == "turn":
            m = event["metrics"]
            m["client_v2v_ms"] = self.client_v2v.get(m["index"])  # usually measured before the reply ends
            self.turns[m["index"]] = m
            log.info("%s: turn %d voice-to-voice: server %s ms, client %s ms", self.name, m["index"],
                     m["timings_ms"].get("voice_to_voice"), m["client_v2v_ms"])
        self.send(event)

    def _on_datachannel(self, channel) -> None:
        if channel.label != EVENTS_CHANNEL:
            log.info("%s: ignoring data channel %r", self.name, channel.label)
            return
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("open", self._flush_pending)
        if channel.readyState == "open":
            self._flush_pending()

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        assert self.channel is not None, "flushed only from _on_datachannel, which set the channel"
        for text in pending:
            self.channel.send(text)

    def _on_message(self, message: Any) -> None:
        """One message from the browser. Nothing may escape: an exception here would end aiortc's
        receive loop, and with it the call. A message that is not a usable event is dropped."""
        self.last_activity = time.monotonic()
        try:
            self._on_event(message)
        except Exception as exc:
            self._drop(message, f"{type(exc).__name__}: {exc}")

    def _drop(self, message: Any, reason: str) -> None:
        """Log why a message was dropped: the first few, then one in a hundred (a flood stays quiet)."""
        self.dropped_messages += 1
        n = self.dropped_messages
        if n <= 3 or n % 100 == 0:
            log.info("%s: dropped data channel message #%d (%s): %.80r", self.name, n, reason[:200], message)

    def _on_event(self, message: Any) -> None:
        if not isinstance(message, str):
            self._drop(b"", f"binary message of {len(message)} bytes; events are JSON text")
            return
        try:
            msg = loads_bounded(message, MAX_EVENT_CHARS, MAX_EVENT_DEPTH)
            kind = msg["type"]
        except BadJSON as exc:
            self._drop(message, f"the message {exc}")
            return
        except (TypeError, KeyError, IndexError):
            self._drop(message, "not a JSON event (an object with a 'type')")
            return
        if kind == "client_v2v":
            try:
                turn, ms = int(msg["turn"]), float(msg["ms"])
                if not (turn >= 0 and 0 <= ms < 600_000):
                    raise ValueError
            except (KeyError, TypeError, ValueError, OverflowError):
                self._drop(message, "client_v2v needs a turn index and a plausible 'ms'")
                return
            if turn not in self.client_v2v and len(self.client_v2v) >= MAX_CLIENT_TURNS:
                self._drop(message, f"more than {MAX_CLIENT_TURNS} turns measured")
                return
            self.client_v2v[turn] = ms
            m = self.turns.get(turn)
            if m is not None:  # the turn's metrics went out already: record the figure next to them
                m["client_v2v_ms"] = ms
            server = m["timings_ms"].get("voice_to_voice") if m else None
            event = {"type": "v2v", "turn": turn, "client_ms": ms, "server_ms": server}
            self.send(event)
            observe = getattr(self.stack, "observe", None)  # the stack's metrics, if it keeps any
            if observe is not None:
                observe(event)
        elif kind == "bye":
            self._tasks.spawn(self.close(), "close")
        elif kind != "ping":
            self._drop(message, "unknown event type")

    # --- media -----------------------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self._session_task is not None:
            return
        self._session_task = self._tasks.spawn(self._run_session(track), "session")

    async def _run_session(self, track: MediaStreamTrack) -> None:
        self.call = BrowserCall(self.send, lambda: self._tasks.spawn(self.close(), "close"))
        session = self.stack.new_session(self.clock, lambda frame: None, output_rate=OUT_RATE,
                                         on_event=self._on_agent_event, call=self.call)
        session.playout.paced_by_consumer = True  # this track's recv() paces and pulls
        self.out_track.attach(session.playout.pull)
        heard = self._tasks.spawn(self._heard_text_loop(session), "heard")

        async def frames() -> AsyncIterator[AudioFrame]:
            async for frame in track_frames(track, self.clock):
                yield frame
            # the browser's track ended (hang-up, RTCP BYE, transport gone): nobody would hear a reply
            log.info("%s: the remote audio track ended", self.name)
            self._tasks.spawn(self.close(), "close")
            await asyncio.Event().wait()  # until close() cancels this session

        try:
            await session.run(frames())
        except Exception:
            log.exception("%s: the agent session failed", self.name)
            self.send({"type": "error", "message": "the agent session failed; see the server log"})
        finally:
            heard.cancel()
        if not self._closing:
            self._tasks.spawn(self.close(), "close")

    async def _heard_text_loop(self, session: Any) -> None:
        """Send the agent's words as they are played (`Playout.heard_text`), a few times a second."""
        playout = getattr(session, "playout", None)
        if playout is None:
            return
        rid, sent = None, ""
        while True:
            await asyncio.sleep(0.15)
            if playout.playing_request != rid:
                rid, sent = playout.playing_request, ""
            text = playout.heard_text(rid) if rid is not None else ""
            if text and text != sent:
                sent = text
                self.send({"type": "agent_heard", "text": text})

    # --- lifetime --------------------------------------------------------------------------------
    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("%s: connection %s", self.name, state)
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            self.send({"type": "connected", "connect_ms": round((self.connected_at - self.created) * 1000, 1)})
        elif state in ("failed", "closed"):
            self._tasks.spawn(self.close(), "close")

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self.connected_at is None and now - self.created > self.connect_timeout_s:
                log.info("%s: not connected after %.0f s; closing", self.name, self.connect_timeout_s)
                break
            if now - self.last_activity > self.idle_timeout_s:
                log.info("%s: idle for %.0f s; closing", self.name, self.idle_timeout_s)
                self.send({"type": "closing", "reason": "idle timeout"})
                await asyncio.sleep(0.2)
                break
        self._tasks.spawn(self.close(), "close")

    async def close(self) -> None:
        """Stop the agent session, close the peer, cancel every task this peer started. Idempotent."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        await self._tasks.cancel_all(spare=asyncio.current_task())
        self.out_track.stop()
        try:
            await self.pc.close()
        finally:
            self.closed.set()
            self.on_closed()
        log.info("%s: closed", self.name)
