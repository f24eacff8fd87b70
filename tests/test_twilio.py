"""Twilio-style media streams (transport/twilio.py) against a client that speaks the published
protocol over a real WebSocket (aiohttp, 127.0.0.1) and plays the agent's audio at real time,
echoing a `mark` only once it has played the audio before it, as Twilio does.

Fast tests use `FakeStack` (tests/fakes.py: no model, a real Playout). The conversation test runs
the real listening path (Silero VAD, echo canceller, turn manager, playout) with FakeSTT, FakeLLM
and FakeTTSEngine (`models`: Silero is loaded), and checks that the history holds what was played.
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from aiohttp import ClientSession, WSMsgType

from pipeline.audio import read_audio, resample
from tests.fakes import DATA, REPLY, FakeStack, served
from transport.g711 import PCMA, PCMU, decode, encode

FRAME = 160


def test_g711_round_trips_speech_with_telephone_quality():
    audio, rate = read_audio(DATA / "goforward.wav")
    x = resample(audio, rate, 8000)
    for pt in (PCMU, PCMA):
        y = decode(encode(x, pt), pt)
        snr = 10 * np.log10(np.sum(x**2) / np.sum((x - y) ** 2))
        assert len(y) == len(x) and snr > 30, (pt, snr)


def start_msg(token=None, encoding="audio/x-mulaw"):
    params = {"token": token} if token else {}
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
                       "start": {"streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
                                 "mediaFormat": {"encoding": encoding, "sampleRate": 8000, "channels": 1},
                                 "customParameters": params}})


def media_msg(samples: np.ndarray) -> str:
    return json.dumps({"event": "media", "streamSid": "MZ1",
                       "media": {"track": "inbound", "payload": base64.b64encode(encode(samples)).decode()}})


async def test_the_twiml_points_the_call_at_the_stream_with_the_token():
    async with served(FakeStack(), token="s3cret") as url, ClientSession() as http:
        r = await http.get(f"{url}/phone/twilio/twiml?token=s3cret")
        body = await r.text()
        assert r.status == 200 and '<Stream url="ws://127.0.0.1' in body and 'value="s3cret"' in body
        assert (await http.get(f"{url}/phone/twilio/twiml")).status == 401


@pytest.mark.parametrize("first,why", [
    (start_msg(token="wrong"), "wrong token"),
    (start_msg(encoding="audio/l16"), "unsupported format"),
])
async def test_a_stream_that_cannot_be_served_is_closed_and_starts_no_session(first, why):
    stack = FakeStack()
    async with served(stack, token="s3cret") as url, ClientSession() as http:
        async with http.ws_connect(f"{url}/phone/twilio") as ws:
            await ws.send_str(first)
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), why
    assert stack.sessions == [], why


async def test_bad_messages_are_ignored_and_the_call_goes_on():
    stack = FakeStack()
    async with served(stack) as url, ClientSession() as http:
        async with http.ws_connect(f"{url}/phone/twilio") as ws:
            await ws.send_str(media_msg(np.zeros(FRAME, np.float32)))  # media before start
            await ws.send_str(start_msg())
            for bad in ("{not json", "[" * 5000, json.dumps({"event": "media", "media": {"payload": "%%%"}}),
                        json.dumps({"event": "dtmf", "dtmf": {}}), json.dumps({"event": "warp"})):
                await ws.send_str(bad)
            for _ in range(25):  # paced as Twilio sends: 20 ms of audio every 20 ms
                await ws.send_str(media_msg(np.zeros(FRAME, np.float32)))
                await asyncio.sleep(0.02)
            got = await asyncio.wait_for(ws.receive(), 5)  # the agent's (silent) audio flows
            assert json.loads(got.data)["event"] in ("media", "mark")
            await ws.send_str(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {}}))
        await asyncio.sleep(0.3)
    (session,) = stack.sessions
    assert session.frames >= 20 and session.hung_up


async def test_a_dropped_connection_ends_the_session_and_frees_the_slot():
    stack = FakeStack()
    async with served(stack) as url, ClientSession() as http:
        for _ in range(3):  # one call at a time (max_sessions 1): each drop must free its slot
            ws = await http.ws_connect(f"{url}/phone/twilio")
            await ws.send_str(start_msg())
            await ws.send_str(media_msg(np.zeros(FRAME, np.float32)))
            await asyncio.sleep(0.2)
            await ws.close()
            await asyncio.sleep(0.3)
    assert len(stack.sessions) == 3 and all(s.hung_up for s in stack.sessions)


class FarEnd:
    """Twilio's side: sends the caller's audio at real time, plays the agent's, echoes marks once
    the audio before them is played, and drops its buffer on `clear`."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.buffer: list[tuple[str, object]] = []  # ("audio", samples) | ("mark", name), in order
        self.played_frames = 0
        self.echoed: list[int] = []
        self.clears = 0
        self.agent_audio_s = 0.0

    async def receive(self) -> None:
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                break
            m = json.loads(msg.data)
            if m["event"] == "media":
                self.buffer.append(("audio", decode(base64.b64decode(m["media"]["payload"]))))
            elif m["event"] == "mark":
                self.buffer.append(("mark", m["mark"]["name"]))
            elif m["event"] == "clear":
                self.clears += 1
                self.buffer = [x for x in self.buffer if x[0] == "mark"][-0:]  # audio dropped, marks too
                self.buffer.clear()

    async def play(self, delay_frames: int = 50) -> None:
        """Like a phone network: playing starts once 1 s is buffered (jitter buffer, the line's delay)."""
        while len(self.buffer) < delay_frames:
            await asyncio.sleep(0.02)
        while True:
            while self.buffer and self.buffer[0][0] == "mark":
                name = str(self.buffer.pop(0)[1])
                self.echoed.append(int(name))
                await self.ws.send_str(json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": name}}))
            if self.buffer:
                _, samples = self.buffer.pop(0)
                if np.abs(np.asarray(samples)).max() > 0.01:
                    self.agent_audio_s += 0.02
            await asyncio.sleep(0.02)


@pytest.mark.models
async def test_a_barge_in_clears_the_far_end_and_the_history_holds_what_was_played():
    from agent.config import load_config
    from agent.stack import AgentStack
    from pipeline.clock import RealClock
    from tests.fakes import FakeLLM, FakeSTT, FakeTTSEngine

    config = load_config()
    long_reply = " ".join([REPLY] * 4)
    clock = RealClock()
    sessions = []

    class Recording(AgentStack):
        def new_session(self, *a, **kw):
            s = super().new_session(*a, **kw)
            sessions.append(s)
            return s

    stt = FakeSTT(answer=lambda audio: "tell me a story")  # every pass, interim or final, hears the same
    stack = Recording(config, stt, FakeTTSEngine(), FakeLLM(clock, [long_reply, "Okay."]))
    audio, rate = read_audio(DATA / "goforward.wav")
    speech = resample(audio, rate, 8000)
    async with served(stack) as url, ClientSession() as http:
        async with http.ws_connect(f"{url}/phone/twilio") as ws:
            far = FarEnd(ws)
            tasks = [asyncio.create_task(far.receive()), asyncio.create_task(far.play())]
            await ws.send_str(start_msg())

            async def say(samples: np.ndarray, then_silence_s: float) -> None:
                x = np.concatenate([samples, np.zeros(int(then_silence_s * 8000), np.float32)])
                for i in range(0, len(x) - FRAME + 1, FRAME):
                    await ws.send_str(media_msg(x[i:i + FRAME]))
                    await asyncio.sleep(0.02)

            await say(speech, 0.0)
            t0 = asyncio.get_running_loop().time()
            while far.agent_audio_s < 1.5:  # the caller hears 1.5 s of the reply, then cuts in
                assert asyncio.get_running_loop().time() - t0 < 20, "the agent never spoke"
                await say(np.zeros(FRAME * 5, np.float32), 0.0)
            await say(speech, 1.5)
            await ws.send_str(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {}}))
            for t in tasks:
                t.cancel()
    (session,) = sessions
    first = session.turns.turns[0]
    assert far.clears >= 1, "no clear was sent on barge-in"
    assert first.interrupted and first.heard_text and first.heard_text != first.agent_text
    assert long_reply.startswith(first.heard_text.rstrip(".")) or long_reply.replace(".", "").startswith(
        first.heard_text.replace(".", ""))
    # FakeTTSEngine says a character in 60 ms: the caller heard about this much of the reply text.
    # Counting what was sent instead would add the far end's 1 s buffer (~16 characters) to it.
    played_chars = far.agent_audio_s / 0.06
    assert len(first.heard_text) <= played_chars + 8, (len(first.heard_text), played_chars, first.heard_text)
    assert len(first.heard_text) >= played_chars - 30, (len(first.heard_text), played_chars)
    assert session.turns.conversation.messages[1].text == first.heard_text


async def test_keypad_digits_on_the_stream_become_one_user_turn():
    stack = FakeStack()
    typed: list[str] = []
    async with served(stack) as url, ClientSession() as http:
        async with http.ws_connect(f"{url}/phone/twilio") as ws:
            await ws.send_str(start_msg())
            await ws.send_str(media_msg(np.zeros(FRAME, np.float32)))
            await asyncio.sleep(0.2)
            stack.sessions[0].user_typed = lambda text: _record(typed, text)  # type: ignore[attr-defined]
            for d in "4712#":
                await ws.send_str(json.dumps({"event": "dtmf", "streamSid": "MZ1",
                                              "dtmf": {"track": "inbound_track", "digit": d}}))
            await ws.send_str(json.dumps({"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": ""}}))
            await asyncio.sleep(0.2)
    assert typed == ["4712"]


async def _record(into: list[str], text: str) -> None:
    into.append(text)


def test_the_phone_leg_keeps_speech_length_and_level():
    from agent.benches.narrowband import phone_leg

    audio, rate = read_audio(DATA / "goforward.wav")
    out = phone_leg(audio, rate)
    ref = resample(audio, rate, 16_000)
    assert abs(len(out) - len(ref)) <= 2
    assert 0.8 < np.sqrt(np.mean(out**2)) / np.sqrt(np.mean(ref**2)) < 1.2
