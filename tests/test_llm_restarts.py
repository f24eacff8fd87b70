"""The supervised embedded LLM on the real server: llama.cpp (xllamacpp) on the smallest GGUF
installed (SmolLM2-135M if an asset has it, else Qwen2.5-0.5B), its child killed for real
(SIGKILL, SIGSTOP), and its parent killed by SIGTERM, SIGINT and SIGKILL. The turn-level test
uses the `Rig` of tests/fakes.py with the real LLM client in place of `FakeLLM` (so: `FakeSTT`,
`FakeTTSEngine`, virtual clock). Real: the embedded server, its supervisor and the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.llm import LLMError, LLMOptions, OpenAICompatibleLLM
from agent.llm_server import EmbeddedLLMServer
from agent.llm_supervisor import BackoffOptions, LLMSupervisor, SupervisorOptions
from agent.turns import APOLOGY
from tests.fakes import Rig, until

pytestmark = pytest.mark.models
ROOT = Path(__file__).resolve().parents[1]


def _model() -> Path:
    from pipeline.assets import ASSETS, model_file

    return model_file(next((k for k in ASSETS if "smollm" in k), "qwen2.5-0.5b"))


def _supervised(tmp_path: Path, options: SupervisorOptions | None = None) -> LLMSupervisor:
    server = EmbeddedLLMServer(_model(), n_threads=1, log_path=tmp_path / "llm.log")
    return LLMSupervisor(server=server, options=options)


def _exited(pid: int) -> bool:
    """True when `pid` is gone or a zombie (exited; reaping an orphan is init's job)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _reaped(pid: int) -> bool:
    """True when `pid` is gone altogether: not even a zombie is left of it."""
    return not Path(f"/proc/{pid}").exists()


def _children() -> list[int]:
    """Pids (zombies included) whose parent is this process."""
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if int((d / "stat").read_text().rpartition(")")[2].split()[1]) == os.getpid():
                    kids.append(int(d.name))
    return kids


STORY = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
HELLO = [{"role": "user", "content": "Say hello."}]


async def test_kill_9_mid_stream_apologises_then_the_restarted_server_answers(tmp_path: Path) -> None:
    states: list[str] = []

    async def record() -> None:
        while True:
            if not states or states[-1] != sup.state:
                states.append(sup.state)
            await asyncio.sleep(0.01)

    async with _supervised(tmp_path) as sup, \
            OpenAICompatibleLLM(LLMOptions(max_tokens=200, temperature=0.0), endpoint=sup) as llm:
        recorder = asyncio.create_task(record())
        pid = sup.health()["pid"]
        got = 0
        with pytest.raises(LLMError):  # the apology path of the turn
            async for _ in llm.stream(STORY):
                got += 1
                if got == 3:
                    os.kill(pid, signal.SIGKILL)
        assert got >= 3
        deadline, text = time.monotonic() + 15, ""
        while not text and time.monotonic() < deadline:
            try:
                text = "".join([d async for d in llm.stream(HELLO)]).strip()
            except LLMError:
                await asyncio.sleep(0.1)
        recorder.cancel()
        assert text, "no reply from the restarted server within 15 s"
        h = sup.health()
        assert states == ["up", "restarting", "up"]
        assert h["restarts"] == 1 and h["last_error"] == "was killed by SIGKILL" and h["pid"] != pid
        assert _reaped(pid), f"the killed child {pid} was left a zombie"
        print(f"\nrestarted server said {text!r}")


async def test_twenty_kills_leak_no_process_fd_or_task(tmp_path: Path) -> None:
    fast = SupervisorOptions(backoff=BackoffOptions(initial_s=0.05, max_s=0.1))
    async with _supervised(tmp_path, fast) as sup, \
            OpenAICompatibleLLM(LLMOptions(), endpoint=sup) as llm:

        async def kill_and_recover() -> None:
            pid = sup.health()["pid"]
            os.kill(pid, signal.SIGKILL)
            await until(lambda: sup.state == "up" and sup.health()["pid"] != pid, 30)
            await llm.check()  # the client follows the new port
            assert _reaped(pid), f"the killed child {pid} was left a zombie"

        await llm.check()
        await kill_and_recover()  # what a restart allocates for good (the client of the new port) is counted here
        fds, tasks = len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())
        for _ in range(19):
            await kill_and_recover()
        assert sup.restarts == 20
        assert _children() == [sup.health()["pid"]]
        assert len(os.listdir("/proc/self/fd")) == fds
        assert len(asyncio.all_tasks()) == tasks
    assert _children() == []


async def test_a_frozen_child_is_found_by_probes_killed_and_replaced(tmp_path: Path) -> None:
    """SIGSTOP: the process lives but answers nothing. Probes find it; stop() escalates to SIGKILL."""
    opts = SupervisorOptions(probe_interval_s=0.3, probe_timeout_s=0.5, recheck_s=0.1, stop_timeout_s=1.0,
                             backoff=BackoffOptions(initial_s=0.05))
    async with _supervised(tmp_path, opts) as sup, OpenAICompatibleLLM(LLMOptions(max_tokens=8), endpoint=sup) as llm:
        pid = sup.health()["pid"]
        os.kill(pid, signal.SIGSTOP)
        await until(lambda: sup.state == "restarting", 5)
        assert sup.last_error == "stopped answering (its probe got no answer within 0.5 s)"
        await until(lambda: sup.state == "up", 20)
        assert "".join([d async for d in llm.stream(HELLO)]).strip()
        assert _reaped(pid) and sup.health()["pid"] != pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_the_llm_child_never_outlives_the_agent(tmp_path: Path, sig: signal.Signals) -> None:
    """A parent process supervises the real server, has its child killed once (the restarted child
    must watch its parent too), prints both pids, and is then sent `sig`."""
    script = textwrap.dedent(f"""
        import asyncio, os
        from agent.llm_server import EmbeddedLLMServer
        from agent.llm_supervisor import BackoffOptions, LLMSupervisor, SupervisorOptions
        async def main():
            server = EmbeddedLLMServer({str(_model())!r}, n_threads=1, log_path={str(tmp_path / "llm.log")!r})
            async with LLMSupervisor(server=server, options=SupervisorOptions(backoff=BackoffOptions(0.05))) as sup:
                first = sup.health()["pid"]
                os.kill(first, 9)
                while sup.health()["pid"] in (None, first):
                    await asyncio.sleep(0.05)
                print(first, sup.health()["pid"], flush=True)
                await asyncio.Event().wait()
        asyncio.run(main())
    """)
    err = tmp_path / "parent.err"
    with open(err, "w") as err_file:
        parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=err_file,
                                  text=True)
    try:
        line = parent.stdout.readline()  # type: ignore[union-attr]
        assert line, f"the parent died early: {err.read_text()}"
        first, second = map(int, line.split())
        assert _exited(first) and not _exited(second)
        parent.send_signal(sig)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while not _exited(second) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _exited(second), f"llm child {second} outlived its parent ({sig.name})"
    finally:
        parent.kill()
        parent.wait()


async def test_after_a_crash_the_next_turn_gets_a_real_reply(tmp_path: Path) -> None:
    """The turn manager with the real client and the real supervised server (fake STT and TTS
    engine, virtual clock: the `Rig` of tests/fakes.py): the child is killed while the first reply
    streams; that turn apologises, and once health says up again the next turn is really answered."""
    async with _supervised(tmp_path) as sup, OpenAICompatibleLLM(
        LLMOptions(max_tokens=200, temperature=0.0), endpoint=sup, prefill=True
    ) as llm:
        async with Rig(["Tell me a long story about a lighthouse keeper.", "Say hello in five words."], [],
                       llm=llm) as rig:
            pid = sup.health()["pid"]
            await rig.user_says()
            await until(lambda: llm.last_first_token_s is not None, 30)
            os.kill(pid, signal.SIGKILL)
            await asyncio.wait_for(rig.turns.wait_reply(), 30)
            await until(lambda: sup.state == "up", 15)
            await rig.user_says()
            await asyncio.wait_for(rig.turns.wait_reply(), 60)
    crashed, answered = rig.turns.turns
    assert crashed.agent_text == APOLOGY and crashed.error
    assert answered.error is None and answered.agent_text and answered.agent_text != APOLOGY
    print(f"\nafter the restart: {answered.agent_text!r}")
