"""Tool decisions on the REAL embedded model (Qwen2.5 0.5B in llama.cpp) through the grammar.

What the grammar guarantees whatever the model prefers: the output is prose that is never JSON, or
one call of a known tool with schema-valid arguments; and digits come from the caller's words.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from agent.benches.tools import INSTRUCTIONS, order_tools
from agent.decide import decide, digit_tools, tools_prompt
from agent.llm import LLMOptions, OpenAICompatibleLLM
from agent.llm_server import EmbeddedLLMServer
from agent.prompts import SPEECH_STYLE
from agent.tools import ToolCall

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def llm():
    server = EmbeddedLLMServer(n_threads=2)
    url = await server.start()
    client = OpenAICompatibleLLM(LLMOptions(base_url=url, temperature=0.0))
    yield client
    await client.aclose()
    await server.stop()


async def _decide(llm, said: str):
    box = order_tools()
    messages = [{"role": "system", "content": f"{INSTRUCTIONS}\n{SPEECH_STYLE}" + tools_prompt(box, "grammar")},
                {"role": "user", "content": said}]
    out: list = []
    async for item in decide(llm, messages, box, "grammar", only=digit_tools(box, messages)):
        out.append(item)
    return out


@pytest.mark.parametrize("said,name,args", [
    ("hi where is my order the number is four seven one two", "lookup_order", {"order_id": "4712"}),
    ("can i talk to a real person please", "transfer_to_human", {}),
])
async def test_the_embedded_model_calls_the_tool_with_valid_arguments(llm, said, name, args):
    out = await _decide(llm, said)
    assert [type(x).__name__ for x in out] == ["Calling", "ToolCall"], out  # named first: the filler starts
    call = out[-1]
    assert isinstance(call, ToolCall) and call.name == name and call.arguments == args, call


async def test_a_question_without_digits_is_answered_in_prose_never_json_and_never_a_made_up_lookup(llm):
    out = await _decide(llm, "what are your opening hours")
    assert out and all(isinstance(x, str) for x in out), out
    assert not "".join(out).lstrip().startswith("{")
