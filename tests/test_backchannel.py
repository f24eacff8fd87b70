"""Backchannels during a reply (fakes, virtual clock): with `ignore_backchannels`, "yeah" lets the
agent talk on, a real short interruption still stops it (timed from its onset), and speech that
runs longer than `backchannel_max_ms` cuts in while the user is still talking.

Fakes: the `Rig` of tests/fakes.py (`FakeSTT`, `FakeLLM`, `FakeTTSEngine`, on a `VirtualClock`).
Real: the turn manager and its backchannel rule, streaming TTS, playout and conversation context."""

from __future__ import annotations

import pytest

from agent.turns import State, TurnOptions, is_backchannel
from pipeline.events import SpeechEnded, SpeechStarted
from tests.fakes import AUDIO, REPLY, Rig, settle


@pytest.mark.parametrize("text,expected", [
    ("Mm-hmm.", True), ("Yeah, yeah.", True), ("Okay.", True), ("I see.", True), ("uh huh", True),
    ("Wait, stop.", False), ("Yeah, but what about Tuesday?", False), ("", False), ("No.", False),
])
def test_backchannel_words(text, expected):
    assert is_backchannel(text) is expected


async def _user_during_reply(rig: Rig, speech_s: float, check=None) -> float:
    await rig.user_says()
    await rig.wait_state(State.SPEAKING)
    await settle(rig.clock, 0.5)
    onset = rig.clock.now()
    await rig.turns.handle(SpeechStarted(onset))
    for _ in range(int(speech_s / 0.02)):
        await settle(rig.clock, 0.02)
        rig.turns.listen(rig.clock.now(), lambda: None)
        if check:
            check()
    end = rig.clock.now()
    await settle(rig.clock, 0.5)
    if rig.turns._pending_user is not None:
        await rig.turns.handle(SpeechEnded(onset, end, rig.clock.now(), AUDIO))
    await settle(rig.clock, 0.05)
    return onset


async def test_backchannel_lets_the_agent_talk_on():
    rig = Rig(["tell me", "yeah"], [REPLY], options=TurnOptions(ignore_backchannels=True))
    async with rig:
        await _user_during_reply(rig, 0.4)
        await rig.turns.wait_reply()
    (m,) = rig.turns.turns
    assert not m.interrupted and m.heard_text == m.agent_text == REPLY
    assert rig.turns.backchannels == 1
    assert [x.role for x in rig.turns.conversation.messages] == ["user", "assistant"]


async def test_short_real_interruption_still_stops_the_agent():
    rig = Rig(["tell me", "wait stop"], [REPLY, "Okay."], options=TurnOptions(ignore_backchannels=True))
    async with rig:
        onset = await _user_during_reply(rig, 0.4)
        await rig.turns.wait_reply()
    first, second = rig.turns.turns
    assert first.interrupted and first.barge_in_at == onset
    assert second.user_text == "wait stop" and second.heard_text == "Okay."


async def test_long_speech_cuts_in_before_it_ends():
    rig = Rig(["tell me", "no I meant something else entirely"], [REPLY, "Sorry."],
              options=TurnOptions(ignore_backchannels=True, backchannel_max_ms=800))
    cut: list[float] = []

    def check():
        if not cut and rig.playout.buffered_s == 0 and rig.turns.state is State.USER_SPEAKING:
            cut.append(rig.clock.now())

    async with rig:
        onset = await _user_during_reply(rig, 2.0, check)
        await rig.turns.wait_reply()
    assert cut and cut[0] - onset < 1.0, "the agent was not cut off while the user kept talking"
    assert rig.turns.turns[0].interrupted and rig.turns.turns[-1].heard_text == "Sorry."


async def test_without_the_option_even_a_backchannel_interrupts():
    async with Rig(["tell me", "yeah"], [REPLY, "Yes?"]) as rig:
        await _user_during_reply(rig, 0.4)
        await rig.turns.wait_reply()
    assert rig.turns.turns[0].interrupted and rig.turns.backchannels == 0
