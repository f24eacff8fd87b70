"""Tests of the LLM supervisor's logic (`agent.llm_supervisor`) and `AgentStack.health()`.

Fakes: all but one test use `FakeProcess` (start() returns a new URL each time, as the real child
binds a new port; crash() makes it exit), a fake probe, and `HandClock` (tests/fakes.py), whose
sleep records each delay and returns at once (so back-off is checked without waiting; the probe
interval here is an endless sleep: only exits and reports matter). `test_a_remote_endpoint_*`
runs `FakeLLMServer` (tests/fakes.py, real aiohttp on 127.0.0.1), stopped and started again, with
real probes, the real client and real time. No model is loaded. The real embedded server,
killed for real: tests/test_llm_restarts.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.config import AgentConfig
from agent.llm import LLMError, LLMOptions, OpenAICompatibleLLM
from agent.llm_server import EmbeddedLLMError
from agent.llm_supervisor import Backoff, BackoffOptions, LLMSupervisor, SupervisorOptions
from agent.stack import AgentStack
from tests.fakes import FakeLLMServer, HandClock, until

# Fake-time options: probes only when a request is reported failed (the interval never elapses).
FAKE_OPTS = SupervisorOptions(probe_interval_s=1e6, recheck_s=0.25)


class FakeProcess:
    """A server whose process is a future; records its calls to prove stop() precedes each restart."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_starts = 0
        self.gate: asyncio.Event | None = None  # when set, start() waits for it
        self._exit: asyncio.Future[int] | None = None
        self._n = 0

    @property
    def running(self) -> bool:
        return self._exit is not None and not self._exit.done()

    @property
    def pid(self) -> int | None:
        return 1000 + self._n if self._n else None

    async def start(self) -> str:
        assert not self.running, "started a second server while the first still ran"
        self.calls.append("start")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_starts:
            self.fail_starts -= 1
            raise EmbeddedLLMError("embedded LLM server exited with code 1 before it was ready\nlog tail")
        self._n += 1
        self._exit = asyncio.get_running_loop().create_future()
        return f"http://127.0.0.1:{8000 + self._n}/v1"

    async def stop(self, timeout: float = 5.0) -> None:
        self.calls.append("stop")
        if self.running:
            self._exit.set_result(-15)  # type: ignore[union-attr]

    async def wait(self) -> int | None:
        return None if self._exit is None else await asyncio.shield(self._exit)

    def crash(self, code: int = -9) -> None:
        assert self._exit is not None
        self._exit.set_result(code)


def _fake_supervisor(proc: FakeProcess, clock: HandClock, probe=None) -> LLMSupervisor:
    async def ok(url: str) -> str | None:
        return None

    return LLMSupervisor(server=proc, options=FAKE_OPTS, probe=probe or ok, sleep=clock.sleep, clock=clock.now)


def test_backoff_doubles_up_to_its_cap_and_starts_over() -> None:
    b = Backoff(BackoffOptions())
    assert [b.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    b.reset()
    assert b.next() == 0.5


async def test_a_crashed_server_is_restarted_with_backoff_until_a_start_succeeds() -> None:
    """Fake process and fake time. Also: each restart first stops (reaps) the old process."""
    proc, t = FakeProcess(), HandClock(0.0)
    async with _fake_supervisor(proc, t) as sup:
        first = sup.current_url()
        proc.fail_starts, proc.gate = 3, asyncio.Event()
        proc.crash(-9)
        await until(lambda: len(proc.calls) == 3)  # start, stop, start: held in the first restart
        assert sup.state == "restarting"
        with pytest.raises(LLMError, match="restarting.*killed by SIGKILL"):
            sup.current_url()
        proc.gate.set()
        await until(lambda: sup.state == "up")
        assert t.sleeps == [0.5, 1, 2, 4]
        assert proc.calls == ["start"] + ["stop", "start"] * 4
        assert sup.current_url() != first
        h = sup.health()
        assert (h["restarts"], h["url"], h["pid"]) == (1, sup.current_url(), proc.pid)
        assert "failed to restart: embedded LLM server exited with code 1" in h["last_error"]
        assert "log tail" not in h["last_error"], "the error should be one line"
    assert proc.calls[-1] == "stop" and not proc.running


async def test_backoff_starts_over_after_the_server_ran_well_for_a_while() -> None:
    """Fake process and fake time: crashes in a row escalate; a crash after a long good run does not."""
    proc, t = FakeProcess(), HandClock(0.0)
    async with _fake_supervisor(proc, t) as sup:
        for _ in range(3):
            proc.crash()
            await until(lambda n=sup.restarts: sup.restarts == n + 1)
        assert t.sleeps == [0.5, 1, 2]
        t.t += 61  # up for longer than reset_after_s
        proc.crash()
        await until(lambda: sup.restarts == 4)
        assert t.sleeps[-1] == 0.5


async def test_a_stuck_server_is_found_by_probes_and_restarted() -> None:
    """Fake process (alive but silent), fake probe, fake time: a reported failure makes it probe at
    once; one failed probe is forgiven, `failed_probes` in a row restart the server."""
    proc, t = FakeProcess(), HandClock(0.0)
    answers: list[str | None] = ["no answer within 3 s", None, "no answer within 3 s", "no answer within 3 s"]
    probed: list[str] = []

    async def probe(url: str) -> str | None:
        probed.append(url)
        return answers.pop(0) if answers else None

    async with _fake_supervisor(proc, t, probe) as sup:
        url = sup.current_url()
        sup.request_failed(LLMError("x"))
        await until(lambda: len(probed) == 2)
        await asyncio.sleep(0.01)
        assert sup.state == "up" and sup.restarts == 0 and proc.calls == ["start"]
        sup.request_failed(LLMError("x"))
        await until(lambda: sup.restarts == 1)
        assert probed == [url] * 4
        assert proc.calls == ["start", "stop", "start"]  # the stuck process was stopped, then replaced
        assert "stopped answering (no answer within 3 s)" in sup.health()["last_error"]


async def test_health_is_not_ok_while_the_llm_restarts() -> None:
    """Fake process held in its start() to observe the restarting state; the client fails fast meanwhile."""
    proc, t = FakeProcess(), HandClock(0.0)
    async with _fake_supervisor(proc, t) as sup:
        llm = OpenAICompatibleLLM(LLMOptions(), endpoint=sup)
        stack = AgentStack(AgentConfig(), None, None, llm, llm_supervisor=sup)  # type: ignore[arg-type]
        h = stack.health()
        assert h["ok"] is True and h["components"]["llm"]["state"] == "up"
        assert h["components"]["llm"]["last_error"] is None
        assert h["components"]["stt"] == h["components"]["tts"] == {"state": "up"}
        proc.gate = asyncio.Event()
        proc.crash()
        await until(lambda: len(proc.calls) == 3)  # start, stop, start: held in the restart
        h = stack.health()
        assert h["ok"] is False
        assert h["components"]["llm"] == {"state": "restarting", "restarts": 0, "last_error": "was killed by SIGKILL",
                                          "url": None, "pid": None}
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="restarting"):
            [d async for d in llm.stream([{"role": "user", "content": "hi"}])]
        assert time.monotonic() - t0 < 0.05
        proc.gate.set()
        await until(lambda: stack.health()["ok"])
        assert stack.health()["components"]["llm"]["restarts"] == 1
        await llm.aclose()
    plain = AgentStack(AgentConfig(), None, None, OpenAICompatibleLLM(LLMOptions(base_url="http://x/v1")))  # type: ignore[arg-type]
    assert plain.health()["ok"] and plain.health()["components"]["llm"]["url"] == "http://x/v1"  # unwatched: up


async def test_a_remote_endpoint_that_goes_away_fails_fast_and_recovers() -> None:
    """Real HTTP (aiohttp fake endpoint), real probes, real time, short intervals."""
    opts = SupervisorOptions(probe_interval_s=0.2, probe_timeout_s=0.5, recheck_s=0.05,
                             backoff=BackoffOptions(initial_s=0.05, max_s=0.2))
    hello = [{"role": "user", "content": "hi"}]
    async with FakeLLMServer(deltas=["Hello", " there."]) as server:  # says "Hello there."
        port = server.port
        sup = LLMSupervisor(url=f"http://127.0.0.1:{port}/v1", options=opts)
        await sup.start()
        llm = OpenAICompatibleLLM(LLMOptions(model="m", connect_timeout=0.5), endpoint=sup)
        assert "".join([d async for d in llm.stream(hello)]) == "Hello there."
    try:  # the endpoint is gone
        with pytest.raises(LLMError, match="unreachable"):
            [d async for d in llm.stream(hello)]
        await until(lambda: sup.state == "down", 2)
        t0 = time.monotonic()
        with pytest.raises(LLMError, match=f"127.0.0.1:{port}/v1 is down"):
            [d async for d in llm.stream(hello)]
        assert time.monotonic() - t0 < 0.05, "a request to a down endpoint should fail at once"
        h = sup.health()
        assert h["state"] == "down" and h["restarts"] == 0 and "probe failed" in h["last_error"]
        async with FakeLLMServer(deltas=["Hello", " there."], port=port):  # it comes back on the same address
            await until(lambda: sup.state == "up", 3)
            assert "".join([d async for d in llm.stream(hello)]) == "Hello there."
    finally:
        await llm.aclose()
        await sup.aclose()
