"""The signaling server (`transport.server`): limits, bad input, access token, teardown, the page.

Fakes: every test here except the Chromium one uses `FakeStack` (tests/fakes.py), whose session plays silence
through the real `Playout` and reports one state event: the server, aiortc peers and the Python
client (sending `silent_mic`, tests/fakes.py) are real, the models are not (they are exercised in
tests/test_webrtc.py).
The Chromium test runs demos/browser_call.py on the REAL stack with headless Chromium from Debian,
inside a network namespace that has only loopback when the machine allows it (`unshare -n`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.fakes import FakeStack, offer_sdp, silent_mic
from transport.client import AgentCall
from transport.server import OPTIONS, PEERS, ServeOptions, is_loopback, make_app

pytestmark = pytest.mark.webrtc  # real aiortc peers (and one headless Chromium) on loopback

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


# --- the page ------------------------------------------------------------------------------------
async def test_serves_the_page_and_its_assets(start_server):
    srv = await start_server()
    async with aiohttp.ClientSession() as http:
        async with http.get(srv.url + "/") as r:
            page = await r.text()
            assert r.status == 200 and "Rejoinder" in page and "/static/app.js" in page
        for asset in ("app.js", "style.css"):
            async with http.get(f"{srv.url}/static/{asset}") as r:
                assert r.status == 200, asset
        async with http.get(srv.url + "/health") as r:
            assert (await r.json())["sessions"] == 0


# --- bad input -----------------------------------------------------------------------------------
async def test_malformed_offers_get_400_with_a_reason(start_server):
    srv = await start_server()
    good = await offer_sdp()
    cases = {
        "not json": (b"{nope", "not JSON"),
        "a list": ([1, 2], "JSON object"),
        "answer, not offer": ({"sdp": good, "type": "answer"}, "'type' must be \"offer\""),
        "no sdp": ({"type": "offer"}, "'sdp' must be a non-empty string"),
        "sdp not a string": ({"sdp": 42, "type": "offer"}, "'sdp' must be a non-empty string"),
        "not sdp at all": ({"sdp": "hello world", "type": "offer"}, "must start with v=0"),
        "no audio": ({"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "type": "offer"}, "no audio"),
        "garbage sdp": ({"sdp": "v=0\r\na=fingerprint:sha-256 00\r\nm=audio garbage\r\nfoo\r\n", "type": "offer"},
                        "SDP could not be used"),
    }
    for name, (body, reason) in cases.items():
        status, doc = await srv.post(json.dumps(body) if isinstance(body, list) else body)
        assert status == 400, (name, status, doc)
        assert reason in doc["error"], (name, doc)
    assert not srv.app[PEERS], "a rejected offer left a session behind"


async def test_oversized_body_gets_413(start_server):
    srv = await start_server()
    status, doc = await srv.post(b'{"sdp": "' + b"a" * 70_000 + b'", "type": "offer"}')
    assert status == 413 and "larger than 65536 bytes" in doc["error"]
    # a body under the request limit but with an absurdly long SDP is refused too
    status, doc = await srv.post({"sdp": "v=0\r\n" + "a=x\r\n" * 8000, "type": "offer"})
    assert status == 400 and "longer than" in doc["error"]


# --- limits --------------------------------------------------------------------------------------
async def test_sessions_over_the_maximum_get_503(start_server):
    srv = await start_server(max_sessions=2)
    calls = [AgentCall(silent_mic()) for _ in range(2)]
    try:
        for c in calls:
            await c.connect(srv.url)
        status, doc = await srv.post({"sdp": await offer_sdp(), "type": "offer"})
        assert status == 503 and "limit of 2 concurrent sessions" in doc["error"]
        await calls[0].close()
        await asyncio.sleep(0.1)
        for _ in range(50):
            if len(srv.app[PEERS]) < 2:
                break
            await asyncio.sleep(0.05)
        again = AgentCall(silent_mic())  # a slot freed by a hang-up can be used again
        calls.append(again)
        await again.connect(srv.url)
    finally:
        for c in calls:
            await c.close()
    await srv.wait_no_sessions()


async def test_token_is_required_off_loopback(start_server):
    # configured as if listening on all interfaces (a token is generated), bound to 127.0.0.1 here
    srv = await start_server(host="0.0.0.0", connect_timeout_s=2.0)
    opts = srv.app[OPTIONS]
    assert opts.token and opts.token_generated and f"token={opts.token}" in opts.url()
    offer = {"sdp": await offer_sdp(), "type": "offer"}
    for headers, path in [({}, "/offer"), ({"Authorization": "Bearer wrong"}, "/offer"), ({}, "/offer?token=no")]:
        status, doc = await srv.post(offer, headers, path)
        assert status == 401 and "access token" in doc["error"], (headers, path)
    # the right token, in the header (AgentCall) and in the query string
    call = AgentCall(silent_mic())
    try:
        await call.connect(srv.url, token=opts.token)
    finally:
        await call.close()
    status, doc = await srv.post({"sdp": await offer_sdp(), "type": "offer"}, path=f"/offer?token={opts.token}")
    assert status == 200 and doc["type"] == "answer"
    # nobody connects with that answer: the connect timeout ends the session
    await srv.wait_no_sessions(5)


async def test_the_page_gets_the_servers_ice_list_behind_the_token(start_server):
    srv = await start_server(host="0.0.0.0", token="t0k", ice_servers=["stun:stun.example.org:3478",
                                                                      "turn:al:pw@turn.example.org:3478"])
    async with aiohttp.ClientSession() as http:
        async with http.get(srv.url + "/config") as r:
            assert r.status == 401
        async with http.get(srv.url + "/config?token=t0k") as r:
            assert (await r.json())["iceServers"] == [
                {"urls": "stun:stun.example.org:3478"},
                {"urls": "turn:turn.example.org:3478", "username": "al", "credential": "pw"}]


def test_safe_network_defaults():
    assert ServeOptions().host == "127.0.0.1" and ServeOptions().ice_servers == []
    assert ServeOptions().token is None  # loopback: no token needed
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("example.org")
    assert ServeOptions(host="192.168.1.5", token="abc").token == "abc"
    with pytest.raises(ValueError, match="--cert and --key go together"):
        ServeOptions(cert=Path("x.pem"))
    with pytest.raises(ValueError, match="--ice-server"):
        ServeOptions(ice_servers=["nonsense"])


# --- teardown ------------------------------------------------------------------------------------
def _child_pids() -> set[int]:
    me, kids = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        kids.add(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return kids


async def test_a_hundred_connect_disconnect_cycles_leak_nothing(start_server):
    """Fake agent stack (see the module docstring); real server, peers, tracks and client."""
    srv = await start_server()

    async def cycle() -> None:
        call = AgentCall(silent_mic())
        try:
            await call.connect(srv.url)
            await call.wait_event(lambda e: e["type"] == "state", 5)
        finally:
            await call.close()
        await srv.wait_no_sessions()

    await cycle()  # warm-up: aiortc's thread pool and codecs start on first use
    await asyncio.sleep(0.2)
    tasks0 = len(asyncio.all_tasks())
    threads0 = len([t for t in threading.enumerate() if not t.name.startswith("asyncio_")])
    kids0 = _child_pids()
    fds0 = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        await cycle()
    await asyncio.sleep(0.5)
    gc.collect()
    leaked_tasks = [t for t in asyncio.all_tasks() if not t.done()]
    assert len(leaked_tasks) <= tasks0, [t.get_name() for t in leaked_tasks]
    # asyncio's default executor keeps up to max_workers idle threads for reuse: a pool, not a leak
    pool = [t for t in threading.enumerate() if t.name.startswith("asyncio_")]
    others = [t.name for t in threading.enumerate() if t not in pool]
    assert len(others) <= threads0, others
    assert len(pool) <= min(32, (os.cpu_count() or 1) + 4)
    assert _child_pids() <= kids0
    assert len(os.listdir("/proc/self/fd")) <= fds0 + 2, "file descriptors piled up (sockets, pipes)"
    assert len(srv.app[PEERS]) == 0


async def test_server_shutdown_closes_live_sessions():
    app = make_app(FakeStack(), ServeOptions(port=0))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    call = AgentCall(silent_mic())
    try:
        await call.connect(f"http://127.0.0.1:{runner.addresses[0][1]}")
        peer = next(iter(app[PEERS].values()))
        await runner.cleanup()
        assert peer.closed.is_set() and not app[PEERS]
        assert all(t.done() for t in peer._tasks)
    finally:
        await call.close()


# --- a real browser ------------------------------------------------------------------------------
def _netns_prefix() -> list[str] | None:
    """`unshare -n` with loopback up, if this machine lets us (root or user namespaces)."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return None
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"'] if probe.returncode == 0 else None


@pytest.mark.models
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: apt-get install -y chromium")
def test_headless_chromium_talks_to_the_agent(tmp_path):
    prefix = _netns_prefix()
    cmd = [sys.executable, str(ROOT / "demos/browser_call.py"), "--screenshot", str(tmp_path / "page.png")]
    proc = subprocess.run((prefix or []) + cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    page = result["page"]
    print(f"\nchromium ({'network namespace' if prefix else 'host network'}): connect {page['connectMs']} ms, "
          f"client v2v {page['clientV2V']}, server v2v "
          f"{[t['timings_ms']['voice_to_voice'] for t in page['turns'].values()]}")
    assert page["connectMs"] is not None and page["connectMs"] < 5000
    assert len(page["turns"]) == result["turns_sent"], "not every user turn got a reply"
    for turn in page["turns"].values():
        assert turn["user_text"] and turn["heard_text"], turn
    assert page["remoteVoiced"] > 50, "the agent's reply never reached the page's audio"
    assert page["clientV2V"] and all(0 < v < 15_000 for v in page["clientV2V"].values()), page["clientV2V"]
    assert page["shownV2V"].endswith(" ms")
    assert result["server_client_v2v"] == {k: float(v) for k, v in page["clientV2V"].items()}
    assert {"speaking", "listening"} <= set(page["states"])
    assert result["sessions_after_hangup"] == 0
    assert (tmp_path / "page.png").stat().st_size > 10_000


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed (needed to make a test certificate)")
async def test_serve_over_https_and_announce_the_url(tmp_path):
    from transport.server import serve

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run, ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                         "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    opts = ServeOptions(port=0, cert=cert, key=key)
    lines: list[str] = []
    task = asyncio.create_task(serve(FakeStack(), opts, announce=lines.append))
    try:
        for _ in range(100):
            if lines:
                break
            await asyncio.sleep(0.05)
        assert lines and lines[0].startswith("open https://127.0.0.1:"), lines
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{opts.port}/", ssl=False) as r:
                assert r.status == 200 and "Rejoinder" in await r.text()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_idle_sessions_are_closed(start_server):
    srv = await start_server(idle_timeout_s=1.0)
    call = AgentCall(silent_mic())
    try:
        await call.connect(srv.url)
        closing = await call.wait_event(lambda e: e["type"] == "closing", 5)
        assert closing["reason"] == "idle timeout"
        await srv.wait_no_sessions(3)
    finally:
        await call.close()


async def test_bad_data_channel_messages_are_ignored(start_server):
    srv = await start_server()
    call = AgentCall(silent_mic())
    try:
        await call.connect(srv.url)
        await call.wait_event(lambda e: e["type"] == "state", 5)
        for junk in ["not json", "[1, 2]", '{"no": "type"}', '{"type": "client_v2v", "turn": "x", "ms": 5}',
                     '{"type": "client_v2v", "turn": 0, "ms": NaN}', '{"type": "client_v2v", "turn": 0, "ms": -3}',
                     '{"type": "mystery"}']:
            call.channel.send(junk)
        call.send({"type": "client_v2v", "turn": 0, "ms": 812.5})
        echo = await call.wait_event(lambda e: e["type"] == "v2v", 5)
        assert echo == {"type": "v2v", "turn": 0, "client_ms": 812.5, "server_ms": None}
        (peer,) = srv.app[PEERS].values()
        assert peer.client_v2v == {0: 812.5}
    finally:
        await call.close()
    await srv.wait_no_sessions()
