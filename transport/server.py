"""`rejoinder serve`: the signaling server (aiohttp) that serves the page and accepts WebRTC offers.

Contract (stable; other clients rely on it):

    GET  /              the page (and /static/*): open to all, it carries no secrets
    POST /offer         {"sdp": "...", "type": "offer"}  →  200 {"sdp": "...", "type": "answer"}
    GET  /config        the page's ICE servers: {"iceServers": [...]}
    GET  /health        {"ok": bool, "sessions": n, "max_sessions": n, "components": {...}}; 503 when not ok
    GET  /healthz       {"ok": true} when the models are loaded and the LLM answers; 503 {"ok": false} otherwise
    POST /v1/audio/speech, /v1/audio/transcriptions   OpenAI's speech API (transport/speech_api.py)

The access token (`Authorization: Bearer TOKEN` or `?token=`) is needed on every route but the page
whenever one is set, and one is always set off loopback. Errors are JSON `{"error": reason}`:
400 malformed request, JSON or SDP (an offer needs a DTLS fingerprint and a microphone that sends),
401 missing/wrong token, 408 body not received in time, 413 body too large, 421 a Host this server does
not answer for (DNS rebinding), 429 too many wrong tokens (with Retry-After), 503 too many sessions
or open connections. Every response carries a strict Content-Security-Policy, nosniff, DENY framing
and no-referrer. Slow or hostile clients are cut (see `transport.guard`). Safe defaults: loopback
only, no public STUN server, and an access token whenever the server listens on anything but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import secrets
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiortc import RTCSessionDescription

from transport.guard import (
    BadJSON,
    GuardedSite,
    LargerBody,
    TokenGate,
    add_security_headers,
    bind_socket,
    body_deadline,
    host_allowlist,
    json_error,
    loads_bounded,
    runner_options,
)
from transport.speech_api import SPEECH_PATH, TRANSCRIPTIONS_PATH, UPLOAD_BODY, SpeechAPI
from transport.twilio import MAX_MESSAGE, TwilioStream, twiml
from transport.webrtc import PeerSession, StackLike, enable_loopback_candidates, parse_ice_server

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PEERS = web.AppKey("peers", dict)
STREAMS = web.AppKey("streams", set)  # media-stream calls in progress (transport/twilio.py)


@dataclass
class ServeOptions:
    """Network and limit settings of `rejoinder serve`, with safe defaults."""

    host: str = "127.0.0.1"
    port: int = 8080
    ice_servers: list[str] = field(default_factory=list)  # none: no public STUN, local/LAN only
    token: str | None = None  # required on every route but the page when set; generated off loopback
    cert: Path | None = None
    key: Path | None = None
    # What a 2-core machine serves at a conversational voice-to-voice: measured from outside, 1 call
    # p50 1.9-2.1 s, 2 calls 4.5-6.3 s, 3 calls 10.5 s with LLM timeouts (README "Reliability").
    # Beyond it a call gets 503 "busy, try again" instead of being admitted and starved.
    max_sessions: int = 1
    # Twilio media streams: how a transfer is carried out (the user's REST call; None: refused)
    twilio_transfer: Callable[[str, str], Awaitable[bool]] | None = None
    max_body_bytes: int = 64 * 1024
    max_sdp_bytes: int = 32 * 1024
    max_json_depth: int = 32  # an offer is 1 level deep; Python's parser recurses per level
    idle_timeout_s: float = 600.0
    connect_timeout_s: float = 30.0
    header_timeout_s: float = 5.0  # from connecting (or the last response) to a request's last header
    body_timeout_s: float = 5.0  # from the headers to the body's last byte (an offer is a few KB)
    max_connections: int = 128  # open HTTP connections; beyond, 503 and closed (a page load uses ~5)
    allow_hosts: list[str] = field(default_factory=list)  # Host names answered besides loopback and --host
    auth_free_tries: int = 5  # wrong tokens from one address before it must wait (429)
    auth_backoff_s: float = 1.0  # the first wait; doubles with each further wrong token
    token_generated: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        for spec in self.ice_servers:
            parse_ice_server(spec)  # fail at start, naming the bad URL
        if bool(self.cert) != bool(self.key):
            raise ValueError("--cert and --key go together: give both for HTTPS, or neither")
        for p in (self.cert, self.key):
            if p is not None and not Path(p).is_file():
                raise FileNotFoundError(f"TLS file not found: {p}")
        if self.max_sessions < 1:
            raise ValueError(f"--max-sessions must be at least 1, got {self.max_sessions}")
        for name in ("header_timeout_s", "body_timeout_s", "max_connections", "max_json_depth"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.token == "":
            if not is_loopback(self.host):
                raise ValueError(f"--token is empty, which would let anyone who can reach {self.host} talk to the "
                                 "agent; give a token, or leave --token out to have one generated")
            self.token = None
        if self.token is None and not is_loopback(self.host):
            self.token = secrets.token_urlsafe(16)
            self.token_generated = True

    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"

    def url(self, with_token: bool = True) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        query = f"/?token={self.token}" if self.token and with_token else "/"
        return f"{self.scheme}://{host}:{self.port}{query}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


OPTIONS = web.AppKey("options", ServeOptions)
STACK = web.AppKey("stack", StackLike)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or "" (all interfaces): treat as exposed


def make_app(stack: StackLike, options: ServeOptions) -> web.Application:
    """The aiohttp application: `/` (the page), `/static/*`, `POST /offer`, `GET /config`, `GET /health`,
    `GET /healthz`, and OpenAI's `POST /v1/audio/speech` and `/v1/audio/transcriptions`.

    Serve it with `make_runner` (its timeouts are part of the defence against slow clients).
    """
    gate = TokenGate(options.token, free_tries=options.auth_free_tries, backoff_s=options.auth_backoff_s)
    middlewares = [host_allowlist([options.host, *options.allow_hosts]), gate.middleware,
                   body_deadline(options.body_timeout_s, options.max_body_bytes, _larger_bodies(options))]
    app = web.Application(client_max_size=options.max_body_bytes, middlewares=middlewares)
    app.on_response_prepare.append(add_security_headers)
    app[PEERS] = {}
    app[STREAMS] = set()
    app[OPTIONS] = options
    app[STACK] = stack
    enable_loopback_candidates()  # a browser on this machine may only share loopback with us
    app.router.add_get("/", _index)
    app.router.add_get("/health", _health)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/config", _client_config)
    app.router.add_post("/offer", _offer)
    app.router.add_get("/phone/twilio", _twilio_stream)
    app.router.add_get("/phone/twilio/twiml", _twilio_twiml)
    app.router.add_post("/phone/twilio/twiml", _twilio_twiml)
    speech = SpeechAPI(stack)  # OpenAI-compatible speech endpoints, behind the same gate
    app.router.add_post(SPEECH_PATH, speech.speech)
    app.router.add_post(TRANSCRIPTIONS_PATH, speech.transcriptions)
    app.router.add_static("/static/", STATIC, show_index=False)
    app.on_shutdown.append(_close_all)
    return app


def _larger_bodies(options: ServeOptions) -> dict[str, LargerBody]:
    """Routes allowed a body above `max_body_bytes`: audio uploads (never less than the server's own cap)."""
    upload = LargerBody(max(UPLOAD_BODY.max_bytes, options.max_body_bytes),
                        max(UPLOAD_BODY.timeout_s, options.body_timeout_s), UPLOAD_BODY.at_once)
    return {TRANSCRIPTIONS_PATH: upload}


def make_runner(app: web.Application, options: ServeOptions) -> web.AppRunner:
    """The runner that applies `options`' header deadline and quiet client logging."""
    return web.AppRunner(app, **runner_options(options.header_timeout_s, options.body_timeout_s))


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def _health(request: web.Request) -> web.Response:
    """Each component's state when the stack reports it (`health()`); 503 when anything is not ok."""
    opts: ServeOptions = request.app[OPTIONS]
    counts = {"sessions": len(request.app[PEERS]), "max_sessions": opts.max_sessions}
    doc = {**await _stack_health(request.app[STACK]), **counts}
    return web.json_response(doc, status=200 if doc["ok"] else 503)


async def _healthz(request: web.Request) -> web.Response:
    """A probe's answer: `{"ok": true}` (200) or `{"ok": false}` (503), from the same check as /health."""
    ok = (await _stack_health(request.app[STACK]))["ok"]
    return web.json_response({"ok": ok}, status=200 if ok else 503)


async def _stack_health(stack: object) -> dict:
    """The stack's `health()` with "ok" a bool; a stack without one is up (it was loaded)."""
    report = getattr(stack, "health", None)
    if report is None:
        return {"ok": True}
    try:
        doc = report()
        if inspect.isawaitable(doc):
            doc = await doc
        return {**doc, "ok": bool(doc.get("ok"))}
    except Exception as exc:  # a broken health check is itself a failed check, not a 500
        log.warning("the stack's health check failed: %s", exc)
        return {"ok": False, "error": f"the health check failed: {exc or type(exc).__name__}"}


async def _twilio_stream(request: web.Request) -> web.StreamResponse:
    """A phone call as a Twilio-style media stream (transport/twilio.py); counted like a browser call."""
    opts: ServeOptions = request.app[OPTIONS]
    calls: set = request.app[STREAMS]
    if len(request.app[PEERS]) + len(calls) >= opts.max_sessions:
        return json_error(503, f"the server is at its limit of {opts.max_sessions} concurrent sessions",
                          headers={"Retry-After": "30"})
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=30)
    await ws.prepare(request)
    stream = TwilioStream(ws, request.app[STACK], opts.token, transfer_hook=opts.twilio_transfer)
    calls.add(stream)
    try:
        await stream.run()
    finally:
        calls.discard(stream)
        log.info("media stream %s ended (%s; %d bad messages)", stream.sid, stream.closing, stream.bad_messages)
    return ws


async def _twilio_twiml(request: web.Request) -> web.Response:
    """TwiML for a Twilio number's voice webhook: connect the call to `/phone/twilio` on this host."""
    opts: ServeOptions = request.app[OPTIONS]
    scheme = "wss" if opts.cert else "ws"
    body = twiml(f"{scheme}://{request.host}/phone/twilio", opts.token)
    return web.Response(text=body, content_type="application/xml")


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus text format from the stack (agent/metrics.py); the token guards it off loopback."""
    text = getattr(request.app[STACK], "metrics_text", None)
    if text is None:
        return json_error(404, "this server keeps no metrics")
    return web.Response(body=text(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def _client_config(request: web.Request) -> web.Response:
    """The page's RTCPeerConnection settings: the same --ice-server list (TURN needs both ends)."""
    opts: ServeOptions = request.app[OPTIONS]
    servers = []
    for spec in opts.ice_servers:
        s = parse_ice_server(spec)
        servers.append({k: v for k, v in (("urls", s.urls), ("username", s.username), ("credential", s.credential))
                        if v is not None})
    # the page tells the caller when calls are recorded (`--record-dir`)
    recording = getattr(request.app[STACK], "record_dir", None) is not None
    return web.json_response({"iceServers": servers, "recording": recording})


async def _offer(request: web.Request) -> web.Response:
    """Token, Host and body size and deadline are checked before this runs (`make_app`'s middlewares)."""
    opts: ServeOptions = request.app[OPTIONS]
    peers: dict[str, PeerSession] = request.app[PEERS]
    try:
        params = loads_bounded(await request.read(), opts.max_body_bytes, opts.max_json_depth)
    except BadJSON as exc:
        return json_error(400, f'body {exc}; send {{"sdp": "...", "type": "offer"}}')
    reason = _check_offer(params, opts.max_sdp_bytes)
    if reason:
        return json_error(400, reason)
    if len(peers) >= opts.max_sessions:
        return json_error(503, f"the server is at its limit of {opts.max_sessions} concurrent sessions; "
                               "try again when one ends", headers={"Retry-After": "30"})
    name = f"peer-{secrets.token_hex(3)}"
    peer = PeerSession(request.app[STACK], opts.ice_servers, opts.idle_timeout_s, opts.connect_timeout_s, name)
    peers[name] = peer  # counted before the slow part, so concurrent offers respect the limit
    try:
        answer = await peer.accept(RTCSessionDescription(sdp=params["sdp"], type="offer"))
    except Exception as exc:  # aiortc raises ValueError and others for SDP it cannot use
        peers.pop(name, None)
        await peer.close()
        log.info("%s: rejected offer: %s", name, exc)
        return json_error(400, f"the offer's SDP could not be used: {exc or type(exc).__name__}")

    peer.on_closed = lambda: peers.pop(name, None)
    if peer.closed.is_set():  # it failed between the answer and now
        peers.pop(name, None)
    log.info("%s: session started (%d active)", name, len(peers))
    return web.json_response({"sdp": answer.sdp, "type": answer.type})


def _check_offer(params: object, max_sdp: int) -> str | None:
    """A reason the JSON is not a usable offer, or None."""
    if not isinstance(params, dict):
        return 'expected a JSON object {"sdp": "...", "type": "offer"}'
    if params.get("type") != "offer":
        return f"'type' must be \"offer\", got {params.get('type')!r}"
    sdp = params.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        return "'sdp' must be a non-empty string"
    if len(sdp) > max_sdp:
        return f"'sdp' is longer than {max_sdp} characters"
    if not sdp.lstrip().startswith("v=0"):
        return "'sdp' is not an SDP session description (it must start with v=0)"
    return _check_sdp(sdp.replace("\r", "").split("\n"))


_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


def _check_sdp(lines: list[str]) -> str | None:
    """What aiortc accepts but no call can use: no DTLS fingerprint, or no microphone that sends."""
    session_direction, fingerprint = "sendrecv", False
    audio: list[list[str]] = []  # per audio section: [port, direction or ""]
    section: list[str] | None = None  # the current media section, if it is audio
    in_media = False
    for line in lines:
        if line.startswith("m="):
            in_media = True
            kind, _, rest = line[2:].partition(" ")
            section = [rest.partition(" ")[0], ""] if kind == "audio" else None
            if section is not None:
                audio.append(section)
        elif line.startswith("a="):
            attribute = line[2:].partition(":")[0].strip()
            fingerprint = fingerprint or attribute == "fingerprint"
            if attribute in _DIRECTIONS:
                if not in_media:
                    session_direction = attribute
                elif section is not None:
                    section[1] = attribute
    if not audio:
        return "the offer has no audio section: add a microphone track before creating the offer"
    if not fingerprint:
        return ("the offer has no DTLS fingerprint (a=fingerprint): WebRTC media must be encrypted; "
                "create the offer with a WebRTC stack (RTCPeerConnection.createOffer)")
    if not any(port != "0" and (direction or session_direction) in ("sendrecv", "sendonly")
               for port, direction in audio):
        return ("the offer sends no microphone audio (its audio is recvonly or inactive): add a microphone "
                "track (getUserMedia) before creating the offer")
    return None


async def _close_all(app: web.Application) -> None:
    peers = list(app[PEERS].values())
    await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
    app[PEERS].clear()


async def start_site(runner: web.AppRunner, options: ServeOptions, sock: socket.socket) -> GuardedSite:
    """Serve `runner` on `sock` (from `bind_socket`) with `options`' connection cap; returns the site."""
    site = GuardedSite(runner, sock, max_connections=options.max_connections,
                       handshake_timeout_s=options.header_timeout_s, ssl_context=options.ssl_context())
    try:
        await site.start()
    except OSError as exc:
        raise OSError(f"cannot listen on {options.host}:{options.port} ({exc.strerror or exc}); "
                      "pick another --port or stop what is using it") from None
    if options.port == 0:
        options.port = sock.getsockname()[1]
    return site


async def serve(stack: StackLike, options: ServeOptions, announce: Callable[[str], None] = print,
                sock: socket.socket | None = None) -> None:
    """Run the server until cancelled (Ctrl-C) or sent SIGTERM, then close every session.

    `sock`: the port bound beforehand (`bind_socket`), so the CLI reports a busy port before the
    models load; bound here when not given. The server takes it over (and closes it).
    """
    sock = sock or bind_socket(options.host, options.port)
    runner = make_runner(make_app(stack, options), options)
    try:
        await runner.setup()
    except BaseException:
        sock.close()
        raise
    try:
        await start_site(runner, options, sock)
        announce(f"open {options.url()} in a browser")
        if options.token_generated:
            announce(f"access token (generated): {options.token}")
        if not options.cert and not is_loopback(options.host):
            announce("note: browsers allow the microphone only on https or localhost; pass --cert/--key")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # SIGTERM (systemd, docker): clean exit
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        announce("stopping: closing sessions…")
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        await runner.cleanup()
        sock.close()  # closed already when the site served on it; harmless twice
