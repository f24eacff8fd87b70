"""Tests of the LLM adapter (`agent.llm`) and the embedded llama.cpp server (`agent.llm_server`).

Fakes: every test not marked `models` talks to `FakeLLMServer` (tests/fakes.py), the fake
OpenAI-compatible SSE server on 127.0.0.1 (modes that stream, stall, fail with HTTP 500, or stream
slowly until the client hangs up), to a closed port, or to `MovableEndpoint` (below).
`test_server_reports_a_broken_model` runs the real child and xllamacpp on a fake (garbage) GGUF
file. Real model: the tests marked `models` start EmbeddedLLMServer on the real Qwen2.5-Coder-0.5B GGUF.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent.llm import LLMError, LLMOptions, OpenAICompatibleLLM
from agent.llm_server import EmbeddedLLMError, EmbeddedLLMServer
from agent.prompts import SPEECH_SYSTEM_PROMPT
from tests.fakes import FakeLLMServer, closed_port

DELTAS = list(FakeLLMServer.DELTAS)


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(root=None) as server:  # nothing at plain /v1: "no_such_route" is a 404
        yield server


def _llm(url: str, **kw: float | bool) -> OpenAICompatibleLLM:
    return OpenAICompatibleLLM(LLMOptions(base_url=url, model="fake", **kw))  # type: ignore[arg-type]


MESSAGES = [{"role": "user", "content": "hi"}]


async def test_stream_yields_deltas_in_order(fake: FakeLLMServer) -> None:
    async with _llm(fake.url("ok")) as llm:
        await llm.check()
        got = [t async for t in llm.stream(MESSAGES)]
    assert got == DELTAS
    assert fake.requests[0]["stream"] is True and fake.requests[0]["max_tokens"] == 200
    assert llm.last_first_token_s is not None and llm.last_first_token_s < 5


async def test_http_500_raises_llm_error(fake: FakeLLMServer) -> None:
    async with _llm(fake.url("fail")) as llm:
        with pytest.raises(LLMError, match="HTTP 500.*model exploded"):
            [t async for t in llm.stream(MESSAGES)]


async def test_prefill_is_off_for_an_external_endpoint_unless_asked(fake: FakeLLMServer) -> None:
    async with _llm(fake.url("ok")) as llm:
        assert await llm.prefill(MESSAGES) is False
    assert fake.requests == [], "a billed endpoint was sent a prefill nobody asked for"
    async with _llm(fake.url("ok"), prefill_while_listening=True) as llm:
        assert await llm.prefill(MESSAGES) is True
    assert fake.requests[0]["max_tokens"] == 1 and not fake.requests[0].get("stream")


@pytest.mark.parametrize("mode", ["fail", "stall_headers", "closed"])
async def test_a_failed_prefill_is_reported_not_raised(fake: FakeLLMServer, mode: str) -> None:
    """A prefill is only a hint: a dead, failing or stuck endpoint must not break the turn."""
    url = f"http://127.0.0.1:{closed_port()}/v1" if mode == "closed" else fake.url(mode)
    async with _llm(url, prefill_while_listening=True, first_token_timeout=0.3, connect_timeout=0.5) as llm:
        t0 = time.monotonic()
        assert await llm.prefill(MESSAGES) is False
        assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("mode", ["stall_headers", "stall_body"])
async def test_stall_raises_after_first_token_timeout(fake: FakeLLMServer, mode: str) -> None:
    async with _llm(fake.url(mode), first_token_timeout=0.5) as llm:
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="no token within 0.5 s"):
            [t async for t in llm.stream(MESSAGES)]
        elapsed = time.monotonic() - t0
    assert 0.45 <= elapsed < 3.0


async def test_unreachable_endpoint_is_named() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    async with _llm(url, connect_timeout=1.0) as llm:
        with pytest.raises(LLMError, match=f"{url} is unreachable.*--llm-url"):
            await llm.check()
        with pytest.raises(LLMError, match="is unreachable"):
            [t async for t in llm.stream(MESSAGES)]


async def test_cancelling_the_consumer_closes_the_stream(fake: FakeLLMServer) -> None:
    got: list[str] = []
    three = asyncio.Event()

    async def consume(llm: OpenAICompatibleLLM) -> None:
        async for t in llm.stream(MESSAGES):
            got.append(t)
            if len(got) == 3:
                three.set()

    async with _llm(fake.url("slow")) as llm:
        task = asyncio.create_task(consume(llm))
        await asyncio.wait_for(three.wait(), 5)
        assert not fake.disconnected.is_set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        t0 = time.monotonic()
        await asyncio.wait_for(fake.disconnected.wait(), 2)
        print(f"\nserver saw the disconnect {1000 * (time.monotonic() - t0):.0f} ms after cancel returned")
    assert len(got) < 50


async def test_closing_the_generator_closes_the_stream(fake: FakeLLMServer) -> None:
    n = 0
    async with _llm(fake.url("slow")) as llm:
        async with contextlib.aclosing(llm.stream(MESSAGES)) as deltas:
            async for _ in deltas:
                n += 1
                if n == 3:
                    break  # e.g. the turn has enough text; aclosing() closes the generator right here
        await asyncio.wait_for(fake.disconnected.wait(), 2)


class MovableEndpoint:
    """A hand-moved `LLMEndpoint` (what the supervisor does after a restart), recording what it is told."""

    def __init__(self, url: str) -> None:
        self.url: str | None = url
        self.failures: list[LLMError] = []

    def current_url(self) -> str:
        if self.url is None:
            raise LLMError("LLM endpoint is down (test)")
        return self.url

    def request_failed(self, error: LLMError) -> None:
        self.failures.append(error)


async def test_the_client_follows_its_endpoint_to_a_new_url(fake: FakeLLMServer) -> None:
    """A restarted embedded server listens on a new port: the next request goes there, and the
    client for the old address is closed (no socket left behind per restart)."""
    endpoint = MovableEndpoint(fake.url("ok"))
    async with OpenAICompatibleLLM(LLMOptions(model="fake"), endpoint=endpoint) as llm:
        assert [t async for t in llm.stream(MESSAGES)] == DELTAS
        old = llm._client
        endpoint.url = fake.url("fail")
        with pytest.raises(LLMError, match=f"{fake.url('fail')} answered HTTP 500"):
            [t async for t in llm.stream(MESSAGES)]
        assert old is not None and old.is_closed() and llm._client is not old
        assert llm.base_url == fake.url("fail")


async def test_a_down_endpoint_fails_fast_without_a_request(fake: FakeLLMServer) -> None:
    endpoint = MovableEndpoint(fake.url("ok"))
    endpoint.url = None
    async with OpenAICompatibleLLM(LLMOptions(model="fake"), endpoint=endpoint, prefill=True) as llm:
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="is down"):
            [t async for t in llm.stream(MESSAGES)]
        assert time.monotonic() - t0 < 0.05
        assert await llm.prefill(MESSAGES) is False  # a prefill never raises
        with pytest.raises(LLMError, match="is down"):
            await llm.check()
        assert llm.base_url is None
    assert fake.requests == []


@pytest.mark.parametrize("mode, reported", [("closed", True), ("fail", True), ("stall_headers", True),
                                            ("no_such_route", False)])
async def test_the_endpoint_hears_of_failures_that_may_be_its_own(fake: FakeLLMServer, mode: str,
                                                                  reported: bool) -> None:
    """Unreachable, 5xx and silent endpoints are reported (the supervisor probes at once); a 404 is
    our request's fault and is not."""
    url = {"closed": f"http://127.0.0.1:{closed_port()}/v1",
           "no_such_route": f"http://127.0.0.1:{fake.port}/v1"}.get(mode) or fake.url(mode)
    endpoint = MovableEndpoint(url)
    opts = LLMOptions(model="fake", first_token_timeout=0.3, connect_timeout=0.5)
    async with OpenAICompatibleLLM(opts, endpoint=endpoint) as llm:
        with pytest.raises(LLMError) as info:
            [t async for t in llm.stream(MESSAGES)]
    assert endpoint.failures == ([info.value] if reported else [])


def test_options_need_a_url() -> None:
    with pytest.raises(ValueError, match="base URL"):
        OpenAICompatibleLLM(LLMOptions())


def test_speech_prompt_forbids_formatting() -> None:
    for word in ("Rejoinder", "markdown", "emoji", "URLs", "speech recognition"):
        assert word in SPEECH_SYSTEM_PROMPT


async def test_server_reports_a_broken_model(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"this is not a gguf file" * 100)
    server = EmbeddedLLMServer(bogus, log_path=tmp_path / "llm.log", startup_timeout=60)
    with pytest.raises(EmbeddedLLMError, match="exited with code") as info:
        await server.start()
    assert "llm.log" in str(info.value) and "Last lines" in str(info.value)
    assert server.pid is not None and _gone(server.pid)


async def test_server_rejects_a_missing_model(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedLLMError, match="does not exist"):
        await EmbeddedLLMServer(tmp_path / "nope.gguf", log_path=tmp_path / "llm.log").start()


def _gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.models
async def test_real_model_says_hello(tmp_path: Path) -> None:
    t0 = time.monotonic()
    server = EmbeddedLLMServer(log_path=tmp_path / "llm.log", warm_system_prompt=SPEECH_SYSTEM_PROMPT)
    url = await server.start()
    startup = time.monotonic() - t0
    pid = server.pid
    assert pid is not None and url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    try:
        async with OpenAICompatibleLLM(LLMOptions(base_url=url, temperature=0.0, max_tokens=40)) as llm:
            await llm.check()
            messages = [{"role": "system", "content": SPEECH_SYSTEM_PROMPT},
                        {"role": "user", "content": "Say hello in five words."}]
            t1 = time.monotonic()
            deltas = [t async for t in llm.stream(messages)]
            total = time.monotonic() - t1
            ttft = llm.last_first_token_s
            # Barge-in: closing the stream early must make llama.cpp stop decoding.
            story = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]
            async with contextlib.aclosing(llm.stream(story)) as tokens:
                async for _ in tokens:
                    break
            deadline = time.monotonic() + 3
            while "cancel task" not in server.log_tail(500) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert "cancel task" in server.log_tail(500), "llama.cpp kept decoding after the stream closed"
        # prefill (on for the embedded server): the user's words so far land in the prompt cache,
        # so the request at the pause reads only the new ones (timings from llama.cpp itself)
        heard = "I would like to hear about the lighthouses on the coast of Maine and the people who kept them"
        async with OpenAICompatibleLLM(LLMOptions(base_url=url), prefill=True) as llm:
            assert await llm.prefill([*messages[:1], {"role": "user", "content": heard}])
        read = await _prompt_tokens_read(url, [*messages[:1], {"role": "user", "content": heard + " in winter."}])
        assert read < 12, f"the server re-read {read} prompt tokens: the prefill did not reach its cache"
    finally:
        await server.stop()
    text = "".join(deltas).strip()
    assert text, "the model returned no text"
    assert ttft is not None
    rate = (len(deltas) - 1) / max(total - ttft, 1e-6)
    print(f"\nstartup {startup:.2f} s, first token {1000 * ttft:.0f} ms, {len(deltas)} deltas, "
          f"~{rate:.1f} tok/s: {text!r}")
    assert _gone(pid), f"llm child {pid} is still alive (or a zombie) after stop()"


@pytest.mark.models
async def _prompt_tokens_read(url: str, messages: list[dict]) -> int:
    async with aiohttp.ClientSession() as http:
        body = {"model": "local", "messages": messages, "max_tokens": 1}
        async with http.post(f"{url}/chat/completions", json=body) as r:
            return (await r.json())["timings"]["prompt_n"]


@pytest.mark.models  # starts the real embedded server
def test_child_exits_when_parent_dies(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, os
        from agent.llm_server import EmbeddedLLMServer
        async def main():
            s = EmbeddedLLMServer(log_path={str(tmp_path / "llm.log")!r})
            await s.start()
            print(s.pid, flush=True)
            os._exit(0)  # die without stop(): the child must notice on its own
        asyncio.run(main())
    """)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(pid), f"orphaned llm child {pid} is still running"


def test_the_llm_log_falls_back_to_the_temp_folder_when_the_cache_cannot_be_written(tmp_path):
    """A read-only (or broken) cache must not stop the embedded LLM: its log goes to the temp folder.
    No model is started: `_open_log` is what `start()` calls first."""
    from agent.llm_server import EmbeddedLLMServer

    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    server = EmbeddedLLMServer(model_path=tmp_path / "none.gguf", log_path=blocker / "logs" / "llm-server.log")
    f = server._open_log()
    try:
        assert Path(f.name).parent != blocker and server.log_path == Path(f.name)
        f.write(b"ok\n")
    finally:
        f.close()
