"""Call flows (agent/flows.py): validated at load, moved between by tool calls in a conversation.

Fakes: `Rig` (tests/fakes.py: FakeSTT, FakeLLM, FakeTTSEngine, VirtualClock); the flow loader, the
agent, the turn manager and the reply are real. The order desk's own flow file is loaded as shipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.api import Agent, load_agent
from agent.calltools import END_CALL
from agent.flows import Flow, FlowError, FlowState
from agent.tools import Digits, ToolBox
from tests.fakes import Rig

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def lookup_order(order_id: Digits) -> dict:
    """Look up an order by its number."""
    return {"found": True, "status": "shipped"}


GOOD = """
start = "ask"
[nodes.ask]
instructions = "Ask for the order number."
tools = ["lookup_order"]
next = { lookup_order = "found" }
[nodes.found]
instructions = "Tell the caller the status."
tools = ["end_call"]
"""


@pytest.mark.parametrize("text,message", [
    (GOOD.replace('"found" }', '"fonud" }'), r"\[nodes.ask\] next.lookup_order goes to 'fonud', which is not a node"),
    (GOOD.replace('instructions = "Tell the caller the status."', ""), r"\[nodes.found\] has no instructions"),
    (GOOD.replace('start = "ask"', 'start = "begin"'), r"start node 'begin' does not exist"),
    (GOOD.replace('tools = ["end_call"]', 'tools = ["refund"]'), r"\[nodes.found\] names unknown tools \['refund'\]"),
    (GOOD.replace('[nodes.found]', '[nodes.found'), r"not valid TOML: .*line 7"),
    (GOOD.replace('tools = ["lookup_order"]', 'tools = []'), r"next.lookup_order: the node does not offer"),
    ("start = 'x'\n", "no nodes"),
])
def test_a_flow_that_cannot_run_is_refused_at_load_naming_the_place(tmp_path, text, message):
    f = tmp_path / "bad.flow.toml"
    f.write_text(text)
    with pytest.raises(FlowError, match=message):
        Flow.load(f, tools=ToolBox.of([lookup_order, END_CALL]))


def test_an_agent_with_a_bad_flow_file_fails_when_loaded_with_its_file_and_node_named(tmp_path):
    (tmp_path / "f.toml").write_text(GOOD.replace('"found" }', '"nowhere" }'))
    flow = str(tmp_path / "f.toml")
    (tmp_path / "a.py").write_text("from agent import Agent, Digits\n"
                                   "def lookup_order(order_id: Digits) -> dict:\n    '''Look it up.'''\n    return {}\n"
                                   f"agent = Agent(instructions='x', tools=[lookup_order], flow={flow!r})\n")
    with pytest.raises(ValueError, match=r"f.toml: \[nodes.ask\] next.lookup_order goes to 'nowhere'"):
        load_agent(f"{tmp_path / 'a.py'}:agent")


def test_the_order_desk_flow_as_shipped_loads():
    agent = load_agent(f"{DEMOS / 'order_desk.py'}:agent")
    assert isinstance(agent.flow, Flow) and agent.flow.start == "ask_number"
    state = agent.new_flow_state()
    assert state is not None and set(state.tools.tools) == {"lookup_order", "transfer_to_human", "end_call"}


async def test_a_tool_call_moves_the_call_to_the_next_node_and_the_next_turn_is_told_so(tmp_path):
    f = tmp_path / "f.toml"
    f.write_text(GOOD)
    agent = Agent(instructions="You are the order desk.", tools=[lookup_order], flow=f)
    state = agent.new_flow_state()
    assert state is not None
    call = '{"name": "lookup_order", "arguments": {"order_id": "4712"}}'
    async with Rig(["order four seven one two", "okay bye"], [call, "It shipped.", "Bye."],
                   tools=agent.box, flow=state, flow_prompt=Agent.step_note) as rig:
        rig.turns.conversation.step = Agent.step_note(state)
        await rig.user_says()
        await rig.turns.wait_reply()
        assert state.node.name == "found" and set(rig.turns.tools.tools) == {"end_call"}
        await rig.user_says()
        await rig.turns.wait_reply()
    first, last = rig.llm.requests[0], rig.llm.requests[-1]
    assert first[0] == last[0], "the system prompt changed: the server would re-read the whole prompt"
    assert "Ask for the order number." in first[-1]["content"]
    assert "Tell the caller the status." in last[-1]["content"] and "end_call" in last[-1]["content"]
    assert "lookup_order" not in rig.llm.options[-1].get("grammar", "")  # the step's tools only
    assert [e["node"] for e in rig.events if e["type"] == "flow"] == ["found"]


def test_a_tool_can_choose_the_next_node_and_a_failed_tool_moves_nothing():
    from agent.tools import ToolCall, ToolResult

    flow = Flow.from_dict({"start": "a", "nodes": {"a": {"instructions": "A", "tools": ["lookup_order"]},
                                                   "b": {"instructions": "B"}}})
    state = FlowState(flow, ToolBox.of([lookup_order]))
    assert state.after(ToolResult(ToolCall("lookup_order", {}), False, error="x")) is None
    assert state.after(ToolResult(ToolCall("lookup_order", {}), True, {"next": "b"})) == "b"
    assert state.visited == ["a", "b"]
