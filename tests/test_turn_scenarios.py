"""Turn-taking edge cases, scripted on fakes and a virtual clock (no models): overlapping
interruptions, interruptions at the very start and very end of a reply, a minute-long monologue,
an LLM failing mid-reply. Each asserts that no task leaks and the history is what was heard."""

from __future__ import annotations

import asyncio

import numpy as np

from pipeline.events import SpeechEnded, SpeechStarted
from tests.fakes import settle
from tests.test_turns import AUDIO, Rig, _leftover_tasks
from agent.turns import State

REPLY = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen fourteen fifteen."


def assert_history_is_heard(rig: Rig) -> None:
    heard = {m.index: m for m in rig.turns.turns}
    agent_msgs = [x for x in rig.turns.conversation.messages if x.role == "assistant"]
    for msg in agent_msgs:
        assert any(msg.text == m.heard_text for m in heard.values()), msg
    for m in rig.turns.turns:
        if m.heard_text:
            assert m.agent_text.replace(" ", "").startswith(m.heard_text.replace(" ", "").rstrip(".")[:5])


async def _wait_state(rig: Rig, state: State, limit: float = 5.0) -> None:
    t0 = rig.clock.now()
    while rig.turns.state is not state:
        assert rig.clock.now() - t0 < limit, f"never reached {state}"
        await settle(rig.clock, 0.01)


async def test_overlapping_interruptions_in_quick_succession():
    async with Rig(["tell me", "wait", "no", "stop"], [REPLY, REPLY, REPLY, "Okay."]) as rig:
        before = asyncio.all_tasks()
        await rig.user_says()
        for _ in range(3):  # each new reply is cut 0.2 s after it is first heard
            await _wait_state(rig, State.SPEAKING)
            await settle(rig.clock, 0.2)
            await rig.user_says(0.4)
        await rig.turns.wait_reply()
        assert not _leftover_tasks(before)
    ms = rig.turns.turns
    assert [m.interrupted for m in ms] == [True, True, True, False]
    assert ms[-1].heard_text == "Okay."
    assert_history_is_heard(rig)
    assert rig.llm.closed == len(rig.llm.requests) == 4


async def test_interruption_in_the_first_50_ms_of_the_reply():
    async with Rig(["hello", "actually"], [REPLY, "Sure."]) as rig:
        await rig.user_says()
        await _wait_state(rig, State.SPEAKING)
        await settle(rig.clock, 0.04)
        await rig.turns.handle(SpeechStarted(rig.clock.now()))
        await settle(rig.clock, 0.5)
        await rig.turns.handle(SpeechEnded(rig.clock.now() - 0.5, rig.clock.now(), rig.clock.now(), AUDIO))
        await rig.turns.wait_reply()
    first = rig.turns.turns[0]
    assert first.interrupted and len(first.heard_text.split()) <= 1
    assert rig.turns.turns[1].heard_text == "Sure."
    assert_history_is_heard(rig)


async def test_interruption_after_generation_ended_but_before_playout_ended():
    async with Rig(["hello", "stop"], [REPLY, "Okay."]) as rig:
        await rig.user_says()
        await _wait_state(rig, State.SPEAKING)
        while rig.tts.last_metrics is None or rig.tts._active:  # all chunks generated…
            await settle(rig.clock, 0.05)
        assert rig.playout.buffered_s > 0.3  # …but a good part is still to be played
        await rig.turns.handle(SpeechStarted(rig.clock.now()))
        await settle(rig.clock, 0.1)
        assert rig.playout.buffered_s == 0
    m = rig.turns.turns[0]
    assert m.interrupted and m.heard_text and m.heard_text != m.agent_text


async def test_a_minute_of_continuous_user_speech_never_starts_a_reply_until_it_ends():
    async with Rig(["a very long story"], ["Thanks for telling me."]) as rig:
        t = rig.clock.now()
        await rig.turns.handle(SpeechStarted(t))
        for _ in range(60):
            await settle(rig.clock, 1.0)
            assert rig.turns.state is State.USER_SPEAKING and not rig.llm.requests
        await rig.turns.handle(SpeechEnded(t, rig.clock.now(), rig.clock.now() + 0.5, np.zeros(16000 * 30, np.float32)))
        await rig.turns.wait_reply()
    assert rig.turns.turns[0].heard_text == "Thanks for telling me."


async def test_llm_error_mid_reply_then_conversation_goes_on():
    async with Rig(["one", "two"], ["This will break here and now.", "Fine again."]) as rig:
        rig.llm.fail_after = 3
        await rig.user_says()
        await rig.turns.wait_reply()
        rig.llm.fail_after = None
        await rig.user_says()
        await rig.turns.wait_reply()
    a, b = rig.turns.turns
    assert a.error and b.error is None and b.heard_text == "Fine again."
    assert [x.role for x in rig.turns.conversation.messages] == ["user", "assistant", "user", "assistant"]
    assert_history_is_heard(rig)
