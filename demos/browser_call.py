"""A whole conversation through the real page in headless Chromium, with a WAV file as the microphone.

    python demos/browser_call.py --screenshot demos/serve-page.png

Starts `rejoinder serve`'s app on 127.0.0.1 (real models), launches Chromium with a fake microphone,
drives the page over the Chrome DevTools Protocol (plain websocket, no extra package), and prints
what the page measured as JSON: connect time, the agent's states, the turns with the server's
metrics, and the page's own voice-to-voice figures. Run it inside `unshare -n` (with `ip link set lo
up`) to prove nothing leaves the machine; `tests/test_server.py` does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import soundfile as sf
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a plain checkout too

from agent.config import load_config  # noqa: E402
from agent.stack import load_stack  # noqa: E402
from pipeline.audio import read_audio, resample  # noqa: E402
from transport.server import PEERS, ServeOptions, make_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
DEFAULT_TURNS = [ROOT / "tests/data/librivox-0880.wav", ROOT / "tests/data/librivox-0870.wav"]


def chromium_flags(user_data: Path, mic_wav: Path, port: int) -> list[str]:
    """The flags ENVIRONMENT.md verified: headless, fake mic from a file, loopback ICE allowed."""
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={user_data}", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}%noloop", "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection", "--window-size=1280,860", "--hide-scrollbars",
        f"--remote-debugging-port={port}", "about:blank",
    ]


def write_fake_mic(turns: list[Path], out: Path, lead_s: float = 1.0, gap_s: float = 9.0) -> None:
    """User turns separated by `gap_s` of silence (room for the reply), as 16-bit 48 kHz PCM.

    The fake device starts playing at getUserMedia, so the file begins with `lead_s` of silence.
    """
    rate = 48_000
    parts = [np.zeros(int(lead_s * rate), np.float32)]
    for p in turns:
        audio, r = read_audio(p)
        parts += [resample(audio, r, rate), np.zeros(int(gap_s * rate), np.float32)]
    sf.write(str(out), np.concatenate(parts), rate, subtype="PCM_16")


class CDP:
    """Just enough of the Chrome DevTools Protocol: send a command, get its result."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self._ids = ws, itertools.count(1)

    async def call(self, method: str, **params) -> dict:
        msg_id = next(self._ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str):
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")


async def _page_socket(http: aiohttp.ClientSession, port: int, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json() if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
        if time.monotonic() > deadline:
            raise RuntimeError(f"Chromium's DevTools did not answer on port {port} within {timeout} s")
        await asyncio.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_chromium(chromium: str, tmp: Path, mic: Path, cdp_port: int) -> subprocess.Popen:
    """Headless Chromium with the fake mic and DevTools on `cdp_port`; its stderr goes to tmp/chromium.log."""
    with open(tmp / "chromium.log", "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([chromium, *chromium_flags(tmp / "profile", mic, cdp_port)],
                                stdout=subprocess.DEVNULL, stderr=log)


def _save_png(path: Path, b64: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(b64))


async def browser_call(stack, turns: list[Path], screenshot: Path | None, timeout: float = 90.0,
                       chromium: str = CHROMIUM) -> dict:
    """Run the conversation; return what the page and the server measured."""
    opts = ServeOptions(port=0)
    app = make_app(stack, opts)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    tmp = Path(tempfile.mkdtemp(prefix="rejoinder-chromium-"))
    mic = tmp / "mic.wav"
    write_fake_mic(turns, mic)
    cdp_port = _free_port()
    proc = _launch_chromium(chromium, tmp, mic, cdp_port)
    result: dict = {"turns_sent": len(turns)}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(await _page_socket(http, cdp_port), max_msg_size=0) as ws:
                cdp = CDP(ws)
                t0 = time.monotonic()
                await cdp.call("Page.enable")
                await cdp.call("Page.navigate", url=f"http://127.0.0.1:{port}/?ec=0&ns=0&agc=0")
                await _until(cdp, "document.readyState === 'complete' && !!window.rejoinder", 10)
                await cdp.js("document.getElementById('connect').click()")
                await _until(cdp, "window.rejoinder.connected", 15)
                result["connect_s"] = round(time.monotonic() - t0, 3)
                last = len(turns) - 1
                # the screenshot: mid-conversation, while the agent answers the last turn
                await _until(cdp, f"Object.keys(window.rejoinder.turns).length >= {last} && "
                                  f"window.rejoinder.state === 'speaking' && "
                                  f"window.rejoinder.clientV2V[{last}] !== undefined", timeout)
                if screenshot is not None:
                    await asyncio.sleep(1.2)  # let a few words of the reply show
                    shot = await cdp.call("Page.captureScreenshot", format="png")
                    _save_png(screenshot, shot["data"])
                    result["screenshot"] = str(screenshot)
                await _until(cdp, f"!!window.rejoinder.turns[{last}]", timeout)
                await asyncio.sleep(0.3)
                page = await cdp.js("JSON.stringify({connectMs: rejoinder.connectMs, state: rejoinder.state, "
                                    "turns: rejoinder.turns, clientV2V: rejoinder.clientV2V, "
                                    "remoteVoiced: rejoinder.remoteVoiced, "
                                    "shownV2V: document.getElementById('v2v-client').textContent, "
                                    "states: rejoinder.events.filter(e => e.type === 'state').map(e => e.state)})")
                result["page"] = json.loads(page)
                peers = list(app[PEERS].values())
                result["server_client_v2v"] = {str(k): v for p in peers for k, v in p.client_v2v.items()}
                await cdp.js("document.getElementById('connect').click()")  # hang up
                for _ in range(50):
                    if not app[PEERS]:
                        break
                    await asyncio.sleep(0.1)
                result["sessions_after_hangup"] = len(app[PEERS])
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


async def _until(cdp: CDP, condition: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await cdp.js(f"Boolean({condition})"):
        if time.monotonic() > deadline:
            state = await cdp.js("JSON.stringify({state: window.rejoinder && rejoinder.state, "
                                 "events: window.rejoinder && rejoinder.events.map(e => e.type), "
                                 "notice: document.getElementById('notice').textContent})")
            raise TimeoutError(f"page never reached `{condition}` within {timeout} s; page: {state}")
        await asyncio.sleep(0.1)


async def main_async(args: argparse.Namespace) -> dict:
    async with load_stack(load_config(), lambda s: print(s, file=sys.stderr)) as stack:
        return await browser_call(stack, args.turn or DEFAULT_TURNS, args.screenshot, args.timeout, args.chromium)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turn", type=Path, action="append", help="A user turn (WAV); repeatable.")
    ap.add_argument("--screenshot", type=Path, help="Save a PNG of the page mid-conversation.")
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", CHROMIUM))
    ap.add_argument("-v", "--verbose", action="store_true", help="Log the server's sessions to stderr.")
    args = ap.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        for noisy in ("aioice", "aiortc", "httpx", "httpx2", "faster_whisper"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if not Path(args.chromium).exists():
        sys.exit(f"error: {args.chromium} not found; install it with `apt-get install -y chromium`")
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
