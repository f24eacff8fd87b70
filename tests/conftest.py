"""Shared test helpers. Real clips live in tests/data (see tests/data/SOURCES.md)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, for loose transcript comparisons."""
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()


class ServerUnderTest:
    """A running `make_app` server on 127.0.0.1 (see the `start_server` fixture), with small helpers."""

    def __init__(self, app, url: str, port: int) -> None:
        self.app, self.url, self.port = app, url, port

    async def post(self, body: bytes | str | dict, headers: dict | None = None, path: str = "/offer"):
        import aiohttp

        data = json.dumps(body) if isinstance(body, dict) else body
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url + path, data=data, headers=headers or {}) as r:
                return r.status, await r.json(content_type=None)

    async def get(self, path: str, headers: dict | None = None):
        """(status, headers, parsed JSON or text)."""
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.get(self.url + path, headers=headers or {}) as r:
                text = await r.text()
                try:
                    doc = json.loads(text)
                except ValueError:
                    doc = text
                return r.status, r.headers, doc

    async def wait_no_sessions(self, timeout: float = 5.0) -> None:
        from transport.server import PEERS

        for _ in range(int(timeout / 0.05)):
            if not self.app[PEERS]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{len(self.app[PEERS])} session(s) still open {timeout} s after hang-up")


@pytest.fixture
async def start_server():
    """`await start_server(stack=None, **ServeOptions fields)`: the real server on 127.0.0.1 the way
    `rejoinder serve` runs it (bound socket, runner timeouts, connection cap), on a `FakeStack` by default."""
    from tests.fakes import FakeStack
    from transport.server import ServeOptions, bind_socket, make_app, make_runner, start_site

    runners = []

    async def start(stack=None, **options) -> ServerUnderTest:
        opts = ServeOptions(port=0, **options)
        app = make_app(stack if stack is not None else FakeStack(), opts)
        runner = make_runner(app, opts)
        await runner.setup()
        runners.append(runner)
        await start_site(runner, opts, bind_socket("127.0.0.1", 0))
        return ServerUnderTest(app, f"http://127.0.0.1:{opts.port}", opts.port)

    yield start
    for r in runners:
        await r.cleanup()
