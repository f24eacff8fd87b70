"""Tools (agent/tools.py, agent/decide.py, agent/calltools.py) and replies that use them (agent/reply.py).

Fakes: `Rig` (tests/fakes.py: FakeSTT, FakeLLM, FakeTTSEngine on a VirtualClock) and `RecordedCall`;
the tool machinery, the grammar builder, the turn manager and the reply scope are real. No model.
The grammar itself is checked against the real llama.cpp in tests/test_tools_embedded.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Literal

import pytest

from agent.calltools import END_CALL, GOODBYE, transfer_to
from agent.decide import digit_tools, gbnf, parse_call
from agent.recorded_call import RecordedCall
from agent.tools import Digits, Tool, ToolBox, ToolCall, ToolError
from tests.fakes import Rig

ORDERS = {"4712": {"status": "shipped", "delivery": "Friday"}}


def lookup_order(order_id: Digits) -> dict:
    """Look up an order's status and delivery day by its number.

    Args:
        order_id: the order number the caller gave
    """
    order = ORDERS.get(order_id)
    if order is None:
        return {"found": False}
    return {"found": True, **order}


def test_a_tool_is_described_by_its_signature_and_docstring():
    def book(day: Literal["monday", "tuesday"], people: int, note: str | None = None, vip: bool = False) -> str:
        """Book a table.

        Args:
            people: how many are coming
        """
        return "ok"

    t = Tool.from_function(book)
    assert t.name == "book" and t.description == "Book a table."
    props = t.parameters["properties"]
    assert props["day"] == {"type": "string", "enum": ["monday", "tuesday"]}
    assert props["people"] == {"type": "integer", "description": "how many are coming"}
    assert props["note"] == {"type": "string"} and props["vip"] == {"type": "boolean"}
    assert t.parameters["required"] == ["day", "people"]
    assert Tool.from_function(lookup_order).digit_params == ("order_id",)


@pytest.mark.parametrize("fn,message", [
    (lambda x: x, "needs a docstring"),
    (None, "needs a type hint"),
    (None, "cannot be described"),
])
def test_a_tool_the_model_cannot_be_told_about_is_refused_when_defined(fn, message):
    def untyped(x):
        """Doc."""

    def odd(x: dict) -> None:
        """Doc."""

    fn = fn or (untyped if message == "needs a type hint" else odd)
    with pytest.raises(ValueError, match=message):
        Tool.from_function(fn)


async def test_a_tool_that_raises_times_out_or_returns_junk_is_a_failed_result_not_an_exception():
    async def slow() -> str:
        """Slow."""
        await asyncio.sleep(10)
        return "late"

    def boom() -> str:
        """Boom."""
        raise KeyError("no such table")

    def junk() -> object:
        """Junk."""
        return object()

    for fn, expect in ((slow, "took longer than 0.05 s"), (boom, "raised KeyError"), (junk, "not JSON-serializable")):
        t = Tool.from_function(fn, timeout_s=0.05)
        result = await t.run(ToolCall(t.name, {}), None)
        assert not result.ok and expect in (result.error or ""), (fn.__name__, result.error)
    bad = await Tool.from_function(lookup_order).run(ToolCall("lookup_order", {"order_id": "47a2"}), None)
    assert not bad.ok and "does not fit" in (bad.error or "")
    unknown = await Tool.from_function(lookup_order).run(ToolCall("lookup_order", {"id": "1"}), None)
    assert not unknown.ok and "unknown arguments ['id']" in (unknown.error or "")


def test_the_grammar_allows_prose_or_exactly_one_valid_call():
    box = ToolBox.of([lookup_order, END_CALL])
    g = gbnf(box)
    assert g.startswith("root ::= answer | call") and "answer ::= [^{}`" in g  # no JSON-looking prose
    assert '\\"lookup_order\\"' in g and "digits" in g and '\\"end_call\\"' in g
    assert parse_call('{"name": "lookup_order", "arguments": {"order_id": "4712"}}', box) == \
        ToolCall("lookup_order", {"order_id": "4712"})
    with pytest.raises(ToolError, match="unknown tool 'refund'"):
        parse_call('{"name": "refund", "arguments": {}}', box)
    with pytest.raises(ToolError, match="not JSON"):
        parse_call('{"name": "lookup_order", "argu', box)


def test_a_tool_is_offered_only_when_the_callers_words_make_it_plausible():
    box = ToolBox.of([lookup_order, END_CALL, transfer_to("desk")])
    said = lambda text: digit_tools(box, [{"role": "user", "content": text}])  # noqa: E731
    assert said("What are your opening hours?") == []  # no digits, no cue: nothing to call
    assert said("It's four seven one two.") == ["lookup_order"]
    assert said("okay thanks, bye") == ["end_call"]
    assert said("can I speak to a person") == ["transfer_to_human"]
    assert said("go forward ten meters") == []  # two digits are a count, not an order number (baresip call)


async def _call(rig: Rig) -> None:
    await rig.user_says()
    await rig.turns.wait_reply()


async def test_a_lookup_says_the_filler_runs_the_tool_and_answers_from_its_result():
    call = '{"name": "lookup_order", "arguments": {"order_id": "9999"}}'  # the model's copy of the digits
    async with Rig(["my order is four seven one two"], [call, "It shipped and arrives on Friday."],
                   tools=ToolBox.of([lookup_order])) as rig:
        await _call(rig)
    (m,) = rig.turns.turns
    assert m.heard_text == "One moment, let me check. It shipped and arrives on Friday."
    # the digits came from the caller's words, not from the model's copy of them
    assert m.tools == [{"name": "lookup_order", "arguments": {"order_id": "4712"}, "ok": True,
                        "result": {"found": True, "status": "shipped", "delivery": "Friday"}, "error": None,
                        "duration_ms": m.tools[0]["duration_ms"]}]
    first, second = rig.llm.options
    assert "grammar" in first and "lookup_order" in first["grammar"] and second == {}
    note = rig.llm.requests[1][-1]["content"]
    assert "Facts from lookup_order" in note and "shipped" in note
    roles = [(x.role, x.text[:20]) for x in rig.turns.conversation.messages]
    assert [r for r, _ in roles] == ["user", "tool", "assistant"]
    assert [e["state"] for e in rig.events if e["type"] == "tool"] == ["started", "done"]


async def test_native_tool_calls_are_checked_and_used_the_same_way():
    async with Rig(["order four seven one two please"], [{"name": "lookup_order", "arguments": {"order_id": "4712"}},
                                                         "It arrives Friday."],
                   tools=ToolBox.of([lookup_order]), tool_mode="native") as rig:
        await _call(rig)
    (m,) = rig.turns.turns
    assert m.tools[0]["ok"] and m.heard_text.endswith("It arrives Friday.")
    assert rig.llm.options[0]["tools"][0]["function"]["name"] == "lookup_order"


async def test_a_failing_tool_is_a_spoken_apology_and_the_history_stays_consistent():
    def lookup(order_id: Digits) -> dict:
        """Look up an order."""
        raise ConnectionError("database is down")

    async with Rig(["order four seven one two"], ['{"name": "lookup", "arguments": {"order_id": "4712"}}'],
                   tools=ToolBox.of([lookup])) as rig:
        await _call(rig)
    (m,) = rig.turns.turns
    assert m.heard_text == "One moment, let me check. Sorry, I couldn't do that just now."
    assert m.tools[0]["ok"] is False and "database is down" in m.tools[0]["error"]
    assert [x.role for x in rig.turns.conversation.messages] == ["user", "tool", "assistant"]
    assert len(rig.llm.requests) == 1  # no answer was asked of the model from a failed tool


async def test_an_unknown_tool_from_a_native_endpoint_is_an_apology_never_spoken_json():
    async with Rig(["refund order four seven one two"], [{"name": "refund", "arguments": {}}],
                   tools=ToolBox.of([lookup_order]), tool_mode="native") as rig:
        await _call(rig)
    (m,) = rig.turns.turns
    assert m.heard_text == "Sorry, I couldn't do that just now." and "unknown tool" in (m.error or "")


async def test_a_barge_in_during_the_tool_cancels_it_inside_the_reply():
    started, finished = asyncio.Event(), []

    async def slow_lookup(order_id: Digits) -> dict:
        """Look up an order."""
        started.set()
        await asyncio.sleep(3600)
        finished.append(order_id)
        return {}

    async with Rig(["order four seven one two", "never mind"],
                   ['{"name": "slow_lookup", "arguments": {"order_id": "4712"}}', "Okay."],
                   tools=ToolBox.of([Tool.from_function(slow_lookup, timeout_s=7200)])) as rig:
        await rig.user_says()
        t0 = time.monotonic()
        while not started.is_set():
            assert time.monotonic() - t0 < 10, "the tool never started"
            await asyncio.sleep(0.01)
        await rig.user_says()  # the caller cuts in while the tool runs
        await rig.turns.wait_reply()
    first, second = rig.turns.turns
    assert first.interrupted and first.tools == [] and not finished
    assert second.user_text == "never mind"
    assert all(x.role != "tool" for x in rig.turns.conversation.messages)  # no late result in the history


async def test_end_call_says_goodbye_then_hangs_up_once_it_was_played():
    call = RecordedCall()
    async with Rig(["that's all, bye"], ['{"name": "end_call", "arguments": {}}'], tools=ToolBox.of([END_CALL]),
                   call=call) as rig:
        await _call(rig)
    (m,) = rig.turns.turns
    assert m.heard_text == GOODBYE and call.hung_up == "end_call"
    assert m.agent_stopped_at is not None  # played out before the hang-up


async def test_a_refused_transfer_is_said_and_the_call_stays_up():
    call = RecordedCall(transfer_ok=False)
    t = transfer_to("sip:desk@example.com")
    async with Rig(["get me a human"], ['{"name": "transfer_to_human", "arguments": {}}',
                                        "Sorry, nobody can take the call right now."],
                   tools=ToolBox.of([t]), call=call) as rig:
        await _call(rig)
    (m,) = rig.turns.turns
    assert call.transfers == ["sip:desk@example.com"] and call.hung_up is None
    assert "nobody" in m.heard_text


def test_tool_results_in_the_turn_json_are_serializable():
    async def go():
        async with Rig(["order four seven one two"], ['{"name": "lookup_order", "arguments": {"order_id": "1"}}',
                                                      "Found it."], tools=ToolBox.of([lookup_order])) as rig:
            await _call(rig)
        return rig

    rig = asyncio.run(go())
    turn = next(e for e in rig.events if e["type"] == "turn")
    assert json.loads(json.dumps(turn))["metrics"]["tools"][0]["name"] == "lookup_order"


async def test_with_no_tool_to_offer_the_reply_is_held_to_prose_and_json_text_is_never_spoken():
    """The caller said no digits and no cue word: no tool is offered, the grammar allows prose only;
    a model (or server) that writes a call as text anyway gets an apology, not JSON read aloud."""
    text_call = '{"name": "lookup_order", "arguments": {"order_id": "12345"}}'
    async with Rig(["do you sell helmets", "and gloves"], ["Yes, we sell helmets.", text_call],
                   tools=ToolBox.of([lookup_order, END_CALL]), tool_mode="native") as rig:
        await _call(rig)
        await _call(rig)
    first, second = rig.turns.turns
    assert first.heard_text == "Yes, we sell helmets." and first.tools == []
    assert second.heard_text == "Sorry, I couldn't do that just now." and "{" not in second.heard_text
    async with Rig(["do you sell helmets"], ["Yes."], tools=ToolBox.of([lookup_order])) as rig:
        await _call(rig)
    assert rig.llm.options[0]["grammar"].startswith("root ::= answer\n")


async def test_a_number_the_caller_read_out_must_go_to_the_tool_that_takes_it():
    """Three or more digits and one tool that takes digits: the grammar has no prose branch, so the
    model cannot answer "What's your order number?" to a caller who just said it."""
    call = '{"name": "lookup_order", "arguments": {"order_id": "4712"}}'
    async with Rig(["my order is four seven one two"], [call, "It shipped."],
                   tools=ToolBox.of([lookup_order, END_CALL])) as rig:
        await _call(rig)
    grammar = rig.llm.options[0]["grammar"]
    assert grammar.startswith("root ::= call\n") and "end_call" not in grammar
    async with Rig(["I have 3 bikes"], ["Nice."], tools=ToolBox.of([lookup_order, END_CALL])) as rig:
        await _call(rig)
    assert "grammar" not in rig.llm.options[0] or rig.llm.options[0]["grammar"].startswith("root ::= answer")


async def test_decisive_words_call_the_tool_without_asking_the_model():
    """"bye" ends the call and "operator" transfers it whatever the model would have said."""
    async with Rig(["okay thanks bye"], ['{"name": "end_call", "arguments": {}}'],
                   tools=ToolBox.of([lookup_order, END_CALL, transfer_to("desk")]), call=RecordedCall()) as rig:
        await _call(rig)
    assert rig.llm.options[0]["grammar"].startswith("root ::= call\n") and "end_call" in rig.llm.options[0]["grammar"]
    assert "transfer_to_human" not in rig.llm.options[0]["grammar"]
