"""SIP phone calls as an edge: a user agent server on UDP (aiosipua) with G.711 RTP (aiortp), one asyncio loop.

    caller ──INVITE──▶ SipServer ── 100, 180, 200 + SDP answer ──▶ caller ──ACK──▶
    caller ──RTP μ/A-law──▶ SipCall.frames() ──AudioFrame 8 kHz──▶ session ──▶ Playout.pull ──▶ paced RTP ──▶ caller
    RFC 4733 events ──▶ SipCall.on_dtmf          BYE either way ends the call; hang_up → BYE; transfer → REFER

One `SipCall` per call is the `pipeline.stages.CallControl` the agent's tools act on and the audio
both ways; `on_call(call)` (the agent's wiring, agent/phone.py) runs its session until the call ends,
when the server cancels it. Safety: only sources on the allow-list get an answer (loopback by
default); beyond `max_calls` callers get 486 Busy Here; an offer without PCMU/PCMA gets 488.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiortp import RTPSession
from aiortp.port_allocator import PortAllocator
from aiosipua import IncomingCall, SipRequest, SipResponse, SipUAS, UdpSipTransport

from pipeline.audio import AudioFrame
from pipeline.clock import RealClock
from pipeline.mic_timeline import MicTimeline
from pipeline.tasks import TaskSet
from transport.g711 import encode, pcm_to_float
from transport.pacing import FramePacer
from transport.sip_media import (
    FRAME,
    RATE,
    Media,
    Network,
    NoCodec,
    allowed,
    check_listen,
    negotiate,
)

log = logging.getLogger(__name__)

USER_AGENT = "Rejoinder"
DTMF_KEYS = "0123456789*#ABCD"


@dataclass
class SipOptions:
    """Where to listen and who may call. `allow` empty: loopback callers only (and listening
    anywhere but loopback is refused, `sip_media.check_listen`)."""

    host: str = "127.0.0.1"
    port: int = 5060
    max_calls: int = 1  # beyond it 486 Busy Here; 1 is what 2 cores serve well
    allow: list[Network] = field(default_factory=list)
    rtp_ports: tuple[int, int] = (10000, 20000)
    refer_timeout_s: float = 4.0  # no answer to a REFER: the transfer failed
    notify_timeout_s: float = 10.0  # after 202, how long to wait for the transfer's outcome (NOTIFY)

    def __post_init__(self) -> None:
        if self.host in ("0.0.0.0", "::", ""):
            raise ValueError("--listen needs a specific address (the one callers reach, used in Contact and SDP), "
                             "not a wildcard")
        if self.max_calls < 1:
            raise ValueError("--max-calls must be at least 1")
        self.allow = check_listen(self.host, self.allow)


class _UdpTransport(UdpSipTransport):
    """aiosipua's UDP transport, bound without its protocol's `connection_made` check (it asserts a
    transport class that Python 3.11's selector loop does not declare, and logs an error at start)."""

    async def start(self) -> None:
        owner = self

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr) -> None:
                owner._dispatch(data, (str(addr[0]), int(addr[1])))

        self._udp_transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Protocol, local_addr=self.local_addr)
        self.local_addr = self._udp_transport.get_extra_info("sockname")[:2]  # the port, when asked for 0


class SipCall:
    """One answered call: its audio both ways and its call control (`pipeline.stages.CallControl`)."""

    def __init__(self, server: SipServer, incoming: IncomingCall, media: Media, rtp: RTPSession) -> None:
        self.server, self.incoming, self.media, self.rtp = server, incoming, media, rtp
        self.call_id = incoming.call_id
        self.name = f"sip call {self.call_id[:12]}"
        self.clock = RealClock()
        self.on_dtmf: Callable[[str], None] = lambda digit: None
        self.dtmf_in: list[str] = []
        self.packets_in = self.packets_out = 0
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.transfers: list[str] = []
        self.rtp_port: int | None = None  # ours, released when the call ends
        self._frames: asyncio.Queue[AudioFrame | None] = asyncio.Queue(maxsize=50)  # 1 s: a stalled session
        self._timeline = MicTimeline(self.clock, name=f"{self.name} microphone")
        self._source: Callable[[], AudioFrame] | None = None
        self._tasks = TaskSet(prefix=self.name)
        self._refer: asyncio.Future[int] | None = None
        self._notify: asyncio.Future[int] | None = None
        rtp.on_audio = self._audio_in
        rtp.on_dtmf = self._dtmf_in

    # --- audio in ------------------------------------------------------------------------------
    def _audio_in(self, pcm: bytes, timestamp: int) -> None:
        self.packets_in += 1
        samples = pcm_to_float(pcm)  # aiortp decoded the G.711 payload
        t = self._timeline.stamp(len(samples) / RATE)
        if t is None:
            return
        try:
            self._frames.put_nowait(AudioFrame(samples, RATE, t))
        except asyncio.QueueFull:
            log.debug("%s: the session fell behind; dropped 20 ms of caller audio", self.name)

    def _dtmf_in(self, digit: str, duration: int) -> None:
        self.dtmf_in.append(digit)
        log.info("%s: DTMF %s", self.name, digit)
        self.on_dtmf(digit)

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """The caller's audio (8 kHz, stamped on arrival); ends when the call does."""
        while (frame := await self._frames.get()) is not None:
            yield frame

    # --- audio out -----------------------------------------------------------------------------
    def attach(self, source: Callable[[], AudioFrame]) -> None:
        """Send `source()` (a `Playout.pull` at 8 kHz) as one RTP packet every 20 ms from now on."""
        self._source = source
        self._tasks.spawn(self._send_loop(), "rtp-out")

    async def _send_loop(self) -> None:
        pacer = FramePacer(RATE, reanchor_after_s=0.5)  # far behind (loop stalled): skip, no burst
        position = 0
        while True:
            await pacer.wait(position)
            assert self._source is not None
            frame = self._source()
            if frame.sample_rate != RATE or len(frame.samples) != FRAME:
                raise ValueError(f"the SIP edge sends {FRAME} samples at {RATE} Hz; create the session with "
                                 f"output_rate={RATE} (got {len(frame.samples)} at {frame.sample_rate} Hz)")
            self.rtp.send_audio_auto(encode(frame.samples, self.media.payload_type))
            self.packets_out += 1
            position += FRAME

    # --- call control --------------------------------------------------------------------------
    async def hang_up(self, reason: str = "") -> None:
        """BYE, then the call ends (spawned: we are inside the reply that said goodbye)."""
        if self.ended.is_set():
            return
        log.info("%s: the agent hangs up (%s)", self.name, reason or "end_call")
        # the goodbye's last frames are still in flight: let them out before BYE
        asyncio.get_running_loop().call_later(0.1, lambda: self.server.spawn(self.end("agent hung up", bye=True)))

    async def send_dtmf(self, digits: str) -> None:
        """RFC 4733 events, one key at a time (160 ms each, 80 ms apart)."""
        if self.media.dtmf_payload_type is None:
            log.warning("%s: the caller offered no telephone-event; digits %r not sent", self.name, digits)
            return
        for key in digits.upper():
            if key in DTMF_KEYS and not self.ended.is_set():
                sender = getattr(self.rtp, "_sender", None)  # the event rides on the audio stream's timestamp
                self.rtp.send_dtmf(key, 160, timestamp=sender.current_timestamp if sender is not None else 0)
                await asyncio.sleep(0.24)

    async def transfer(self, target: str) -> bool:
        """Blind transfer: REFER to `target`. True once the caller accepted (202) and did not report the new
        call failing (NOTIFY); then the agent ends this leg. False on a refusal or no answer."""
        if self.ended.is_set():
            return False
        uri = target if target.startswith("sip:") or target.startswith("tel:") else \
            f"sip:{target}@{self.server.options.host}"
        self.transfers.append(uri)
        host, port = self.server.local_addr
        refer = self.incoming.dialog.create_request("REFER", via_host=host, via_port=port)
        refer.headers.set_single("Refer-To", f"<{uri}>")
        refer.headers.set_single("Contact", f"<sip:{host}:{port}>")
        loop = asyncio.get_running_loop()
        self._refer, self._notify = loop.create_future(), loop.create_future()
        self.server.send(refer, self.incoming.source_addr)
        try:
            status = await asyncio.wait_for(asyncio.shield(self._refer), self.server.options.refer_timeout_s)
        except TimeoutError:
            log.info("%s: no answer to REFER %s", self.name, uri)
            return False
        if not 200 <= status < 300:
            log.info("%s: REFER %s refused (%d)", self.name, uri, status)
            return False
        try:  # the transferee reports the new call's outcome in NOTIFYs (RFC 3515)
            outcome = await asyncio.wait_for(asyncio.shield(self._notify), self.server.options.notify_timeout_s)
        except TimeoutError:
            outcome = 200  # accepted, outcome unknown: the caller has it now
        log.info("%s: transfer to %s: REFER %d, NOTIFY %d", self.name, uri, status, outcome)
        return 200 <= outcome < 300

    def _refer_answered(self, status: int) -> None:
        if self._refer is not None and not self._refer.done() and status >= 200:
            self._refer.set_result(status)

    def _transfer_progress(self, status: int) -> None:
        if self._notify is not None and not self._notify.done() and status >= 200:
            self._notify.set_result(status)

    # --- the end -------------------------------------------------------------------------------
    async def end(self, reason: str, bye: bool = False) -> None:
        """Stop the call: BYE if we end it, the session's input, the RTP session. Idempotent."""
        if self.ended.is_set():
            return
        self.ended.set()
        self.end_reason = reason
        log.info("%s: ended (%s); %d packets in, %d out", self.name, reason, self.packets_in, self.packets_out)
        if bye:
            self.incoming.hangup()
        if not self._frames.full():
            self._frames.put_nowait(None)  # the session's input ends (it is cancelled next anyway)
        await self._tasks.cancel_all(spare=asyncio.current_task())
        await self.server.call_ended(self)
        await self.rtp.close()


class SipServer:
    """The UAS: answers INVITEs from allowed sources, one `SipCall` (and one `on_call`) per call."""

    def __init__(self, on_call: Callable[[SipCall], Awaitable[None]], options: SipOptions | None = None) -> None:
        self.on_call, self.options = on_call, options or SipOptions()
        self.transport = _UdpTransport(local_addr=(self.options.host, self.options.port))
        self.uas = SipUAS(self.transport, user_agent=USER_AGENT)
        self.uas.on_invite = self._on_invite
        self.uas.on_bye = self._on_bye
        self.uas.on_ack_timeout = lambda incoming: self._end(incoming.call_id, "no ACK for our 200 OK")
        self.uas.on_transfer_progress = self._on_transfer_progress
        self.calls: dict[str, SipCall] = {}
        self._setting_up: set[str] = set()
        self._call_tasks: dict[str, asyncio.Task] = {}
        self._ports = PortAllocator(self.options.rtp_ports)
        self._tasks = TaskSet(prefix="sip")
        self._refused: set[str] = set()
        self.rejected: list[int] = []  # status codes we answered INVITEs with other than 200 (tests read it)

    @property
    def local_addr(self) -> tuple[str, int]:
        return self.transport.local_addr

    async def start(self) -> None:
        await self.uas.start()
        self.transport.on_message = self._on_message  # in front of the UAS: the allow-list, REFER answers
        log.info("SIP: listening on udp %s:%d (callers from %s)", *self.local_addr,
                 ", ".join(str(n) for n in self.options.allow))

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        for call in list(self.calls.values()):
            await call.end("server stopping", bye=True)
        await self._tasks.cancel_all()
        await self.uas.stop()

    def spawn(self, coro, name: str = "task") -> asyncio.Task:
        return self._tasks.spawn(coro, name)

    def send(self, message: SipRequest, addr: tuple[str, int]) -> None:
        self.transport.send(message, addr)

    # --- messages in ---------------------------------------------------------------------------
    def _on_message(self, msg: SipRequest | SipResponse, addr: tuple[str, int]) -> None:
        if not allowed(addr[0], self.options.allow):
            if addr[0] not in self._refused and len(self._refused) < 1000:
                self._refused.add(addr[0])
                log.warning("SIP: ignoring %s from %s: not in the allow-list (--allow)", _what(msg), addr[0])
            return
        if isinstance(msg, SipResponse):
            call = self.calls.get(msg.call_id or "")
            cseq = (msg.headers.get_first("cseq") or "").split()
            if call is not None and len(cseq) == 2 and cseq[1].upper() == "REFER":
                call._refer_answered(msg.status_code)
            return  # answers to our BYE need nothing
        if msg.method.upper() == "INVITE" and (msg.call_id in self._setting_up or (
                msg.call_id in self.calls and not self.calls[msg.call_id].incoming.dialog.state.value == "confirmed")):
            return  # a retransmission while we answer it
        try:
            self.uas._on_message(msg, addr)
        except Exception as exc:  # a request we cannot make sense of (a broken SDP body, odd headers)
            log.warning("SIP: could not handle %s from %s (%s: %s); answered 400", _what(msg), addr[0],
                        type(exc).__name__, exc)
            self.uas._calls.pop(msg.call_id or "", None)  # no half-made call left behind
            try:
                self.uas._send_error(msg, 400, "Bad Request")
            except Exception:
                log.debug("SIP: no way to answer that request", exc_info=True)

    def _on_invite(self, incoming: IncomingCall) -> None:
        call_id = incoming.call_id
        if call_id in self.calls:
            log.info("SIP: re-INVITE on %s ignored (no media changes mid-call)", call_id)
            return
        if incoming.sdp_offer is None:
            log.warning("SIP: INVITE from %s without an SDP offer (not supported): 488", incoming.caller)
            return self._reject(incoming, 488, "Not Acceptable Here")
        try:
            negotiate(incoming.sdp_offer, self.options.host, 0)
        except NoCodec as exc:
            log.info("SIP: %s from %s: 488", exc, incoming.caller)
            return self._reject(incoming, 488, "Not Acceptable Here")
        if len(self.calls) + len(self._setting_up) >= self.options.max_calls:
            log.info("SIP: busy (%d call(s), --max-calls %d): 486 to %s", len(self.calls),
                     self.options.max_calls, incoming.caller)
            return self._reject(incoming, 486, "Busy Here")
        self._setting_up.add(call_id)
        self.spawn(self._answer(incoming), f"answer {call_id[:12]}")

    def _reject(self, incoming: IncomingCall, status: int, reason: str) -> None:
        self.rejected.append(status)
        incoming.reject(status, reason)

    async def _answer(self, incoming: IncomingCall) -> None:
        call_id = incoming.call_id
        rtp_port = None
        try:
            rtp_port, _ = await self._ports.allocate()
            assert incoming.sdp_offer is not None
            answer, media = negotiate(incoming.sdp_offer, self.options.host, rtp_port)
            rtp = await RTPSession.create(
                (self.options.host, rtp_port), media.remote, media.payload_type,
                dtmf_payload_type=media.dtmf_payload_type if media.dtmf_payload_type is not None else 101,
                jitter_prefetch=0)
        except Exception:
            log.exception("SIP: could not set up the media of %s; 500", call_id)
            self._setting_up.discard(call_id)
            if rtp_port is not None:
                await self._ports.release(rtp_port)
            return self._reject(incoming, 500, "Server Internal Error")
        call = SipCall(self, incoming, media, rtp)
        call.rtp_port = rtp_port
        self.calls[call_id] = call
        self._setting_up.discard(call_id)
        incoming.ringing()
        incoming.accept(answer)
        log.info("SIP: answered %s from %s (%s, DTMF %s)", call_id, incoming.caller, media.codec,
                 "on" if media.dtmf_payload_type is not None else "off")
        self._call_tasks[call_id] = self.spawn(self._run_call(call), f"call {call_id[:12]}")

    async def _run_call(self, call: SipCall) -> None:
        try:
            await self.on_call(call)
        except Exception:
            log.exception("%s: the agent session failed", call.name)
        if not call.ended.is_set():  # the session ended on its own: hang up
            self.spawn(call.end("the session ended", bye=True), "end")

    def _on_bye(self, incoming: IncomingCall, request: SipRequest) -> None:
        self._end(incoming.call_id, "the caller hung up")

    def _end(self, call_id: str, reason: str) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            self.spawn(call.end(reason), "end")

    def _on_transfer_progress(self, call_id: str, status: int, reason: str) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            call._transfer_progress(status)

    async def call_ended(self, call: SipCall) -> None:
        """The call's session stops (cancelled unless it is the one ending), its slot frees."""
        self.calls.pop(call.call_id, None)
        task = self._call_tasks.pop(call.call_id, None)
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if call.rtp_port is not None:
            await self._ports.release(call.rtp_port)


def _what(msg: SipRequest | SipResponse) -> str:
    return msg.method if isinstance(msg, SipRequest) else f"a {msg.status_code} response"
