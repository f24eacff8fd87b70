"""Turn-taking edge cases, scripted on fakes and a virtual clock (no models): overlapping
interruptions, interruptions at the very start and very end of a reply, a minute-long monologue,
an LLM failing mid-reply. Each asserts that no task leaks and the history is what was heard.

Fakes: the `Rig` of tests/fakes.py (`FakeSTT`, `FakeLLM`, `FakeTTSEngine`, on a `VirtualClock`).
Real: the turn manager, streaming TTS, playout and conversation context."""

from __future__ import annotations

import asyncio

import numpy as np

from agent.turns import State
from pipeline.events import SpeechEnded, SpeechStarted
from tests.fakes import AUDIO, REPLY, Rig, leftover_tasks, settle


def assert_history_is_heard(rig: Rig) -> None:
    heard = {m.index: m for m in rig.turns.turns}
    agent_msgs = [x for x in rig.turns.conversation.messages if x.role == "assistant"]
    for msg in agent_msgs:
        assert any(msg.text == m.heard_text for m in heard.values()), msg
    for m in rig.turns.turns:
        if m.heard_text:
            assert m.agent_text.replace(" ", "").startswith(m.heard_text.replace(" ", "").rstrip(".")[:5])


async def test_overlapping_interruptions_in_quick_succession():
    async with Rig(["tell me", "wait", "no", "stop"], [REPLY, REPLY, REPLY, "Okay."]) as rig:
        before = asyncio.all_tasks()
        await rig.user_says()
        for _ in range(3):  # each new reply is cut 0.2 s after it is first heard
            await rig.wait_state(State.SPEAKING)
            await settle(rig.clock, 0.2)
            await rig.user_says(0.4)
        await rig.turns.wait_reply()
        assert not leftover_tasks(before)
    ms = rig.turns.turns
    assert [m.interrupted for m in ms] == [True, True, True, False]
    assert ms[-1].heard_text == "Okay."
    assert_history_is_heard(rig)
    assert rig.llm.closed == len(rig.llm.requests) == 4


async def test_interruption_in_the_first_50_ms_of_the_reply():
    async with Rig(["hello", "actually"], [REPLY, "Sure."]) as rig:
        await rig.user_says()
        await rig.wait_state(State.SPEAKING)
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
        await rig.wait_state(State.SPEAKING)
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


async def test_a_monologue_cut_by_the_vad_gets_one_reply_at_its_real_end():
    """The VAD cuts speech longer than max_utterance_s into pieces (`continued`): no piece is
    answered while the user talks on, and the reply sees all of their words as one turn."""
    async with Rig(["first half of a long story", "and its end"], ["What a story."]) as rig:
        t0 = rig.clock.now()
        await rig.turns.handle(SpeechStarted(t0))
        await settle(rig.clock, 30.0)
        cut = rig.clock.now()
        await rig.turns.handle(SpeechEnded(t0, cut, cut, np.zeros(16000 * 30, np.float32), continued=True))
        await rig.turns.handle(SpeechStarted(cut))
        for _ in range(30):
            await settle(rig.clock, 1.0)
            assert rig.turns.state is State.USER_SPEAKING and not rig.llm.requests
        last = rig.clock.now()
        await settle(rig.clock, 0.5)
        await rig.turns.handle(SpeechEnded(cut, last, rig.clock.now(), AUDIO))
        await rig.turns.wait_reply()
    (m,) = rig.turns.turns
    assert m.user_started == t0 and m.heard_text == "What a story."
    (request,) = rig.llm.requests
    assert request[-1] == {"role": "user", "content": "first half of a long story and its end"}
    assert [(x.role, x.text) for x in rig.turns.conversation.messages] == [
        ("user", "first half of a long story and its end"), ("assistant", "What a story.")]


async def test_speaking_again_before_the_reply_began_keeps_every_word_and_the_last_turn_intact():
    """The user goes on while their words are still being transcribed (no reply started yet):
    that reply is cancelled, their words are kept and joined with what follows, and the barge-in
    is charged to the cancelled turn, not to the agent's previous, finished reply."""
    async with Rig(["hello", "what is the weather", "in Paris"], ["Hi there.", "Sunny in Paris."]) as rig:
        await rig.user_says()
        await rig.turns.wait_reply()
        rig.stt.delay_s = 0.3  # the final transcript of the next turn takes a while
        before = asyncio.all_tasks()
        t = rig.clock.now()
        await rig.turns.handle(SpeechStarted(t))
        await settle(rig.clock, 1.0)
        await rig.turns.handle(SpeechEnded(t, t + 0.5, rig.clock.now(), AUDIO))
        await asyncio.sleep(0.05)  # the transcript is on its way
        assert rig.turns.state is State.THINKING and len(rig.llm.requests) == 1
        rig.stt.delay_s = 0.0
        await rig.user_says()
        await rig.turns.wait_reply()
        await rig.turns.aclose()
        assert not leftover_tasks(before)
    first, cancelled, last = rig.turns.turns
    assert not first.interrupted and first.heard_text == "Hi there."
    assert cancelled.interrupted and cancelled.user_text == "what is the weather" and not cancelled.heard_text
    assert rig.llm.requests[-1][-1] == {"role": "user", "content": "what is the weather in Paris"}
    assert [(x.role, x.text) for x in rig.turns.conversation.messages] == [
        ("user", "hello"), ("assistant", "Hi there."), ("user", "what is the weather in Paris"),
        ("assistant", "Sunny in Paris.")]
    assert_history_is_heard(rig)


async def test_going_on_while_the_agent_thinks_leaves_one_user_turn_and_no_empty_reply():
    """The user speaks again while the LLM is still on its first token: nothing was played, so the
    history holds no agent turn for it (no "you were interrupted" note about silence), and the
    user's words form one turn."""
    async with Rig(["what is the weather", "in Paris"], ["Unheard.", "Sunny in Paris."]) as rig:
        rig.llm.ttft_s = 1.0
        await rig.user_says()
        await settle(rig.clock, 0.2)
        assert rig.turns.state is State.THINKING
        rig.llm.ttft_s = 0.1
        await rig.user_says()
        await rig.turns.wait_reply()
    assert [(x.role, x.text) for x in rig.turns.conversation.messages] == [
        ("user", "what is the weather in Paris"), ("assistant", "Sunny in Paris.")]
    assert rig.llm.requests[-1][-1] == {"role": "user", "content": "what is the weather in Paris"}
