"""The microphone's media timeline over a network (`pipeline.mic_timeline`, `transport.webrtc.track_frames`).

Unit tests on a hand-driven clock (no models, no network): frames arrive at scripted times, paced
with jitter, after an uplink stall in a burst, from an unpaced sender, after lost packets. Each checks
the invariants (monotonic, a frame's end never after the clock) and how far media time trails real
time. `track_frames` is tested the same way on real `av.AudioFrame`s from a fake track, so the
rule the WebRTC edge applies is the one tested here.

Fakes: `HandClock` (tests/fakes.py), `FakeRemoteTrack` and `StallingUplink` (here: aiortc-like
remote tracks). Real, where marked: two aiortc peers on loopback (`webrtc`); a whole echoed call on
the real listening path (Silero VAD, echo canceller, turn manager, Piper, playout; `models`) with
`FakeSTT` and `FakeLLM` of tests/fakes.py on a virtual clock.
"""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from pipeline.mic_timeline import MicTimeline
from tests.fakes import DATA, FakeLLM, FakeSTT, HandClock
from transport.webrtc import track_frames

DUR = 0.02
SLACK = MicTimeline.anchor_slack_s  # the timeline starts this far behind its first arrival
SLACK_MS = SLACK * 1000


def paced(start: float, seconds: float, jitter_s: float = 0.0, seed: int = 0) -> list[float]:
    """Arrival times of frames sent every 20 ms from `start`, each delayed by up to `jitter_s`."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds / DUR))
    sent_end = start + DUR * (np.arange(n) + 1)
    return list(np.maximum.accumulate(sent_end + rng.uniform(0, jitter_s, n)))  # in order, as a socket delivers


def stalled(start: float, before_s: float, stall_s: float, after_s: float) -> list[float]:
    """Paced frames, except that those sent during a stall all arrive at its end, 0.1 ms apart."""
    stall_start, stall_end = start + before_s, start + before_s + stall_s
    arrivals, k = [], 0
    for a in paced(start, before_s + stall_s + after_s):
        if stall_start < a < stall_end:
            a, k = stall_end + k * 1e-4, k + 1
        arrivals.append(max(a, arrivals[-1]) if arrivals else a)
    return arrivals


def run(arrivals: list[float], timeline: MicTimeline | None = None) -> tuple[MicTimeline, list[tuple[float, float]]]:
    """Feed frames arriving at `arrivals`; return the timeline and (arrival, stamp) of the kept ones."""
    clock = HandClock(arrivals[0])
    tl = timeline or MicTimeline(clock)
    tl.clock = clock
    kept = []
    for a in arrivals:
        clock.t = a
        t = tl.stamp(DUR)
        if t is not None:
            kept.append((a, t))
    return tl, kept


def assert_invariants(kept: list[tuple[float, float]]) -> None:
    stamps = [t for _, t in kept]
    assert all(b >= a + DUR - 1e-9 for a, b in zip(stamps, stamps[1:])), "timestamps overlap or go back"
    ahead = max(t + DUR - a for a, t in kept)
    assert ahead <= 1e-9, f"a frame ends {ahead * 1000:.1f} ms after it arrived"


def lag_ms(kept: list[tuple[float, float]], last: int = 50) -> float:
    """How far media time trails arrival, over the last `last` kept frames (worst case)."""
    return max(a - (t + DUR) for a, t in kept[-last:]) * 1000


def test_paced_frames_with_jitter_are_kept_contiguous_and_on_the_clock():
    tl, kept = run(paced(100.0, 30.0, jitter_s=0.015))
    assert_invariants(kept)
    assert tl.dropped == 0 and tl.reanchors == 0, (tl.dropped, tl.reanchors)
    stamps = np.array([t for _, t in kept])
    assert np.allclose(np.diff(stamps), DUR)  # no seams: the echo canceller counts samples
    assert lag_ms(kept, last=len(kept)) <= 15 + 20 + SLACK_MS + 1


def test_a_late_first_frame_does_not_make_on_time_frames_drop():
    """The device microphone's flake: the first block reached the loop 12 ms late, every later one on
    time; anchored on the late one with no slack, the on-time ones counted as ahead and were dropped."""
    arrivals = paced(100.0, 5.0)
    arrivals[0] += 0.012
    tl, kept = run(arrivals)
    assert_invariants(kept)
    assert tl.dropped == 0 and len(kept) == len(arrivals), tl.dropped


@pytest.mark.parametrize("stall_s", [0.6, 1.0, 3.0])
def test_a_burst_after_a_stall_does_not_push_media_time_ahead(stall_s):
    """The audit's case: late packets laid end to end ran the microphone `stall_s` ahead of the
    clock for the rest of the call. Here the stale part of the burst is dropped, its last 200 ms
    join the live audio without a seam, and media time stays on the clock."""
    tl, kept = run(stalled(100.0, 2.0, stall_s, 5.0))
    assert_invariants(kept)
    assert stall_s - 0.2 - 0.03 <= tl.dropped_s <= stall_s - 0.2 + 0.03 + SLACK, tl.dropped_s
    assert tl.reanchors == 0  # the burst caught up: nothing lost, so no seam
    assert lag_ms(kept) <= 1 + SLACK_MS
    after = [t for a, t in kept if a >= 100.0 + 2.0 + stall_s]
    assert np.allclose(np.diff(after), DUR)


def test_an_unpaced_sender_cannot_push_time_ahead():
    """154 s of audio sent in 10 s: only real time's worth is kept, and never ahead of the clock."""
    n = int(154 / DUR)
    arrivals = list(100.0 + np.arange(1, n + 1) * (10.0 / n))
    tl, kept = run(arrivals)
    assert_invariants(kept)
    kept_s = len(kept) * DUR
    assert 9.9 <= kept_s <= 10.0 + DUR + SLACK, kept_s
    assert abs(tl.dropped_s - (154 - kept_s)) < 1e-6


def test_a_gap_of_lost_packets_re_anchors_on_real_time():
    """Two seconds of packets lost (nothing arrives late): the timeline jumps, it does not trail."""
    arrivals = paced(100.0, 2.0) + paced(104.0, 3.0)
    tl, kept = run(arrivals)
    assert_invariants(kept)
    assert tl.reanchors == 1 and tl.dropped == 1  # the frame that could have headed a burst
    assert lag_ms(kept) <= 1 + SLACK_MS


def test_a_short_loss_is_closed_within_the_settle_window():
    """100 ms lost: below the stale bound, so it is kept contiguous at first; a lag that lasts is
    closed by a forward jump, so the echo path and voice-to-voice do not carry it for the call."""
    arrivals = paced(100.0, 2.0) + paced(102.1, 3.0)
    tl, kept = run(arrivals)
    assert_invariants(kept)
    assert tl.reanchors == 1 and tl.dropped == 0
    assert lag_ms(kept) <= 1 + SLACK_MS
    late = [a - (t + DUR) for a, t in kept if 102.1 < a < 102.5]
    assert late and min(late) > 0.09  # trailed at first (no audio dropped)…
    # …and the jump is at least `settle_s`, so a sample-counting consumer can see the seam
    stamps = np.array([t for _, t in kept])
    assert np.max(np.diff(stamps)) - DUR >= MicTimeline(HandClock()).settle_s - 1e-9


# --- track_frames: the WebRTC edge applies exactly this --------------------------------------
class FakeRemoteTrack:
    """An aiortc-like remote track: `recv()` returns 20 ms 48 kHz s16 frames; the clock reads each
    frame's scripted arrival time when it is returned. Each frame's samples hold its index."""

    kind = "audio"

    def __init__(self, clock: HandClock, arrivals: list[float]) -> None:
        self.clock, self.arrivals, self.i = clock, arrivals, 0

    async def recv(self) -> av.AudioFrame:
        if self.i >= len(self.arrivals):
            raise MediaStreamError
        self.clock.t = self.arrivals[self.i]
        pcm = np.full((1, 960), self.i, np.int16)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, self.i * 960, fractions.Fraction(1, 48_000)
        self.i += 1
        return frame


async def _track_frames(arrivals: list[float]) -> list[tuple[float, float, int]]:
    """(arrival, timestamp, frame index) of every frame `track_frames` yields."""
    clock = HandClock(arrivals[0])
    out = []
    async for f in track_frames(FakeRemoteTrack(clock, arrivals), clock):
        out.append((clock.now(), f.timestamp, int(round(f.samples[0] * 32768))))
    return out


@pytest.mark.parametrize("stall_s", [0.6, 3.0])
async def test_track_frames_keeps_the_microphone_on_the_clock_after_a_stall(stall_s):
    """Fails on the old stamping (`max(now - duration, last)`): every frame after the burst ended
    `stall_s` after it arrived, for the rest of the call."""
    out = await _track_frames(stalled(100.0, 2.0, stall_s, 3.0))
    assert_invariants([(a, t) for a, t, _ in out])
    assert lag_ms([(a, t) for a, t, _ in out]) <= 1 + SLACK_MS
    # what is kept of the burst is its freshest part, in order: the live audio follows on
    idx = [i for _, _, i in out]
    assert idx == sorted(idx) and idx[-1] == int(round((5.0 + stall_s) / DUR)) - 1


async def test_track_frames_from_an_unpaced_sender_stay_behind_the_clock():
    n = int(30 / DUR)
    out = await _track_frames(list(100.0 + np.arange(1, n + 1) * (2.0 / n)))  # 30 s of audio in 2 s
    assert_invariants([(a, t) for a, t, _ in out])
    assert len(out) * DUR <= 2.0 + DUR + SLACK


# --- real bytes: an aiortc peer whose microphone stalls, then bursts -----------------------------
class StallingMicTrack(MediaStreamTrack):
    """A 440 Hz tone as 20 ms 48 kHz s16 frames, paced to the wall clock, except that the frames due
    in [stall_at, stall_at + stall_s) of its own timeline are all sent at its end, back to back (what a
    browser's uplink does after a Wi-Fi stall: the packets were queued, not lost)."""

    kind = "audio"

    def __init__(self, stall_at: float, stall_s: float) -> None:
        super().__init__()
        self.stall_at, self.stall_s = stall_at, stall_s
        self.pos = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        import time

        if self._start is None:
            self._start = time.monotonic()
        due = self.pos / 48_000
        if self.stall_at <= due < self.stall_at + self.stall_s:
            due = self.stall_at + self.stall_s
        await asyncio.sleep(max(0.0, self._start + due - time.monotonic()))
        t = (self.pos + np.arange(960)) / 48_000
        pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, self.pos, fractions.Fraction(1, 48_000)
        self.pos += 960
        return frame


@pytest.mark.webrtc
async def test_a_real_aiortc_uplink_that_stalls_then_bursts_stays_on_the_clock():
    """Two aiortc peers on 127.0.0.1 (RTP, Opus, aiortc's jitter buffer): the sender's microphone
    stalls 1.5 s, then its queued frames go out at once. Every frame `track_frames` yields ends no
    later than the clock, and after the burst media time is back on real time. Fails on the old
    stamping: every frame after the burst ended ~1.5 s in the future."""
    from aiortc import RTCPeerConnection

    from pipeline.clock import RealClock
    from transport.webrtc import enable_loopback_candidates, rtc_configuration

    enable_loopback_candidates()
    sender, receiver = RTCPeerConnection(rtc_configuration([])), RTCPeerConnection(rtc_configuration([]))
    sender.addTrack(StallingMicTrack(stall_at=1.0, stall_s=1.5))
    remote: asyncio.Future = asyncio.get_running_loop().create_future()
    receiver.on("track", lambda track: remote.done() or remote.set_result(track))
    clock, seen = RealClock(), []
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        track = await asyncio.wait_for(remote, 20)
        started = None
        async for f in track_frames(track, clock):
            now = clock.now()
            started = started or now
            seen.append((now, f.timestamp, f.duration))
            if now - started > 4.5:
                break
    finally:
        await asyncio.gather(sender.close(), receiver.close())
    assert len(seen) > 100, len(seen)
    stamps = [t for _, t, _ in seen]
    assert all(b >= a for a, b in zip(stamps, stamps[1:]))
    ahead = max(t + d - now for now, t, d in seen)
    assert ahead <= 1e-6, f"a frame ended {ahead * 1000:.0f} ms after it arrived"
    lag = max(now - (t + d) for now, t, d in seen[-25:])
    assert lag < 0.1, f"media time trails the clock by {lag * 1000:.0f} ms after the burst"


# --- end to end: the agent's own voice echoed back over a stalling uplink ------------------------
class StallingUplink:
    """The user's side of a WebRTC call, as aiortc's receiver delivers it: `mic` (a scripted user
    plus the agent's own voice leaking back from the speaker) is sent in real time as 20 ms 48 kHz
    s16 frames; each arrives when its last sample is sent, except that once the first reply is
    over the uplink stalls for `stall_s`, then delivers what was sent meanwhile in one burst."""

    kind = "audio"

    def __init__(self, clock, mic, session, stall_s: float) -> None:
        self.clock, self.mic, self.session, self.stall_s = clock, mic, session, stall_s
        self.stall: tuple[float, float] | None = None
        self.sent_s = self.kept_s = 0.0  # audio delivered to the server, and what track_frames kept
        self._queue: asyncio.Queue = asyncio.Queue()
        self._burst = None  # clock.working() while the burst is delivered
        self._sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        async for f in self.mic.frames():  # paced on the clock: yielded at each frame's start
            self._queue.put_nowait(f)
        self._queue.put_nowait(None)

    async def recv(self) -> av.AudioFrame:
        f = await self._queue.get()
        if f is None:
            raise MediaStreamError
        if self.stall is None and self.session.turns.turns and self.session.idle():
            self.stall = (f.end, f.end + self.stall_s)
        arrive = f.end if self.stall is None or not self.stall[0] < f.end <= self.stall[1] else self.stall[1]
        if arrive > self.clock.now() and self._burst is not None:
            await self._burst.__aexit__(None, None, None)
            self._burst = None
        await self.clock.sleep_until(arrive)
        if self.stall is not None and arrive == self.stall[1] and self._burst is None:
            # the burst is read as fast as the server can: the virtual clock must not skip ahead
            # between its frames as if the uplink were idle
            self._burst = self.clock.working()
            await self._burst.__aenter__()
        pcm = (np.clip(f.samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = f.sample_rate
        self.sent_s += f.duration
        return frame


async def echoed_call_with_a_stall(voice, stall_s: float, replies: int = 6) -> tuple[list, StallingUplink, object]:
    """A whole call on the real listening path (Silero VAD, the echo canceller, the turn manager,
    Piper, the playout) on a virtual clock, with fakes for STT and LLM; the microphone comes in
    through `track_frames`. Returns the turns' metrics, the uplink and the echo canceller."""
    from agent.config import load_config
    from agent.stack import AgentStack
    from pipeline.audio import read_audio, resample
    from pipeline.clock import VirtualClock
    from transport.files import EchoPath, ScriptedMicrophone

    clock = VirtualClock()
    config = load_config()
    reply = "Sure. It will be sunny in the morning, with a light breeze from the west, and rain by the evening."
    # every utterance reads as the same request: what is tested is who has the floor
    stt = FakeSTT(answer=lambda audio: "tell me about the weather please")
    stack = AgentStack(config, stt, voice, FakeLLM(clock, [reply] * replies))
    echo = EchoPath(db=-10.0, delay_ms=100.0)  # speakers, no headset: -10 dB, 100 ms later
    session = stack.new_session(clock, sink=echo.played)
    clips = [read_audio(DATA / n) for n in ("goforward.wav", "librivox-0880.wav")]
    turns = [(resample(a, r, 48_000), 48_000) for a, r in (clips * replies)[:replies]]
    mic = ScriptedMicrophone(clock, turns, session.idle, gap_s=1.0, min_tail_s=config.vad.hangover_ms / 1000 + 0.3,
                             echo=echo)
    uplink = StallingUplink(clock, mic, session, stall_s)

    async def frames():
        async for f in track_frames(uplink, clock):
            uplink.kept_s += f.duration
            yield f

    try:
        await session.run(frames())
    finally:
        uplink._sender.cancel()
    return [m.as_dict() for m in session.turns.turns], uplink, session.echo


@pytest.fixture(scope="module")
def voice():
    from tts.piper_engine import PiperEngine

    return PiperEngine()


@pytest.mark.models
@pytest.mark.parametrize("stall_s", [0.4, 1.0, 3.0])
async def test_after_an_uplink_stall_the_agent_does_not_interrupt_itself(voice, stall_s):
    """The audit's case: after a stall, the burst ran the microphone ahead of the played reference
    and the echo canceller looked for the agent's voice outside its window: the agent cut itself off
    on every later reply and answered its own words. Now: every reply is heard out, each user turn
    gets exactly one reply, and the echo path is found where it is."""
    turns, uplink, echo = await echoed_call_with_a_stall(voice, stall_s)
    assert uplink.stall is not None, "the stall never happened"
    after = [m for m in turns if m["media_times"]["user_last_voiced"] > uplink.stall[1]]
    print(f"\nstall {stall_s} s: {len(turns)} turns, {sum(m['interrupted'] for m in turns)} interrupted; "
          f"track_frames dropped {uplink.sent_s - uplink.kept_s:.2f} s")
    assert len(after) >= 4, len(after)
    assert [m["interrupted"] for m in turns] == [False] * len(turns)  # 0 self-interruptions
    assert len(turns) == 6  # one reply per user turn: none to the agent's own words
    for m in turns:  # and voice-to-voice is a time, not a negative number
        assert m["timings_ms"]["voice_to_voice"] > 0, m["timings_ms"]
    assert echo.delay is not None and abs(echo.delay / 16 - 100) <= 25, echo.delay / 16  # ms
