"""`rejoinder bench`: voice-to-voice figures as a user hears them, over the real WebRTC path.

A Python aiortc client calls the server (started here on 127.0.0.1 with the real embedded stack,
or `--url`) with recorded speech from tests/data as its microphone, and measures on its own clock:

* voice-to-voice: the frame carrying the clip's last voiced sample sent → the first audible agent
  frame received (energy > 0.01 RMS per 20 ms frame, on both sides);
* barge-in onset (first voiced frame of the interrupting clip sent) → the agent's audio falls silent
  (the last audible frame before half a second of silence);
* self-interruptions: in echo conversations (the agent's received voice mixed back into the mic,
  100 ms late, at -10 dB) a `user_speaking` state while no user audio was being sent;
* underruns: frames the server's output had nothing to play mid-reply (its playout ledger), and at
  the client, silence gaps — which also include the voice's own pauses (Piper's are near-digital
  silence), so the client figure is an upper bound.

The server's per-stage breakdown (`timings_ms` of each turn event) is kept beside each turn.
Scenarios alternate between configurations (`--compare`) conversation by conversation, ABBA, so
the machine's drift hits both. Summaries, targets and the chart are in `agent/benches/report.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fractions
import functools
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from agent.benches import report
from agent.benches.measure import VOICED_RMS, Conversation, SentClip, Step, analyse
from agent.config import AgentConfig, _set, load_config
from pipeline.audio import read_audio, resample
from transport.client import AgentCall
from transport.pacing import FramePacer

if TYPE_CHECKING:
    from agent.stack import AgentStack

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"
CLIPS = ["librivox-0880.wav", "goforward.wav", "librivox-0920.wav", "cards/005.wav", "librivox-0870.wav"]
RATE, STEP = 48_000, 960  # the mic sends 20 ms frames at 48 kHz, like a browser
BARGE_POINTS = (0.5, 1.0, 1.5, 2.0)
ALIASES = {"preemptive": "turns.preemptive", "stt_model": "stt.model", "threads": "embedded_llm.threads"}


# --- the scripted caller ---------------------------------------------------------------------------
def _frame_rms(x: np.ndarray, step: int = STEP) -> np.ndarray:
    n = len(x) // step
    return np.sqrt(np.mean(x[: n * step].reshape(n, step) ** 2, axis=1)) if n else np.zeros(0)


class BenchMic(MediaStreamTrack):
    """The caller's microphone: queued clips (else silence), plus the agent's received voice mixed
    back in `echo_delay_s` late at `echo_db` when echo is on (speakers without a headset)."""

    kind = "audio"

    def __init__(self, echo_db: float | None = None, echo_delay_s: float = 0.1) -> None:
        super().__init__()
        self.audio = np.zeros(0, np.float32)
        self.pos = 0
        self.clips: list[SentClip] = []
        self._pacer = FramePacer(RATE)  # after a stall, the late frames go at once (catch up)
        self.echo_gain = None if echo_db is None else 10 ** (echo_db / 20)
        self.echo_delay_s = echo_delay_s
        self._echo: deque[tuple[float, np.ndarray]] = deque()
        self._pending = np.zeros(0, np.float32)

    def say(self, samples: np.ndarray, rate: int, name: str) -> SentClip:
        x = resample(samples, rate, RATE).astype(np.float32)
        start = -(-max(len(self.audio), self.pos) // STEP) * STEP  # next frame boundary
        self.audio = np.concatenate([np.pad(self.audio, (0, start - len(self.audio))), x])
        voiced = np.nonzero(_frame_rms(x) > VOICED_RMS)[0]
        clip = SentClip(name, start, start + len(x), int(voiced[0]), int(voiced[-1]))
        self.clips.append(clip)
        return clip

    def heard(self, at: float, samples: np.ndarray) -> None:
        """A frame of agent audio arrived at `at`: it leaks into the mic `echo_delay_s` later."""
        if self.echo_gain is not None:
            self._echo.append((at + self.echo_delay_s, samples))

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = await self._pacer.wait(self.pos)
        chunk = self.audio[self.pos : self.pos + STEP]
        chunk = np.pad(chunk, (0, STEP - len(chunk)))
        for c in self.clips:
            if c.start <= self.pos < c.end:
                k = (self.pos - c.start) // STEP
                if k == c.first_voiced:
                    c.onset = now
                if k == c.last_voiced:
                    c.voiced_end = now + STEP / RATE
                    c.done.set()
        if self.echo_gain is not None:
            while self._echo and self._echo[0][0] <= now:
                self._pending = np.concatenate([self._pending, self._echo.popleft()[1]])[-RATE // 2 :]
            echo, self._pending = self._pending[:STEP], self._pending[STEP:]
            chunk = chunk + self.echo_gain * np.pad(echo, (0, STEP - len(echo)))
        pcm = (np.clip(chunk, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.pos, fractions.Fraction(1, RATE)
        self.pos += STEP
        return frame


class BenchCall(AgentCall):
    """An `AgentCall` whose received audio also feeds the mic's echo path."""

    def __init__(self, mic: BenchMic) -> None:
        super().__init__(mic)
        self.mic = mic

    def _received(self, at: float, mono: np.ndarray, rate: int) -> None:
        if rate != RATE:
            mono = resample(mono, rate, RATE)
        self.audio.append((at, mono, RATE))
        self.mic.heard(at, mono)


# --- scenarios ----------------------------------------------------------------------------------
def plan(turns: int) -> list[Conversation]:
    """`turns` user turns: multi-turn dialogues, barge-ins at 0.5–2 s into replies, echo conversations."""
    convs: list[Conversation] = []
    n, c, b = 0, 0, 0
    shapes = [("dialogue", 3), ("barge", 4), ("echo", 3)]
    while n < turns:
        kind, size = shapes[len(convs) % len(shapes)]
        size = min(size, turns - n)
        steps = []
        for i in range(size):
            barge = None
            if kind == "barge" and i > 0:
                barge, b = BARGE_POINTS[b % len(BARGE_POINTS)], b + 1
            steps.append(Step(CLIPS[c % len(CLIPS)], barge))
            c += 1
        convs.append(Conversation(kind if size > 1 or kind != "barge" else "dialogue", steps))
        n += size
    return convs


_clip_cache: dict[str, tuple[np.ndarray, int]] = {}


def _clip(name: str) -> tuple[np.ndarray, int]:
    if name not in _clip_cache:
        _clip_cache[name] = read_audio(DATA / name)
    return _clip_cache[name]


async def _until(predicate: Callable[[], object], timeout: float, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(poll)
    return value


def _first_voiced(call: AgentCall, since: float) -> float | None:
    for t, s, _ in call.audio:
        if t >= since and s.size and float(np.sqrt(np.mean(s * s))) > VOICED_RMS:
            return t
    return None


def _turn_since(call: AgentCall, since: float) -> bool:
    return any(e["type"] == "turn" for e, t in zip(call.events, call.event_times) if t >= since)


def _quiet_for(call: AgentCall, seconds: float) -> bool:
    recent = [s for t, s, _ in call.audio if t >= time.monotonic() - seconds]
    return len(recent) >= int(seconds * 40) and all(float(np.sqrt(np.mean(s * s))) <= VOICED_RMS for s in recent)


async def run_conversation(url: str, conv: Conversation, gap_s: float = 0.8, echo_db: float = -10.0,
                           reply_timeout_s: float = 45.0, in_process: bool = True) -> dict:
    """One call through `conv`; returns the raw client measurements and the server's turn events."""
    mic = BenchMic(echo_db if conv.echo else None)
    call = BenchCall(mic)
    t_connect = time.monotonic()
    try:
        await call.connect(url)
        connect_ms = (time.monotonic() - t_connect) * 1000
        await asyncio.sleep(0.3)
        clip = mic.say(*_clip(conv.steps[0].clip), conv.steps[0].clip)
        for i in range(len(conv.steps)):
            if not await _until(clip.done.is_set, 30):
                raise RuntimeError(f"the mic never sent {clip.name}")
            nxt = conv.steps[i + 1] if i + 1 < len(conv.steps) else None
            ve = clip.voiced_end
            assert ve is not None, "the mic sets voiced_end before it sets done"
            if nxt is not None and nxt.barge_after_s is not None:
                first = await _until(functools.partial(_first_voiced, call, ve), reply_timeout_s)
                if first is not None:
                    await asyncio.sleep(max(0.0, first + nxt.barge_after_s - time.monotonic()))
            else:
                await _until(functools.partial(_turn_since, call, ve), reply_timeout_s)
                await _until(lambda: _quiet_for(call, 0.3), 30)
                await asyncio.sleep(gap_s)
            if nxt is not None:
                clip = mic.say(*_clip(nxt.clip), nxt.clip)
        await asyncio.sleep(0.5)  # the last events and packets
    finally:
        await call.close()
    return {"kind": conv.kind, "connect_ms": round(connect_ms, 1),
            "turns": analyse(call, mic.clips, conv, in_process)}


# --- orchestration -------------------------------------------------------------------------------
def parse_compare(spec: str) -> tuple[str, list]:
    """`stt.model=tiny.en,base` → ("stt.model", ["tiny.en", "base"]); values typed (bool, int, float)."""
    key, sep, values = spec.partition("=")
    key = ALIASES.get(key.strip(), key.strip())
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or "." not in key or len(vals) < 2:
        raise ValueError(f"--compare {spec!r}: expected KEY=A,B (e.g. stt.model=tiny.en,base)")

    def typed(v: str):
        if v.lower() in ("true", "on", "yes"):
            return True
        if v.lower() in ("false", "off", "no"):
            return False
        for kind in (int, float):
            with contextlib.suppress(ValueError):
                return kind(v)
        return v

    return key, [typed(v) for v in vals]


@contextlib.asynccontextmanager
async def _served(stack, max_sessions: int):
    from aiohttp import web

    from transport.server import ServeOptions, make_app

    runner = web.AppRunner(make_app(stack, ServeOptions(port=0, max_sessions=max_sessions)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _stack_for(ex: contextlib.AsyncExitStack, base: AgentStack | None, cfg: AgentConfig,
                     progress: Callable[[str], None]) -> AgentStack:
    """A stack for `cfg`: shares the base stack's LLM server unless the LLM settings differ."""
    from agent.stack import AgentStack, load_stack

    if base is None or cfg.llm != base.config.llm or cfg.embedded_llm != base.config.embedded_llm:
        return await ex.enter_async_context(load_stack(cfg, progress))
    from stt.engines import load_stt
    from tts.engines import load_tts

    stt = base.stt if cfg.stt == base.config.stt else await asyncio.to_thread(load_stt, cfg.stt)
    tts = base.tts_engine if cfg.tts == base.config.tts else await asyncio.to_thread(load_tts, cfg.tts)
    return AgentStack(cfg, stt, tts, base.llm)


async def run_bench(config: AgentConfig | None = None, turns: int = 10, sessions: int = 1, url: str | None = None,
                    compare: str | None = None, fast_start: bool = False, browser: bool = False,
                    progress: Callable[[str], None] = print) -> dict:
    """Run the scenarios; return the JSON document (see `report.build`)."""
    config = config or load_config()
    key, values = parse_compare(compare) if compare else (None, [None])
    if url and compare:
        raise ValueError("--compare needs in-process servers (one per value); leave out --url")
    convs = plan(turns)
    gap = 0.3 if fast_start else 0.8
    async with contextlib.AsyncExitStack() as ex:
        targets: list[tuple[str, str]] = []
        stacks: list[AgentStack] = []
        if url:
            targets.append(("remote", url.rstrip("/")))
        for v in ([] if url else values):
            cfg = copy.deepcopy(config)
            if key is not None:
                _set(cfg, key, v, source="--compare")
            stack = await _stack_for(ex, stacks[0] if stacks else None, cfg, progress)
            stacks.append(stack)
            label = f"{key}={v}" if key else "default"
            targets.append((label, await ex.enter_async_context(_served(stack, max(4, sessions)))))
        if not fast_start:
            for label, u in targets:
                progress(f"warm-up call ({label})…")
                await run_conversation(u, Conversation("dialogue", [Step(CLIPS[1])]), gap_s=0.3)
        cpu = report.CpuMeter()
        results: dict[str, list[dict]] = {label: [] for label, _ in targets}
        for n, conv in enumerate(convs):
            order = targets if n % 2 == 0 else targets[::-1]
            for label, u in order:
                progress(f"[{label}] conversation {n + 1}/{len(convs)}: {conv.kind}, {len(conv.steps)} turn(s)…")
                results[label].append(await run_conversation(u, conv, gap_s=gap, in_process=not url))
        cpu_single = cpu.read()
        load = None
        if sessions > 1:
            progress(f"{sessions} sessions at once…")
            cpu = report.CpuMeter()
            runs = await asyncio.gather(*(_run_all(targets[0][1], convs, gap, not url) for _ in range(sessions)))
            load = {"sessions": sessions, "conversations": [c for r in runs for c in r], "cpu": cpu.read()}
        page = None
        if browser:
            page = await _browser(stacks[0] if stacks else None, convs, progress)
    return report.build(results, cpu_single, load, page, turns=turns, sessions=sessions, compare=compare,
                        url=url, config=config)


async def _run_all(url: str, convs: list[Conversation], gap: float, in_process: bool) -> list[dict]:
    return [await run_conversation(url, c, gap_s=gap, in_process=in_process) for c in convs]


def _browser_demo() -> ModuleType:
    """demos/browser_call.py (not a package), loaded from its file; Chromium must be installed."""
    import importlib.util

    path = DATA.parents[1] / "demos" / "browser_call.py"
    spec = importlib.util.spec_from_file_location("browser_call", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not Path(mod.CHROMIUM).exists():
        raise FileNotFoundError(f"{mod.CHROMIUM} not found; install it with `apt-get install -y chromium`")
    return mod


async def _browser(stack, convs: list[Conversation], progress) -> dict:
    """The plain-turn scenario through headless Chromium; the page measures voice-to-voice itself."""
    if stack is None:
        raise ValueError("--browser drives an in-process server; leave out --url")
    mod = _browser_demo()
    clips = [DATA / s.clip for c in convs if c.kind == "dialogue" for s in c.steps][:4] or [DATA / CLIPS[0]]
    progress(f"browser: {len(clips)} plain turn(s) through headless Chromium…")
    result = await mod.browser_call(stack, clips, None, timeout=120.0)
    page = result.get("page", {})
    server = [t.get("timings_ms", {}).get("voice_to_voice") for t in (page.get("turns") or {}).values()]
    return {"turns": len(clips), "connect_s": result.get("connect_s"),
            "v2v_client_ms": [float(v) for v in (page.get("clientV2V") or {}).values() if v is not None],
            "v2v_server_ms": [float(v) for v in server if v is not None]}
