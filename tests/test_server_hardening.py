"""`rejoinder serve` against slow and hostile clients: deadlines, caps, bounded input, the token and
its back-off, the Host allow-list, security headers, a busy port found before the models load, the
busy page, and /health per component.

Fakes: `FakeStack` (tests/fakes.py) stands in for the models; the server, its sockets, aiortc peers
and the Python client are real. Raw clients are asyncio streams on 127.0.0.1, with deadlines in
ServeOptions set to fractions of a second so each test takes a second or two. The busy-page test
drives the real page in headless Chromium (skipped when it is not installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import soundfile as sf
from aiohttp.test_utils import make_mocked_request
from click.testing import CliRunner

from tests.fakes import FakeStack, offer_sdp, silent_mic
from transport.client import AgentCall
from transport.server import PEERS, ServeOptions

pytestmark = pytest.mark.webrtc  # a real server on loopback; real aiortc peers and Chromium in some

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "transport" / "static"
CHROMIUM = "/usr/bin/chromium"


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _until_closed(reader: asyncio.StreamReader, within_s: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open."""
    data = b""
    try:
        async with asyncio.timeout(within_s):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for more than {within_s} s") from None
    except ConnectionResetError:
        pass
    return data


# --- 1. slow clients -----------------------------------------------------------------------------
async def test_slow_headers_and_silent_connections_are_cut_after_the_header_timeout(start_server):
    srv = await start_server(header_timeout_s=0.5)
    loris_r, loris_w = await _connect(srv.port)
    silent_r, _silent_w = await _connect(srv.port)
    t0 = time.monotonic()
    loris_w.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def trickle() -> None:  # one header line every 0.2 s, never the blank line that ends them
        with contextlib.suppress(ConnectionError):
            for i in range(50):
                loris_w.write(b"X-Slow-%d: 1\r\n" % i)
                await loris_w.drain()
                await asyncio.sleep(0.2)

    trickling = asyncio.create_task(trickle())
    try:
        await _until_closed(loris_r, 3.0)
        await _until_closed(silent_r, 3.0)
    finally:
        trickling.cancel()
    assert time.monotonic() - t0 < 2.0
    status, _, doc = await srv.get("/health")  # and the server still answers
    assert status == 200 and doc["ok"]


async def test_a_body_that_never_arrives_gets_408_and_the_connection_is_closed(start_server):
    srv = await start_server(body_timeout_s=0.5)
    reader, writer = await _connect(srv.port)
    t0 = time.monotonic()
    writer.write(b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"sdp\":")  # 7 of the 1000 bytes announced
    reply = await _until_closed(reader, 3.0)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"did not arrive within 0.5 s" in reply
    assert time.monotonic() - t0 < 2.0


async def test_hundreds_of_half_open_requests_are_cut_and_health_answers(start_server):
    """The audit's fd exhaustion: half-open requests no longer pile up; each is cut at the deadline."""
    srv = await start_server(header_timeout_s=0.5, max_connections=1000)
    conns = [await _connect(srv.port) for _ in range(200)]
    for _, w in conns:
        w.write(b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
    await asyncio.gather(*(_until_closed(r, 3.0) for r, _ in conns))
    status, _, doc = await srv.get("/health")
    assert status == 200 and doc["ok"]
    call = AgentCall(silent_mic())  # and a new call gets through
    try:
        await call.connect(srv.url)
    finally:
        await call.close()
    await srv.wait_no_sessions()


async def test_connections_over_the_cap_get_503_at_once(start_server):
    srv = await start_server(max_connections=5, header_timeout_s=1.0)
    held = [await _connect(srv.port) for _ in range(5)]
    await asyncio.sleep(0.1)  # let the server register them
    extra, _ = await _connect(srv.port)
    reply = await _until_closed(extra, 0.5)
    assert reply.startswith(b"HTTP/1.1 503") and b"too many open connections" in reply
    await asyncio.gather(*(_until_closed(r, 3.0) for r, _ in held))  # the idle ones are cut at the deadline
    status, _, _ = await srv.get("/health")
    assert status == 200


@pytest.fixture
def tls_files(tmp_path) -> tuple[Path, Path]:
    """A self-signed certificate and its key (openssl)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed (needed to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_a_tls_handshake_that_never_starts_is_cut(start_server, tls_files):
    cert, key = tls_files
    srv = await start_server(cert=cert, key=key, header_timeout_s=0.5)
    reader, _writer = await _connect(srv.port)  # plain TCP, no ClientHello: asyncio alone waits 60 s
    t0 = time.monotonic()
    await _until_closed(reader, 3.0)
    assert time.monotonic() - t0 < 2.0


async def test_hostile_clients_leave_a_few_one_line_log_records(start_server, caplog):
    caplog.set_level(logging.INFO)
    srv = await start_server(body_timeout_s=0.3)
    for _ in range(30):  # malformed requests: aiohttp logged each with a traceback
        r, w = await _connect(srv.port)
        w.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nthis is no header\r\n\r\n")
        assert re.match(rb"HTTP/1\.[01] 400", await _until_closed(r, 2.0))
    for _ in range(5):  # bodies cut short
        r, w = await _connect(srv.port)
        w.write(b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"sdp\":")
        await w.drain()
        w.close()
    r, w = await _connect(srv.port)  # a body nested too deeply: aiohttp logged its 500's RecursionError
    w.write(b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 60000\r\n\r\n"
            + b"[" * 60_000)
    await _until_closed(r, 2.0)
    await asyncio.sleep(0.5)
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "transport", "asyncio"))]
    assert not [r for r in records if r.exc_info], "a traceback reached the log"
    assert all("\n" not in r.getMessage() for r in records)
    assert len(records) <= 12, [r.getMessage() for r in records]


# --- 2. input ------------------------------------------------------------------------------------
async def test_deeply_nested_json_offer_gets_400_not_500(start_server):
    srv = await start_server()
    status, doc = await srv.post(b"[" * 60_000)
    assert status == 400 and "nests deeper than 32 levels" in doc["error"], (status, doc)
    status, doc = await srv.post(b'{"sdp": ' + b"[" * 40 + b"]" * 40 + b', "type": "offer"}')
    assert status == 400 and "nests deeper" in doc["error"]


async def test_an_offer_without_a_dtls_fingerprint_gets_400(start_server):
    srv = await start_server()
    sdp = "".join(line for line in (await offer_sdp()).splitlines(keepends=True)
                  if not line.startswith("a=fingerprint"))
    status, doc = await srv.post({"sdp": sdp, "type": "offer"})
    assert status == 400 and "no DTLS fingerprint (a=fingerprint)" in doc["error"], (status, doc)
    assert not srv.app[PEERS]


async def test_an_offer_that_sends_no_microphone_audio_gets_400_and_holds_no_slot(start_server):
    srv = await start_server(max_sessions=1)
    recvonly = await offer_sdp(direction="recvonly")
    assert "a=recvonly" in recvonly
    for sdp in (recvonly, recvonly.replace("a=recvonly", "a=inactive")):
        status, doc = await srv.post({"sdp": sdp, "type": "offer"})
        assert status == 400 and "the offer sends no microphone audio" in doc["error"], (status, doc)
    assert not srv.app[PEERS]
    call = AgentCall(silent_mic())  # the one slot is still free
    try:
        await call.connect(srv.url)
    finally:
        await call.close()
    await srv.wait_no_sessions()


async def test_no_data_channel_message_can_end_the_call(start_server):
    srv = await start_server()
    call = AgentCall(silent_mic())
    try:
        await call.connect(srv.url)
        await call.wait_event(lambda e: e["type"] == "state", 5)
        (peer,) = srv.app[PEERS].values()
        hostile = ["[" * 100_000, "[" * 3000, "{" * 2000, '{"type": ' * 500, "x" * 10_000, b"\x00\xff" * 50,
                   '{"type": "client_v2v", "turn": [[[[[[1]]]]]], "ms": 1}', '{"type": {"a": [1]}}', '"type"',
                   '{"type": "client_v2v", "turn": 1e999, "ms": 1}']
        for message in hostile:
            call.channel.send(message)
        call.send({"type": "client_v2v", "turn": 0, "ms": 812.5})
        echo = await call.wait_event(lambda e: e["type"] == "v2v", 5)  # the receive loop is alive
        assert echo == {"type": "v2v", "turn": 0, "client_ms": 812.5, "server_ms": None}
        assert call.pc.connectionState == "connected" and not peer.closed.is_set()
        assert peer.dropped_messages == len(hostile)
    finally:
        await call.close()
    await srv.wait_no_sessions()


# --- 3. the access token -------------------------------------------------------------------------
def test_an_empty_token_is_refused_off_loopback():
    with pytest.raises(ValueError, match="--token is empty"):
        ServeOptions(host="0.0.0.0", token="")
    assert ServeOptions(token="").token is None  # loopback: no token, as when none is given


def test_serve_refuses_an_empty_token_off_loopback_before_loading_models(monkeypatch):
    from agent import stack
    from agent.cli import main

    monkeypatch.setattr(stack, "load_stack", mock.Mock(side_effect=AssertionError("models loaded")))
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "0", "--token", ""])
    assert result.exit_code == 2, result.output
    assert "error: --token is empty" in result.output
    assert not stack.load_stack.called


async def test_every_route_but_the_page_needs_the_token_off_loopback(start_server):
    srv = await start_server(host="0.0.0.0", token="s3cret")  # configured as exposed, bound to 127.0.0.1
    for path in ("/", "/static/app.js", "/static/style.css"):
        status, _, _ = await srv.get(path)
        assert status == 200, path
    for path in ("/health", "/config", "/nowhere"):
        status, _, doc = await srv.get(path)
        assert status == 401 and "access token" in doc["error"], path
    status, doc = await srv.post({"sdp": "v=0", "type": "offer"})
    assert status == 401
    assert (await srv.get("/health?token=s3cret"))[0] == 200
    assert (await srv.get("/health", {"Authorization": "Bearer s3cret"}))[0] == 200


async def test_wrong_tokens_get_a_growing_back_off(start_server):
    srv = await start_server(host="0.0.0.0", token="right", auth_free_tries=3, auth_backoff_s=0.5)
    for _ in range(2):
        assert (await srv.get("/health?token=wrong"))[0] == 401
    status, _, _ = await srv.get("/health?token=wrong")  # the third: from now on, wait
    assert status == 401
    status, headers, doc = await srv.get("/health?token=right")
    assert status == 429 and "too many wrong access tokens" in doc["error"] and headers["Retry-After"] == "1"
    await asyncio.sleep(0.6)
    assert (await srv.get("/health?token=wrong"))[0] == 401  # the fourth wrong one: a 1 s wait
    t0 = time.monotonic()
    while (await srv.get("/health?token=right"))[0] == 429:
        await asyncio.sleep(0.1)
    assert 0.7 < time.monotonic() - t0 < 1.5  # twice the first wait
    assert (await srv.get("/health?token=wrong"))[0] == 401  # the right token reset the count
    assert (await srv.get("/health"))[0] == 401  # no token is not a guess: never 429


def test_the_back_off_table_is_bounded():
    from transport.guard import TokenGate

    gate = TokenGate("right", free_tries=1, max_clients=100)

    async def handler(request):
        raise AssertionError("a wrong token got through")

    async def guess(address: str) -> int:
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda key, default=None: (address, 1) if key == "peername" else default
        request = make_mocked_request("GET", "/health?token=wrong", transport=transport)
        return (await gate.middleware(request, handler)).status

    async def flood() -> None:
        assert await guess("10.0.0.1") == 401
        assert await guess("10.0.0.1") == 429
        for i in range(300):
            await guess(f"10.1.0.{i}")

    asyncio.run(flood())
    assert len(gate.failures) == 100


# --- 4. web basics -------------------------------------------------------------------------------
async def test_every_response_carries_the_security_headers(start_server):
    srv = await start_server()
    responses = [await srv.get(p) for p in ("/", "/static/app.js", "/health", "/config", "/nowhere")]
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for body in (b"{nope", b"x" * 70_000):  # 400, 413
            async with http.post(srv.url + "/offer", data=body) as r:
                responses.append((r.status, r.headers, None))
        async with http.get(srv.url + "/health", headers={"Host": "evil.example"}) as r:  # 421
            responses.append((r.status, r.headers, None))
    assert {s for s, _, _ in responses} >= {200, 400, 404, 413, 421}
    for status, headers, _ in responses:
        csp = headers.get("Content-Security-Policy", "")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, status
        assert headers.get("X-Content-Type-Options") == "nosniff", status
        assert headers.get("X-Frame-Options") == "DENY", status
        assert headers.get("Referrer-Policy") == "no-referrer", status


def test_the_page_has_no_inline_script_or_style():
    """What the Content-Security-Policy would block: inline <script>/<style>, style= and on*= attributes."""
    page = (STATIC / "index.html").read_text()
    assert all('src="' in tag for tag in re.findall(r"<script\b[^>]*>", page))
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", page), "an inline script"
    assert "<style" not in page and not re.search(r"\sstyle=", page) and not re.search(r"\son[a-z]+=", page)
    script = (STATIC / "app.js").read_text()
    assert not re.search(r"style=", script), "markup with a style attribute (innerHTML) in app.js"


async def test_the_host_allow_list_turns_other_names_away(start_server):
    srv = await start_server()
    status, _, doc = await srv.get("/health", {"Host": "evil.example"})
    assert status == 421 and "--allow-host evil.example" in doc["error"], (status, doc)
    status, _, doc = await srv.get("/", {"Host": "rebind.attacker.test:8080"})
    assert status == 421
    for host in ("127.0.0.1", f"127.0.0.1:{srv.port}", "localhost:1234", "LOCALHOST", "[::1]:80", "[::1]"):
        assert (await srv.get("/health", {"Host": host}))[0] == 200, host
    named = await start_server(allow_hosts=["voice.lan"], host="127.0.0.1")
    for host in ("voice.lan:8080", "VOICE.LAN.", "localhost"):
        assert (await named.get("/health", {"Host": host}))[0] == 200, host
    assert (await named.get("/health", {"Host": "other.lan"}))[0] == 421
    call = AgentCall(silent_mic())  # the Python client passes (it addresses 127.0.0.1)
    try:
        await call.connect(named.url)
    finally:
        await call.close()
    await named.wait_no_sessions()


# --- 5. the port before the models ---------------------------------------------------------------
def test_serve_reports_a_busy_port_at_once_without_loading_models(monkeypatch):
    from agent import stack
    from agent.cli import main

    monkeypatch.setattr(stack, "load_stack", mock.Mock(side_effect=AssertionError("models loaded")))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        result = CliRunner().invoke(main, ["serve", "--port", str(port)])
        elapsed = time.monotonic() - t0
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}"), lines
    assert "--port" in lines[0]
    assert elapsed < 2.0 and not stack.load_stack.called


# --- 6. busy -------------------------------------------------------------------------------------
class _HeldSlot:
    """A session slot in use (what a live call looks like to the session count)."""

    async def close(self) -> None:
        pass


async def test_a_call_over_the_session_limit_gets_503_busy(start_server):
    srv = await start_server(max_sessions=1)
    srv.app[PEERS]["held"] = _HeldSlot()
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.post(srv.url + "/offer", json={"sdp": await offer_sdp(), "type": "offer"}) as r:
            status, retry_after, doc = r.status, r.headers.get("Retry-After"), await r.json()
    assert status == 503 and "limit of 1 concurrent sessions" in doc["error"] and "try again" in doc["error"]
    assert retry_after is not None and int(retry_after) > 0


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: apt-get install -y chromium")
async def test_the_page_says_busy_try_again_when_the_server_is_full(start_server, tmp_path):
    """The real page in headless Chromium (fake microphone), against a server whose one slot is taken."""
    from demos.browser_call import CDP, chromium_flags

    srv = await start_server(max_sessions=1)
    srv.app[PEERS]["held"] = _HeldSlot()
    mic = tmp_path / "mic.wav"
    sf.write(str(mic), np.zeros(48_000, np.float32), 48_000, subtype="PCM_16")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        cdp_port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, *chromium_flags(tmp_path / "profile", mic, cdp_port),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import aiohttp

    try:
        async with aiohttp.ClientSession() as http:
            ws_url = None
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"http://127.0.0.1:{cdp_port}/json/list") as r:
                        pages = [t for t in await r.json() if t.get("type") == "page"]
                        if pages:
                            ws_url = pages[0]["webSocketDebuggerUrl"]
                            break
                await asyncio.sleep(0.1)
            assert ws_url, "Chromium's DevTools did not answer"
            async with http.ws_connect(ws_url, max_msg_size=0) as ws:
                cdp = CDP(ws)
                await cdp.call("Page.enable")
                await cdp.call("Page.addScriptToEvaluateOnNewDocument", source=(  # what the CSP blocked, if anything
                    "window.cspViolations = []; document.addEventListener('securitypolicyviolation', "
                    "(e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"))
                await cdp.call("Page.navigate", url=f"{srv.url}/?autoconnect=1")
                notice = ""
                for _ in range(150):
                    notice = await cdp.js("(document.getElementById('notice') || {}).textContent || ''")
                    if notice:
                        break
                    await asyncio.sleep(0.1)
                violations = await cdp.js("JSON.stringify(window.cspViolations)")
                legend = await cdp.js("document.querySelectorAll('#legend i').length")
    finally:
        proc.terminate()
        await proc.wait()
    assert "busy, try again" in notice and "limit of 1 concurrent sessions" in notice, notice
    assert json.loads(violations) == [] and legend == 8, (violations, legend)  # the page works under its CSP


# --- 7. /health per component --------------------------------------------------------------------
class _ReportingStack(FakeStack):
    def __init__(self, report) -> None:
        super().__init__()
        self.report = report

    def health(self) -> dict:
        if isinstance(self.report, Exception):
            raise self.report
        return self.report


async def test_health_reports_each_component_and_503_when_one_is_down(start_server):
    down = {"ok": False, "components": {"llm": {"state": "down", "error": "the child exited"},
                                        "stt": {"state": "up"}}}
    srv = await start_server(stack=_ReportingStack(down), max_sessions=3)
    status, _, doc = await srv.get("/health")
    assert status == 503, doc
    assert doc["ok"] is False and doc["components"]["llm"]["state"] == "down"
    assert doc["sessions"] == 0 and doc["max_sessions"] == 3
    up = await start_server(stack=_ReportingStack({"ok": True, "components": {"llm": {"state": "up"}}}))
    status, _, doc = await up.get("/health")
    assert status == 200 and doc["ok"] is True and doc["components"]["llm"]["state"] == "up"
    broken = await start_server(stack=_ReportingStack(RuntimeError("boom")))
    status, _, doc = await broken.get("/health")
    assert status == 503 and doc["ok"] is False and "boom" in doc["error"]
    plain = await start_server()  # a stack without health(): today's answer
    status, _, doc = await plain.get("/health")
    assert status == 200 and doc == {"ok": True, "sessions": 0, "max_sessions": ServeOptions().max_sessions}
    json.dumps(doc)
