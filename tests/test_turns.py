"""Turn manager on fakes and a virtual clock: whole scripted turns in milliseconds, deterministic.

Fakes: the `Rig` of tests/fakes.py (`FakeSTT`, `FakeLLM`, `FakeTTSEngine`, `RecordingSink`, on a
`VirtualClock`). Real: the turn manager, streaming TTS wrapper, phrase splitter, playout and
conversation context. No model is loaded.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.context import INTERRUPTED_NOTE
from agent.turns import APOLOGY, State, TurnOptions
from pipeline.events import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted
from tests.fakes import AUDIO, Rig, leftover_tasks, settle


async def test_two_turns_complete_with_metrics_and_history():
    async with Rig(["hello there", "what time is it"], ["Hi! How can I help you today?", "It is noon."]) as rig:
        before = asyncio.all_tasks()
        last = await rig.user_says()
        await rig.turns.wait_reply()
        await rig.user_says()
        await rig.turns.wait_reply()
        assert not leftover_tasks(before)
    t0, t1 = rig.turns.turns
    assert (t0.user_text, t0.agent_text, t0.heard_text) == ("hello there", "Hi! How can I help you today?",
                                                             "Hi! How can I help you today?")
    assert not t0.interrupted and t1.heard_text == "It is noon."
    timings = t0.timings_ms()
    assert timings["endpoint"] == pytest.approx(500, abs=1)
    assert timings["voice_to_voice"] > timings["endpoint"] + 100  # LLM ttft of the fake is 100 ms
    assert t0.first_audio_played_at > last
    history = rig.turns.conversation.for_llm()
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant"]
    assert rig.llm.requests[1][-1] == {"role": "user", "content": "what time is it"}
    assert rig.turns.state is State.LISTENING
    states = [e["state"] for e in rig.events if e["type"] == "state"]
    assert states[:4] == ["user_speaking", "thinking", "speaking", "listening"]


async def test_barge_in_cancels_reply_flushes_audio_and_keeps_heard_words():
    long_reply = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen fourteen fifteen."
    async with Rig(["tell me a story", "stop"], [long_reply, "Okay."]) as rig:
        before = asyncio.all_tasks()
        await rig.user_says()
        while rig.turns.state is not State.SPEAKING:
            await settle(rig.clock, 0.02)
        await settle(rig.clock, 1.0)  # about one second of the reply is heard
        await rig.turns.handle(SpeechStarted(rig.clock.now()))
        barge_at = rig.clock.now()
        await settle(rig.clock, 0.1)
        assert rig.playout.buffered_s == 0
        voiced_after = [t for t in rig.sink.voiced_times() if t > barge_at + 0.05]
        assert voiced_after == [], "agent audio kept playing after the barge-in"
        assert rig.llm.closed == 1, "the LLM stream was not closed by the cancel"
        assert not leftover_tasks(before) - {rig.turns._reply.task}
    m = rig.turns.turns[0]
    assert m.interrupted
    assert m.heard_text and long_reply.startswith(m.heard_text.rstrip(".")[:10])
    assert len(m.heard_text.split()) < len(long_reply.split())
    assert m.tts["cancellation_latency_ms"] < 50
    (event,) = [e["metrics"] for e in rig.events if e["type"] == "turn"]
    assert event["interrupted"] and event["timings_ms"]["barge_in_to_silence"] is not None
    last = rig.turns.conversation.messages[-1]
    assert last.role == "assistant" and last.interrupted and last.text == m.heard_text
    assert rig.turns.conversation.for_llm()[-1] == {"role": "system", "content": INTERRUPTED_NOTE}


async def test_llm_failure_mid_reply_becomes_spoken_apology():
    async with Rig(["hello"], ["This reply will break halfway through."], fail_after=2) as rig:
        await rig.user_says()
        await asyncio.wait_for(rig.turns.wait_reply(), 10)
    m = rig.turns.turns[0]
    assert m.error and "connection reset" in m.error
    assert m.agent_text == APOLOGY
    assert m.heard_text == APOLOGY
    assert rig.turns.state is State.LISTENING


async def test_empty_transcript_starts_no_reply():
    async with Rig([""], ["never said"]) as rig:
        await rig.user_says()
        await rig.turns.wait_reply()
    assert rig.llm.requests == []
    assert rig.turns.turns[0].agent_text == ""
    assert rig.turns.idle() and rig.turns.state is State.LISTENING


async def _pause_then(rig: Rig, resume: bool) -> float:
    """User speaks 1 s, pauses; either resumes (then ends) or the pause becomes the endpoint."""
    t = rig.clock.now()
    await rig.turns.handle(SpeechStarted(t))
    await settle(rig.clock, 1.0)
    last = t + 1.0
    await rig.turns.handle(SpeechPaused(last, AUDIO))
    await settle(rig.clock, 0.3)  # the held reply is thinking now
    if resume:
        await rig.turns.handle(SpeechResumed(rig.clock.now()))
        await settle(rig.clock, 0.5)
        last = rig.clock.now()
        await rig.turns.handle(SpeechPaused(last, AUDIO))
    await settle(rig.clock, 0.4 if not resume else 0.5)
    await rig.turns.handle(SpeechEnded(t, last, rig.clock.now(), AUDIO))
    return last


async def test_preemptive_reply_starts_at_the_pause_and_is_adopted_at_the_endpoint():
    async with Rig(["hello there"], ["Hi! Nice to hear you."]) as rig:
        rig.llm.ttft_s = 0.3
        await _pause_then(rig, resume=False)
        await rig.turns.wait_reply()
    (m,) = rig.turns.turns
    assert m.preemptive and m.heard_text == "Hi! Nice to hear you."
    assert m.llm_request_at < m.endpoint_at, "the LLM was not asked before the endpoint"
    assert len(rig.llm.requests) == 1 and len(rig.stt.calls) == 1  # the speculative pass was the final
    # audio was held until the endpoint, and then came sooner than endpoint + LLM time
    assert m.endpoint_at <= m.first_audio_played_at < m.endpoint_at + 0.3
    assert [x.role for x in rig.turns.conversation.messages] == ["user", "assistant"]


async def test_a_reply_held_at_a_pause_ends_with_the_session():
    """The call ends while a preemptive reply waits at the first silence: closing the turn manager
    cancels it too (before, it outlived the session, thinking and synthesizing for nobody)."""
    async with Rig(["hello there"], ["Hi! Nice to hear you."]) as rig:
        rig.llm.ttft_s = 0.3
        t = rig.clock.now()
        await rig.turns.handle(SpeechStarted(t))
        await settle(rig.clock, 1.0)
        await rig.turns.handle(SpeechPaused(t + 1.0, AUDIO))
        await settle(rig.clock, 0.1)
        held = [task for task in asyncio.all_tasks() if task.get_name() == "preemptive"]
        assert held and not held[0].done(), "no reply was held at the pause"
    await asyncio.sleep(0)
    assert held[0].done(), "the held reply outlived the session"


async def test_without_preemption_nothing_starts_before_the_endpoint():
    """`preemptive = false`: neither the final transcript nor the LLM runs at the first silence."""
    async with Rig(["hello there"], ["Hi! Nice to hear you."], TurnOptions(preemptive=False)) as rig:
        rig.llm.ttft_s = 0.3
        await _pause_then(rig, resume=False)
        await rig.turns.wait_reply()
    (m,) = rig.turns.turns
    assert not m.preemptive and rig.turns.transcriber.passes["speculative"] == 0
    assert m.stt_final_at >= m.endpoint_at and m.llm_request_at >= m.endpoint_at
    assert m.first_audio_played_at >= m.endpoint_at + 0.3


async def test_preemptive_reply_is_discarded_unheard_when_the_user_resumes():
    async with Rig(["first part", "first part and the rest"], ["Wrong early answer.", "Right answer."]) as rig:
        before = asyncio.all_tasks()
        await _pause_then(rig, resume=True)
        await rig.turns.wait_reply()
        assert not leftover_tasks(before)
    (m,) = rig.turns.turns
    assert rig.turns.preempts_discarded == 1
    assert rig.llm.closed == len(rig.llm.requests) == 2, "the discarded LLM stream was not closed"
    assert m.heard_text == "Right answer." and m.user_text == "first part and the rest"
    assert [x.text for x in rig.turns.conversation.messages] == ["first part and the rest", "Right answer."]
    assert not any("Wrong" in (t.get("metrics", {}).get("agent_text", "")) for t in rig.events)


async def _speak_with_interims(rig: Rig, seconds: float) -> None:
    """The user talks for `seconds` (audio every 20 ms, interim passes as the transcriber schedules
    them), pauses, and the endpoint follows 0.45 s later."""
    t = rig.clock.now()
    await rig.turns.handle(SpeechStarted(t))
    for _ in range(round(seconds / 0.02)):
        await settle(rig.clock, 0.02)
        rig.turns.listen(rig.clock.now(), lambda: (AUDIO, rig.clock.now()))
    last = rig.clock.now()
    await rig.turns.handle(SpeechPaused(last, AUDIO))
    await settle(rig.clock, 0.45)
    await rig.turns.handle(SpeechEnded(t, last, rig.clock.now(), AUDIO))
    await rig.turns.wait_reply()


async def test_the_llm_reads_the_users_words_while_they_speak():
    """Preemption begins before the pause: an interim transcript is prefilled into the LLM's prompt
    cache, and the reply's prompt at the pause extends exactly that prompt."""
    async with Rig(["go forward", "go forward ten meters"], ["Going.", "Done."]) as rig:
        await _speak_with_interims(rig, 1.0)
        (prompt,) = rig.llm.prefilled
        assert prompt[-1] == {"role": "user", "content": "go forward"}
        (request,) = rig.llm.requests
        assert request[:-1] == prompt[:-1] and request[-1]["content"] == "go forward ten meters"
        # the next turn's prefill carries the history, as the next request will
        rig.stt.texts += ["and then", "and then stop"]
        await _speak_with_interims(rig, 1.0)
        assert [m["content"] for m in rig.llm.prefilled[1][-3:]] == ["go forward ten meters", "Going.", "and then"]
        assert rig.llm.requests[1][:-1] == rig.llm.prefilled[1][:-1]


@pytest.mark.parametrize("prefill_s, expected", [(0.05, 3), (5.0, 1)])
async def test_prefills_run_one_at_a_time(prefill_s, expected):
    async with Rig(["one", "one two", "one two three", "one two three four"], ["Ok."]) as rig:
        rig.llm.prefill_s = prefill_s
        before = asyncio.all_tasks()
        await _speak_with_interims(rig, 2.0)
        assert rig.turns.transcriber.passes["interim"] == 3
        assert len(rig.llm.prefilled) == rig.turns.prefills == expected
        await rig.turns.aclose()
        assert not leftover_tasks(before), "a prefill outlived the session"


async def test_without_preemption_nothing_is_prefilled():
    async with Rig(["go forward", "go forward ten meters"], ["Going."], TurnOptions(preemptive=False)) as rig:
        await _speak_with_interims(rig, 1.0)
    assert rig.llm.prefilled == [] and len(rig.llm.requests) == 1


async def test_the_greeting_is_a_reply_like_any_other():
    """`greeting`: said first, without the LLM; kept in the history as heard; barge-in cuts it."""
    greeting = "Hello there! I am your assistant. Ask me anything you like, any time at all."
    async with Rig(["stop"], ["Okay."], TurnOptions(greeting=greeting)) as rig:
        rig.turns.greet()
        while rig.turns.state is not State.SPEAKING:
            await settle(rig.clock, 0.01)
        await settle(rig.clock, 0.5)
        await rig.user_says(0.3)
        await rig.turns.wait_reply()
    hello, answer = rig.turns.turns
    assert hello.interrupted and hello.heard_text and greeting.startswith(hello.heard_text.rstrip(",."))
    assert len(rig.llm.requests) == 1, "the greeting went through the LLM"
    assert [(x.role, x.interrupted) for x in rig.turns.conversation.messages] == [
        ("assistant", True), ("user", False), ("assistant", False)]
    assert answer.heard_text == "Okay."


async def test_no_greeting_by_default():
    async with Rig([], []) as rig:
        rig.turns.greet()
        await settle(rig.clock, 0.5)
    assert rig.turns.turns == [] and rig.sink.voiced_times() == []
