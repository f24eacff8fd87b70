"""The WebRTC edge (`transport.webrtc`) and a whole call over it.

Unit tests (no models): av frame conversion for every sample layout aiortc/browsers deliver, the
agent's output track (pacing, 20 ms 48 kHz s16 frames, a tiny queue), ICE server parsing.

End to end on the REAL embedded stack (Silero VAD, Whisper tiny.en, Qwen 0.5B via llama.cpp as a
child process, Piper), offline: a Python aiortc client on 127.0.0.1 sends a LibriVox recording as
its microphone through `POST /offer`, and gets back the agent's spoken reply (checked to be speech by
its energy and by transcribing it), the transcript and the per-turn metrics on the data channel.
"""

from __future__ import annotations

import asyncio
import time

import av
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from pipeline.audio import AudioFrame, read_audio
from tests.fakes import DATA, words
from transport.client import AgentCall, ScriptedMicTrack
from transport.server import PEERS, ServeOptions, make_app
from transport.webrtc import OUT_FRAME, OUT_RATE, AgentAudioTrack, frame_to_mono, parse_ice_server, rtc_configuration

pytestmark = pytest.mark.webrtc  # real aiortc peers on loopback


# --- unit -----------------------------------------------------------------------------------------
def _av_frame(fmt: str, layout: str, data: np.ndarray, rate: int = 48_000) -> av.AudioFrame:
    f = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
    f.sample_rate = rate
    return f


def test_frame_to_mono_handles_packed_planar_and_float():
    left = np.linspace(-0.5, 0.5, 960).astype(np.float32)
    right = -left / 2
    s16 = lambda x: (x * 32768).astype(np.int16)  # noqa: E731
    packed = np.empty(1920, np.int16)
    packed[0::2], packed[1::2] = s16(left), s16(right)
    expected = (left + right) / 2
    cases = {
        "s16 packed stereo (aiortc's Opus decoder)": _av_frame("s16", "stereo", packed.reshape(1, -1)),
        "s16p planar stereo": _av_frame("s16p", "stereo", np.stack([s16(left), s16(right)])),
        "fltp planar stereo": _av_frame("fltp", "stereo", np.stack([left, right])),
        "s16 mono": _av_frame("s16", "mono", s16(expected).reshape(1, -1)),
    }
    for name, frame in cases.items():
        mono = frame_to_mono(frame)
        assert mono.dtype == np.float32 and mono.shape == (960,), name
        np.testing.assert_allclose(mono, expected, atol=2e-4, err_msg=name)


async def test_agent_track_paces_20ms_frames_with_pts_and_plays_silence_when_idle():
    track = AgentAudioTrack()
    tone = (0.3 * np.sin(np.arange(OUT_FRAME) / 10)).astype(np.float32)
    track.push(AudioFrame(tone, OUT_RATE, 0.0))
    t0 = time.monotonic()
    frames = [await track.recv() for _ in range(10)]
    elapsed = time.monotonic() - t0
    assert 0.15 <= elapsed <= 0.4, f"10 frames of 20 ms took {elapsed:.3f} s: not paced to the wall clock"
    assert [f.pts for f in frames] == [i * OUT_FRAME for i in range(10)]
    for f in frames:
        assert f.sample_rate == OUT_RATE and f.format.name == "s16" and f.layout.name == "mono"
        assert f.samples == OUT_FRAME
    assert np.abs(frames[0].to_ndarray()).max() > 5000, "the pushed tone was not sent first"
    assert not frames[-1].to_ndarray().any(), "idle output must be silence"
    track.stop()


def test_agent_track_queue_is_tiny_so_a_flush_is_heard_at_once():
    track = AgentAudioTrack(max_frames=4)
    for i in range(20):
        track.push(AudioFrame(np.full(OUT_FRAME, 0.1, np.float32), OUT_RATE, i * 0.02))
    assert len(track._frames) == 4 and track.dropped == 16
    with pytest.raises(ValueError, match="48000"):
        track.push(AudioFrame(np.zeros(480, np.float32), 24_000, 0.0))


def test_ice_servers_are_explicit():
    assert rtc_configuration([]).iceServers == []  # no public STUN by default
    turn = parse_ice_server("turn:alice:s3cret@turn.example.org:3478")
    assert (turn.urls, turn.username, turn.credential) == ("turn:turn.example.org:3478", "alice", "s3cret")
    assert parse_ice_server("stun:stun.example.org:3478").urls == "stun:stun.example.org:3478"
    with pytest.raises(ValueError, match="--ice-server"):
        parse_ice_server("http://example.org")


# --- end to end on the real stack ----------------------------------------------------------------
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    """The real stack (loaded once for the module) behind the real app on 127.0.0.1."""
    from agent.config import load_config
    from agent.stack import load_stack

    async with load_stack(load_config()) as stack:
        app = make_app(stack, ServeOptions(port=0, max_sessions=4))  # tests follow each other fast
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield stack, app, f"http://127.0.0.1:{runner.addresses[0][1]}"
        await runner.cleanup()


@pytest.mark.models
@pytest.mark.asyncio(loop_scope="module")
async def test_a_spoken_call_over_webrtc(server):
    stack, app, url = server
    audio, rate = read_audio(DATA / "librivox-0880.wav")
    mic = ScriptedMicTrack(audio, rate, lead_s=0.5)
    call = AgentCall(mic)
    try:
        await call.connect(url)
        final = await call.wait_event(lambda e: e["type"] == "transcript" and e["final"], 60)
        assert {"young", "man"} <= set(words(final["text"])), final
        turn = (await call.wait_event(lambda e: e["type"] == "turn", 90))["metrics"]
        await asyncio.sleep(0.3)  # the reply's last packets are still on their way
        # the agent's reply reached us as audio, and it is speech
        first = call.first_voiced_after(mic.voiced_end)
        assert first is not None, "no agent audio came back"
        client_v2v = (first - mic.voiced_end) * 1000
        reply = call.received(since=first)
        voiced = np.sqrt(np.mean(reply.reshape(-1, 320) ** 2, axis=1)) > 0.01 if len(reply) >= 320 else []
        assert np.sum(voiced) * 0.02 > 0.5, "less than half a second of the reply was audible"
        heard_by_client = stack.stt.transcribe(reply).text
        said = set(words(turn["heard_text"]))
        assert said and len(said & set(words(heard_by_client))) >= 0.5 * len(said), (turn["heard_text"],
                                                                                      heard_by_client)
        # events: states, transcript, the agent's words as heard, and the metrics
        kinds = [e["type"] for e in call.events]
        assert {"connected", "state", "transcript", "agent_heard", "turn"} <= set(kinds), kinds
        states = [e["state"] for e in call.events if e["type"] == "state"]
        assert states[:3] == ["user_speaking", "thinking", "speaking"] and states[-1] == "listening", states
        server_v2v = turn["timings_ms"]["voice_to_voice"]
        assert server_v2v is not None and 0 < server_v2v < 15_000
        # the client's figure travels back and is recorded beside the server's
        call.send({"type": "client_v2v", "turn": turn["index"], "ms": round(client_v2v, 1)})
        echo = await call.wait_event(lambda e: e["type"] == "v2v", 5)
        assert echo["server_ms"] == server_v2v and echo["client_ms"] == round(client_v2v, 1)
        peer = next(iter(app[PEERS].values()))
        assert peer.turns[turn["index"]]["client_v2v_ms"] == round(client_v2v, 1)
        print(f"\nwebrtc e2e: connect {call.connect_s * 1000:.0f} ms, server v2v {server_v2v:.0f} ms, "
              f"client v2v {client_v2v:.0f} ms, timings {turn['timings_ms']}, client heard {heard_by_client!r}")
    finally:
        await call.close()
    for _ in range(50):  # the server notices the hang-up and tears the session down
        if not app[PEERS]:
            break
        await asyncio.sleep(0.1)
    assert not app[PEERS], "the session outlived the call"


@pytest.mark.models
@pytest.mark.asyncio(loop_scope="module")
async def test_barge_in_over_webrtc_silences_the_agent_at_once(server):
    """The user talks over the reply: the audio reaching the client stops within a few frames.

    The client's microphone carries no echo of the agent (as with a browser's own echo canceller or a
    headset); the server-side echo canceller stays on and must find no echo path and let the user in.
    """
    stack, app, url = server
    first, rate = read_audio(DATA / "librivox-0870.wav")  # a long question, so the reply is long too
    second, rate2 = read_audio(DATA / "librivox-0880.wav")
    mic = ScriptedMicTrack(first, rate, lead_s=0.5)
    call = AgentCall(mic)
    try:
        await call.connect(url)
        await call.wait_event(lambda e: e.get("state") == "speaking", 60)
        await asyncio.sleep(0.8)  # let the reply be heard a little
        mic.say(second, rate2)
        barge = await call.wait_event(lambda e: e.get("state") == "user_speaking", 10)
        barged_at = call.event_times[call.events.index(barge)]
        turn0 = (await call.wait_event(lambda e: e["type"] == "turn" and e["metrics"]["index"] == 0, 30))["metrics"]
        assert len(words(turn0["heard_text"])) < len(words(turn0["agent_text"])), turn0  # cut short
        nxt = await call.wait_event(lambda e: e.get("state") in ("speaking", "listening")
                                    and call.events.index(e) > call.events.index(barge), 60)
        window_end = call.event_times[call.events.index(nxt)]
        # from 150 ms after the barge-in event arrived until the next reply, the agent is silent
        tail = [s for t, s, _ in call.audio if barged_at + 0.15 <= t < window_end]
        loud = [float(np.sqrt(np.mean(s * s))) for s in tail if s.size and np.sqrt(np.mean(s * s)) > 0.01]
        assert tail and not loud, f"{len(loud)} audible frames after the barge-in"
        print(f"\nbarge-in: server barge-in→silence {turn0['timings_ms'].get('barge_in_to_silence')} ms, "
              f"cancellation {turn0['tts'].get('cancellation_latency_ms')} ms, heard {turn0['heard_text']!r}")
    finally:
        await call.close()
