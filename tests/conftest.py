"""Shared fixtures: `data_dir` (tests/data), `fake_assets` (a tiny packaged "model" for the asset
and cache tests) and `start_server` (the real server on a `FakeStack`).

The fakes and helpers themselves live in tests/fakes.py; test modules import them from there, not
from here (pytest imports this file; tests/test_layout.py checks that no test module does).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from tests.fakes import DATA


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def fake_assets(monkeypatch, tmp_path):
    """A package-like directory on sys.path holding two parts of a tiny 'model', and an empty
    `$REJOINDER_CACHE`; `register(sha=..., module=..., part=...)` makes it the asset "fake"."""
    from pipeline import assets
    from pipeline.assets import ModelAsset, PackagedFile

    pkg = tmp_path / "site" / "fake_model_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a.bin").write_bytes(b"hello ")
    (pkg / "data" / "b.bin").write_bytes(b"world")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("REJOINDER_CACHE", str(tmp_path / "cache"))
    good = hashlib.sha256(b"hello world").hexdigest()

    def register(sha: str = good, module: str = "fake_model_pkg", part: str = "data/b.bin") -> None:
        asset = ModelAsset("fake", "Fake model", (
            PackagedFile("joined.bin", sha, ((module, "data/a.bin"), (module, part))),
        ))
        monkeypatch.setitem(assets.ASSETS, "fake", asset)

    return register, tmp_path


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
