"""What the caller hears is bounded and the model is not taught its own refusals (agent/reply.py,
agent/context.py). Fakes: `Rig` (FakeSTT, FakeLLM, FakeTTSEngine on a VirtualClock); the turn
manager, the reply and the conversation are real."""

from __future__ import annotations

from agent.context import Conversation
from agent.turns import TurnOptions
from tests.fakes import Rig

SENTENCE = "This is one more sentence of a reply that goes on."  # 11 words


async def test_a_runaway_reply_stops_at_the_first_sentence_end_after_the_word_cap():
    async with Rig(["tell me everything"], [" ".join([SENTENCE] * 20)], TurnOptions(max_reply_words=30)) as rig:
        await rig.user_says()
        await rig.turns.wait_reply()
    (m,) = rig.turns.turns
    words = m.heard_text.split()
    assert 30 <= len(words) <= 30 + len(SENTENCE.split()) and m.heard_text.endswith("."), len(words)
    assert rig.llm.closed == 1  # the stream was closed: the server stops decoding the rest


async def test_no_cap_when_it_is_off():
    async with Rig(["tell me everything"], [" ".join([SENTENCE] * 8)], TurnOptions(max_reply_words=0)) as rig:
        await rig.user_says()
        await rig.turns.wait_reply()
    assert len(rig.turns.turns[0].heard_text.split()) == 8 * len(SENTENCE.split())


def test_a_stock_refusal_is_kept_out_of_the_models_own_history():
    c = Conversation("be brief")
    c.add_user("What's the weather?")
    c.add_agent("I'm sorry, but I can't assist with that.", False)
    c.add_user("What's the capital of France?")
    shown = [m["content"] for m in c.for_llm() if m["role"] == "assistant"]
    assert shown == ["(I could not answer that.)"]
    assert c.messages[1].text == "I'm sorry, but I can't assist with that."  # what was heard is kept
