"""What an untrusted client may send `rejoinder serve`, and how long it may take.

The server faces browsers, scripts and, off loopback, anyone. What a client sends is bounded here:
- time: headers within a deadline of connecting (aiohttp's keep-alive timer, which also runs before
  the first request, set by `runner_options`), the body within `body_timeout_s`, a TLS handshake
  within the header deadline; open connections are capped (beyond the cap: an immediate 503);
- shape: JSON is checked for size and nesting depth before it is parsed (no RecursionError);
- who: the Host allow-list (DNS rebinding), the access token with a growing back-off per client
  address, and the security headers on every response;
- noise: client-caused errors log one line, no traceback, rate-limited.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import re
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

CLIENT_LOG = logging.getLogger("transport.clients")  # what clients did wrong (aiohttp's request logger too)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,  # the page runs its own files only (no inline code)
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the page's URL carries ?token=…
}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def json_error(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    """Every refusal is `{"error": reason}`: a client (or a person reading it) learns what to change."""
    return web.json_response({"error": reason}, status=status, headers=headers)


# --- quiet logs ----------------------------------------------------------------------------------
class QuietLog(logging.Filter):
    """At most `burst` lines per `window_s`, each one line: a flood of bad clients must not flood the log.

    A traceback is folded into the line (kept only when the logger is at DEBUG), and an HTTP parse
    error (the client's fault, not ours) is lowered to INFO.
    """

    def __init__(self, burst: int = 10, window_s: float = 10.0) -> None:
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._window_start = -math.inf
        self._count = self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        logger = logging.getLogger(record.name)
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, "INFO"
            if not logger.isEnabledFor(logging.INFO):
                return False
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            self._window_start, self._count = now, 0
        self._count += 1
        if self._count > self.burst:
            self._suppressed += 1
            return False
        message = record.getMessage()
        if exc is not None and not logger.isEnabledFor(logging.DEBUG):
            message = f"{message}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            record.exc_info, record.exc_text = None, None
        if self._suppressed:
            message += f" ({self._suppressed} similar lines suppressed)"
            self._suppressed = 0
        record.msg, record.args = message.replace("\n", " "), None  # one record, one line
        return True


if not any(isinstance(f, QuietLog) for f in CLIENT_LOG.filters):
    CLIENT_LOG.addFilter(QuietLog())


# --- bounded JSON --------------------------------------------------------------------------------
class BadJSON(ValueError):
    """Untrusted text that is not JSON, or too big or too deeply nested to parse safely."""


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def loads_bounded(data: str | bytes, max_chars: int, max_depth: int) -> Any:
    """`json.loads`, after checking size and nesting depth: Python's parser recurses per level, and
    a few kilobytes of `[` raise RecursionError, which would escape as a 500 or end a call."""
    if len(data) > max_chars:
        raise BadJSON(f"is larger than {max_chars} bytes")
    try:
        text = data.decode() if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise BadJSON("is not JSON (not UTF-8)") from None
    depth = deepest = 0
    for c in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):  # brackets outside strings
        depth += 1 if c in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > max_depth:
                raise BadJSON(f"nests deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except ValueError:
        raise BadJSON("is not JSON") from None


# --- the Host allow-list -------------------------------------------------------------------------
def _host_name(value: str) -> str:
    """The name in a Host header, without port or brackets, lower case; IP literals normalized."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    value = value.rstrip(".")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _local_address(request: web.Request) -> str | None:
    """The address this connection reached us on (an IPv4-mapped IPv6 address as plain IPv4)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sockname, tuple):
        return None
    try:
        ip = ipaddress.ip_address(sockname[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _is_loopback_ip(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowlist(names: Iterable[str]) -> Middleware:
    """Answer only requests whose Host names this server: a web page on an attacker's domain that
    re-points its DNS at us (DNS rebinding) sends its own name, and is turned away with 421.

    Always allowed: loopback names and IPs, and the address the connection arrived on (an IP literal
    cannot be rebound). `names` adds the configured --host and --allow-host names.
    """
    allowed = set(LOOPBACK_NAMES) | {_host_name(n) for n in names if n and n not in ("0.0.0.0", "::")}

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Host", "")
        name = _host_name(header)
        if not name:
            return json_error(400, "the request has no Host header")
        if name in allowed or name == _local_address(request) or _is_loopback_ip(name):
            return await handler(request)
        return json_error(421, f"this server does not answer for the host name {header.strip()[:100]!r}; "
                               f"if that is how clients reach it, start it with --allow-host {name[:100]}")

    return check_host


# --- the access token, with a back-off -----------------------------------------------------------
class TokenGate:
    """The access token on every route but the page itself, and a growing back-off for guessers.

    After `free_tries` wrong tokens from one client address, that address is answered 429 for
    `backoff_s`, doubling with each further wrong token up to `max_backoff_s`. The table of addresses
    holds at most `max_clients` (the oldest is forgotten first), so a flood cannot grow it.
    """

    def __init__(self, token: str | None, free_tries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 300.0,
                 max_clients: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.token, self.free_tries, self.backoff_s, self.max_backoff_s = token, free_tries, backoff_s, max_backoff_s
        self.max_clients, self.clock = max_clients, clock
        self.failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address → (wrong tokens, last one)

    def _wait(self, failures: int) -> float:
        """Seconds to wait after the latest of `failures` wrong tokens: none at first, then doubling."""
        if failures < self.free_tries:
            return 0.0
        return min(self.max_backoff_s, self.backoff_s * 2 ** (failures - self.free_tries))

    @staticmethod
    def is_open(path: str) -> bool:
        """The page and its files carry no secrets; the page itself reads the token from its URL. A
        media stream (`/phone/twilio`) proves the token in its `start` message: Twilio's Stream URLs
        take no query string, and a WebSocket from Twilio sends no Authorization header."""
        return path in ("/", "/phone/twilio") or path.startswith("/static/")

    def _given(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else request.query.get("token", "")

    def _refused(self, address: str) -> web.Response | None:
        if address not in self.failures:
            return None
        failures, last = self.failures[address]
        waited = self.clock() - last
        if waited < self._wait(failures):
            wait = math.ceil(self._wait(failures) - waited)
            return json_error(429, f"too many wrong access tokens from {address}; try again in {wait} s",
                              headers={"Retry-After": str(wait)})
        if waited > self.max_backoff_s + self._wait(failures):  # quiet long enough: forgiven
            del self.failures[address]
        return None

    def _record_failure(self, address: str) -> None:
        failures = self.failures.pop(address, (0, 0.0))[0] + 1
        self.failures[address] = (failures, self.clock())  # most recent last: the oldest is evicted first
        while len(self.failures) > self.max_clients:
            self.failures.popitem(last=False)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.token or self.is_open(request.path):
            return await handler(request)
        address = request.remote or "?"
        refused = self._refused(address)
        if refused is not None:
            return refused
        given = self._given(request)
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            if given:  # a guess; a missing token is a person who opened the wrong URL
                self._record_failure(address)
                CLIENT_LOG.info("%s: wrong access token on %s", address, request.path)
            return json_error(401, "missing or wrong access token: open the URL the server printed (it carries "
                                   "?token=…) or send 'Authorization: Bearer TOKEN'")
        self.failures.pop(address, None)
        return await handler(request)


# --- the body, in time ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LargerBody:
    """One route's own body allowance, above the server's cap (an audio upload): still bounded in
    size and time, and at most `at_once` such bodies are held in memory (and handled) together;
    beyond that, 503 before a byte of the body is read."""

    max_bytes: int
    timeout_s: float
    at_once: int = 2


def body_deadline(timeout_s: float, max_bytes: int, larger: Mapping[str, LargerBody] | None = None) -> Middleware:
    """Read the whole body within `timeout_s` before any handler runs: a client that announces 1000
    bytes and sends 7 gets 408 and is closed, instead of holding the connection open.

    `larger`: request path → that route's own `LargerBody` limits (POST only; every other method and
    path keeps `max_bytes` and `timeout_s`)."""
    larger = dict(larger or {})
    holding = dict.fromkeys(larger, 0)  # path → bodies of that route in memory now

    async def read_within(request: web.Request, limit_bytes: int, limit_s: float) -> web.Response | None:
        too_large = json_error(413, f"request body is larger than {limit_bytes} bytes")
        if request.content_length is not None and request.content_length > limit_bytes:
            too_large.force_close()
            return too_large
        try:
            async with asyncio.timeout(limit_s):
                await request.read()  # kept by aiohttp: the handler's read() returns it
        except TimeoutError:
            CLIENT_LOG.info("%s: request body not received within %.1f s; closing", request.remote, limit_s)
            slow = json_error(408, f"the request body did not arrive within {limit_s:g} s")
            slow.force_close()
            return slow
        except web.HTTPRequestEntityTooLarge:
            too_large.force_close()
            return too_large
        except Exception as exc:  # the client went away mid-body, or sent a broken chunked encoding
            CLIENT_LOG.info("%s: request body unreadable (%s)", request.remote, type(exc).__name__)
            cut = json_error(400, f"the request body could not be read ({type(exc).__name__})")
            cut.force_close()
            return cut
        return None

    @web.middleware
    async def read_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = larger.get(request.path) if request.method == "POST" else None
        if route is None or not request.body_exists:
            refused = await read_within(request, max_bytes, timeout_s) if request.body_exists else None
            return refused or await handler(request)
        path = request.path
        if holding[path] >= route.at_once:
            busy = json_error(503, f"{route.at_once} uploads are being handled; try again soon",
                              headers={"Retry-After": "5"})
            busy.force_close()
            return busy
        holding[path] += 1
        try:
            request = request.clone(client_max_size=route.max_bytes)  # aiohttp's own cap, for this request
            refused = await read_within(request, route.max_bytes, route.timeout_s)
            return refused or await handler(request)
        finally:
            holding[path] -= 1

    return read_body


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every response, the page's and every error's alike."""
    response.headers.update(SECURITY_HEADERS)


# --- the listening socket ------------------------------------------------------------------------
def runner_options(header_timeout_s: float, body_timeout_s: float) -> dict[str, Any]:
    """`web.AppRunner` keywords: aiohttp's keep-alive timer also runs from the moment a connection
    opens, so it is the deadline for a request's headers; lingering after an unread body is bounded."""
    return {"access_log": None, "keepalive_timeout": header_timeout_s, "lingering_time": body_timeout_s,
            "logger": CLIENT_LOG}


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the port now, listen later: a busy port is reported at once, before the models load, and
    nobody connects (they are refused) until the server is ready."""
    dual_stack = host == "" and socket.has_dualstack_ipv6()  # "": every interface, IPv6 and IPv4 on one socket
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            "::" if dual_stack else (host or "0.0.0.0"), port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
            socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                      "pick another --port or stop what is using it") from None
    return sock


_BUSY_BODY = b'{"error": "the server has too many open connections; try again soon"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class _Refuse(asyncio.Protocol):
    """A connection over the cap: one 503, then closed, before reading a byte."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        CLIENT_LOG.info("%s: refused: too many open connections", peer[0] if isinstance(peer, tuple) else "?")
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class GuardedSite(web.BaseSite):
    """A runner served on a socket bound beforehand (`bind_socket`), with at most `max_connections`
    open at once (roughly: accepts in one loop tick are counted together) and a TLS handshake deadline
    (asyncio's own is 60 s). aiohttp's sites offer neither."""

    __slots__ = ("_sock", "_max_connections", "_handshake_timeout_s")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, max_connections: int,
                 handshake_timeout_s: float, ssl_context: ssl.SSLContext | None = None, backlog: int = 128) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._sock, self._max_connections, self._handshake_timeout_s = sock, max_connections, handshake_timeout_s

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self._ssl_context else 'http'}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            return _Refuse() if len(server.connections) >= self._max_connections else server()

        self._server = await asyncio.get_running_loop().create_server(
            protocol, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout_s if self._ssl_context else None)
