"""The turn-taking edge cases of tests/test_turn_scenarios.py again, through `converse` on the REAL
embedded stack (Silero, Whisper, Qwen via llama.cpp, Piper) with recorded speech, on a virtual
clock: interruptions in quick succession, in the first 50 ms of a reply, after the reply was fully
generated but not yet played, and a monologue longer than the VAD's utterance cap. Each checks that
no task outlives the conversation and that the history holds what was said and heard.

Fakes: where a test takes `long_reply_llm`, `FakeLLMServer` (tests/fakes.py) streams one long reply
in place of Qwen, so its length is known; everything else is real."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile as sf

from agent.config import load_config
from agent.converse import converse
from tests.fakes import DATA, FakeLLMServer, energetic_span, words

pytestmark = pytest.mark.models

LONG_REPLY = ("Here is a fairly long answer for you. It goes on for a few sentences, so that it is "
              "still playing well after it was written. This is the last sentence of it.")


@pytest.fixture
async def long_reply_llm():
    """An OpenAI-compatible endpoint that streams the same long reply at once (a fake LLM, so the
    reply's length does not depend on what Qwen feels like saying; everything else is real)."""
    async with FakeLLMServer(deltas=[word + " " for word in LONG_REPLY.split(" ")]) as server:
        yield server.url()


async def _converse(clips, config=None, **kw) -> dict:
    before = asyncio.all_tasks()
    doc = await converse(config or load_config(), clips, None, fast=True, **kw)
    leftover = {t for t in asyncio.all_tasks() if t not in before and not t.done()
                and "RequestHandler" not in repr(t.get_coro())}  # a fake endpoint's keep-alive: the test's own
    assert not leftover, f"tasks outlived the conversation: {leftover}"
    assert doc["summary"]["self_interruptions"] == 0
    _assert_history_is_true(doc)
    return doc


def _assert_history_is_true(doc: dict) -> None:
    """Each agent message is exactly what a reply played; an interrupted one is marked and is a
    prefix of what was generated (within the word being spoken; punctuation aside, as the TTS
    normalizes it); users and agent alternate."""
    history = doc["summary"]["history"]
    assert all(a["role"] != b["role"] for a, b in zip(history, history[1:])), history
    spoken = [t for t in doc["turns"] if t["heard_text"] or (t["interrupted"] and t["agent_text"])]
    agent = [m for m in history if m["role"] == "assistant"]
    assert [m["text"] for m in agent] == [t["heard_text"] for t in spoken], (agent, spoken)
    for m, t in zip(agent, spoken):
        assert m["interrupted"] == t["interrupted"]
        heard, said = words(t["heard_text"]), words(t["agent_text"])
        if t["interrupted"]:
            assert len(heard) <= len(said) and said[: max(len(heard) - 1, 0)] == heard[:-1], t
        else:
            assert heard == said, t


async def test_interruptions_in_quick_succession_on_the_real_stack():
    clips = [DATA / "goforward.wav", DATA / "cards" / "001.wav", DATA / "cards" / "005.wav", DATA / "cards" / "001.wav"]
    doc = await _converse(clips, interrupt_after_s=0.3)
    turns = doc["turns"]
    assert doc["summary"]["user_interrupting"] == [False, True, True, True]
    onsets = doc["summary"]["user_speech_onsets"]
    assert len(turns) == len(clips)
    for t, onset in zip(turns[:-1], onsets[1:]):  # each reply is cut, unless it was over already
        assert t["interrupted"] or t["media_times"]["agent_stopped"] - onset < 0.3, t
    assert sum(t["interrupted"] for t in turns) >= 2
    assert not turns[-1]["interrupted"] and turns[-1]["heard_text"]


async def test_interruption_in_the_first_50_ms_of_the_reply_on_the_real_stack():
    """Each next turn cuts in 30 ms after the reply is first heard. The first reply of a session
    is special for the echo canceller (no echo path known yet: the user's words are held until it
    sees the agent's voice explains none of them); from the second reply on the cut-in is at once."""
    clips = [DATA / "goforward.wav", DATA / "cards" / "001.wav", DATA / "cards" / "005.wav"]
    doc = await _converse(clips, interrupt_after_s=0.03)
    cold, warm, last = doc["turns"]
    assert cold["interrupted"] and warm["user_text"], "the words said over the first reply were lost"
    mt = warm["media_times"]
    assert warm["interrupted"] and mt["barge_in"] - mt["first_audio_played"] < 0.15, warm
    # a bound that proves the cut, not a speed target (those live in `rejoinder bench`): 0.4 s failed
    # once in four full runs on this shared 2-core machine (0.595 s), while the rest of the lane ran
    assert mt["agent_stopped"] - mt["barge_in"] < 1.0 and len(words(warm["heard_text"])) <= 2, warm
    assert last["heard_text"] and not last["interrupted"]


async def test_interruption_after_the_reply_was_generated_on_the_real_stack(long_reply_llm):
    """A long reply (~8.5 s of audio; fake LLM endpoint, real VAD, STT, TTS and playout) cut 7.6 s
    in: the TTS keeps ~1.5 s ahead of playout, so by then it was all synthesized and only playout
    is left. Flushing the buffered audio must stop the agent, and the history keep only what was
    played. (No echo canceller: no echo here, and its first-reply hold is not what is tested.)"""
    config = load_config(**{"llm.base_url": long_reply_llm})
    config.echo_cancel = False
    clips = [DATA / "goforward.wav", DATA / "cards" / "001.wav"]
    doc = await _converse(clips, config, interrupt_after_s=7.6)
    late = [t for t in doc["turns"] if t["interrupted"] and t["media_times"]["generation_ended"] is not None
            and t["media_times"]["generation_ended"] < t["media_times"]["barge_in"]]
    assert late, [t["media_times"] for t in doc["turns"]]
    for t in late:
        mt = t["media_times"]
        assert mt["barge_in"] < mt["agent_stopped"] < mt["barge_in"] + 0.6, t
        assert len(words(t["heard_text"])) < len(words(t["agent_text"])), t


async def test_a_monologue_past_the_utterance_cap_gets_one_reply_on_the_real_stack(tmp_path):
    """61 s of reading without a pause long enough to end the turn: the VAD cuts it every 18 s, the
    agent stays silent until it ends, then answers once, having heard all of it."""
    parts, rate = [], 16000
    while sum(map(len, parts)) < 61 * rate:
        for name in ["librivox-0870.wav", "librivox-0920.wav", "librivox-0880.wav"]:
            x, r = sf.read(DATA / name, dtype="float32")
            first, end = energetic_span(x)  # the clips' own silences would end the turn
            assert r == rate
            parts += [x[int(first * r) : int(end * r)], np.zeros(rate // 5, np.float32)]
    path = tmp_path / "monologue.wav"
    sf.write(path, np.concatenate(parts), rate)
    doc = await _converse([path])
    # a cut that lands in a short pause is a normal end; the reply started there is cancelled
    # unheard when the reading goes on, and its words join the rest
    (turn,) = [t for t in doc["turns"] if t["heard_text"]]
    assert turn["media_times"]["first_audio_played"] > max(t["media_times"]["user_last_voiced"] for t in doc["turns"])
    assert not turn["interrupted"]
    (user, agent) = doc["summary"]["history"]
    words = user["text"].lower()
    assert "dashwood" in words and len(words.split()) > 140, user  # every piece, not just the last
