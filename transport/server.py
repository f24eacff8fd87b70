"""`rejoinder serve`: the signaling server (aiohttp) that serves the page and accepts WebRTC offers.

Contract (stable; other clients rely on it):

    POST /offer   {"sdp": "...", "type": "offer"}  →  200 {"sdp": "...", "type": "answer"}

Errors are JSON `{"error": reason}`: 400 malformed request or SDP, 401 missing/wrong token, 413 body
too large, 503 too many sessions. Safe defaults: loopback only, no public STUN server, and an access
token whenever the server listens on anything but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import signal
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aiohttp import web
from aiortc import RTCSessionDescription

from transport.webrtc import PeerSession, StackLike, enable_loopback_candidates, parse_ice_server

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PEERS = web.AppKey("peers", dict)
OPTIONS = web.AppKey("options", object)
STACK = web.AppKey("stack", object)


@dataclass
class ServeOptions:
    """Network and limit settings of `rejoinder serve`, with safe defaults."""

    host: str = "127.0.0.1"
    port: int = 8080
    ice_servers: list[str] = field(default_factory=list)  # none: no public STUN, local/LAN only
    token: str | None = None  # required on /offer when set; generated for non-loopback hosts
    cert: Path | None = None
    key: Path | None = None
    max_sessions: int = 4  # each session transcribes and synthesizes on the same 2 cores
    max_body_bytes: int = 64 * 1024
    max_sdp_bytes: int = 32 * 1024
    idle_timeout_s: float = 600.0
    connect_timeout_s: float = 30.0
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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or "" (all interfaces): treat as exposed


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def make_app(stack: StackLike, options: ServeOptions) -> web.Application:
    """The aiohttp application: `/` (the page), `/static/*`, `POST /offer`, `GET /config`, `GET /health`."""
    app = web.Application(client_max_size=options.max_body_bytes)
    app[PEERS] = {}
    app[OPTIONS] = options
    app[STACK] = stack
    enable_loopback_candidates()  # a browser on this machine may only share loopback with us
    app.router.add_get("/", _index)
    app.router.add_get("/health", _health)
    app.router.add_get("/config", _client_config)
    app.router.add_post("/offer", _offer)
    app.router.add_static("/static/", STATIC, show_index=False)
    app.on_shutdown.append(_close_all)
    return app


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def _health(request: web.Request) -> web.Response:
    opts: ServeOptions = request.app[OPTIONS]
    return web.json_response({"ok": True, "sessions": len(request.app[PEERS]), "max_sessions": opts.max_sessions})


async def _client_config(request: web.Request) -> web.Response:
    """The page's RTCPeerConnection settings: the same --ice-server list (TURN needs both ends)."""
    opts: ServeOptions = request.app[OPTIONS]
    if not _authorized(request, opts.token):  # TURN credentials are not for everyone
        return _error(401, "missing or wrong access token")
    servers = []
    for spec in opts.ice_servers:
        s = parse_ice_server(spec)
        servers.append({k: v for k, v in (("urls", s.urls), ("username", s.username), ("credential", s.credential))
                        if v is not None})
    return web.json_response({"iceServers": servers})


def _authorized(request: web.Request, token: str | None) -> bool:
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else request.query.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


async def _offer(request: web.Request) -> web.Response:
    opts: ServeOptions = request.app[OPTIONS]
    peers: dict[str, PeerSession] = request.app[PEERS]
    if not _authorized(request, opts.token):
        return _error(401, "missing or wrong access token: open the URL the server printed (it carries "
                           "?token=…) or send 'Authorization: Bearer TOKEN'")
    if request.content_length is not None and request.content_length > opts.max_body_bytes:
        return _error(413, f"request body is larger than {opts.max_body_bytes} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body is larger than {opts.max_body_bytes} bytes")
    try:
        params = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, 'body is not JSON; send {"sdp": "...", "type": "offer"}')
    reason = _check_offer(params, opts.max_sdp_bytes)
    if reason:
        return _error(400, reason)
    if len(peers) >= opts.max_sessions:
        return _error(503, f"the server is at its limit of {opts.max_sessions} concurrent sessions; "
                           "try again when one ends")
    name = f"peer-{secrets.token_hex(3)}"
    peer = PeerSession(request.app[STACK], opts.ice_servers, opts.idle_timeout_s, opts.connect_timeout_s, name)
    peers[name] = peer  # counted before the slow part, so concurrent offers respect the limit
    try:
        answer = await peer.accept(RTCSessionDescription(sdp=params["sdp"], type="offer"))
    except Exception as exc:  # aiortc raises ValueError and others for SDP it cannot use
        peers.pop(name, None)
        await peer.close()
        log.info("%s: rejected offer: %s", name, exc)
        return _error(400, f"the offer's SDP could not be used: {exc or type(exc).__name__}")

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
    if "\nm=audio" not in sdp.replace("\r", ""):
        return "the offer has no audio section: add a microphone track before creating the offer"
    return None


async def _close_all(app: web.Application) -> None:
    peers = list(app[PEERS].values())
    await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
    app[PEERS].clear()


async def serve(stack: StackLike, options: ServeOptions, announce: Callable[[str], None] = print) -> None:
    """Run the server until cancelled (Ctrl-C) or sent SIGTERM, then close every session."""
    runner = web.AppRunner(make_app(stack, options), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port, ssl_context=options.ssl_context())
        try:
            await site.start()
        except OSError as exc:
            raise OSError(f"cannot listen on {options.host}:{options.port} ({exc.strerror or exc}); "
                          "pick another --port or stop what is using it") from None
        if options.port == 0:
            options.port = runner.addresses[0][1]
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
