"""`--record-dir` (agent/recording.py): a call becomes a stereo WAV and a JSON transcript.

Real: the stack's wiring (`AgentStack.new_session`), the session, Silero VAD (`models`), the playout,
the recorder and the file edge's scripted microphone on a virtual clock; fakes for STT, LLM, voice.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from agent.recording import CallRecorder
from pipeline.audio import AudioFrame
from tests.fakes import DATA


def test_the_recorder_puts_the_caller_left_and_the_agent_right_on_one_clock(tmp_path):
    rec = CallRecorder(tmp_path, "test")
    tone = (0.3 * np.sin(np.arange(320) * 0.2)).astype(np.float32)
    for i in range(50):  # one second of caller at 16 kHz from t=10.0
        rec.user(AudioFrame(tone, 16_000, 10.0 + i * 0.02))
    for i in range(50):  # one second of agent at 48 kHz from t=11.0
        rec.agent(AudioFrame(np.repeat(tone, 3), 48_000, 11.0 + i * 0.02))
    wav, doc = rec.close([], [], None)
    audio, rate = sf.read(wav)
    assert rate == 16_000 and audio.shape[1] == 2
    left, right = np.abs(audio[:, 0]), np.abs(audio[:, 1])
    assert left[: 16_000 - 400].mean() > 0.1 and left[16_400:32_000].mean() < 0.01
    assert right[:15_000].mean() < 0.01 and right[16_800:31_000].mean() > 0.1
    assert json.loads(doc.read_text())["channels"] == {"left": "caller", "right": "agent"}


@pytest.mark.models
async def test_a_whole_call_is_recorded_when_a_record_dir_is_given(tmp_path):
    from agent.config import load_config
    from agent.converse import converse_on
    from agent.stack import AgentStack
    from pipeline.audio import read_audio
    from pipeline.clock import VirtualClock
    from tests.fakes import FakeLLM, FakeSTT, FakeTTSEngine

    clock = VirtualClock()
    stack = AgentStack(load_config(), FakeSTT(answer=lambda a: "hello there"), FakeTTSEngine(),
                       FakeLLM(clock, ["Hi! How can I help?"]), record_dir=tmp_path)
    doc = await converse_on(stack, [read_audio(DATA / "goforward.wav")], fast=True, clock=clock)
    (wav,) = tmp_path.glob("*.wav")
    (js,) = tmp_path.glob("*.json")
    report = json.loads(js.read_text())
    assert report["turns"][0]["heard_text"] == doc["turns"][0]["heard_text"] == "Hi! How can I help?"
    audio, rate = sf.read(wav)
    assert rate == 16_000 and audio.shape[1] == 2
    assert np.abs(audio[:, 0]).max() > 0.05 and np.abs(audio[:, 1]).max() > 0.05  # both voices are there
