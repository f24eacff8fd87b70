"""The agent's decision in one LLM request: answer in prose, or call one tool with valid arguments.

Small local models do not emit reliable tool calls (measured on Qwen2.5-Coder 0.5B and 1.5B through
llama.cpp's OpenAI `tools`: 0 of 14 right; the 0.5B invented order facts, the 1.5B wrote calls as
JSON in its text, which would be spoken). So the decision is given a form it cannot get wrong:

- **grammar** (the embedded llama.cpp, or any server that takes GBNF): the output is constrained to
  `prose that does not start with "{"` | `{"name": "<a tool>", "arguments": {<exactly its schema>}}`.
  Answering costs no extra token (the model writes its reply as it would), and a call is valid
  JSON for one of the tools by construction; it is never spoken, because it starts with "{".
- **native** (OpenAI and servers with function calling): the `tools` parameter; calls arrive as
  `tool_calls`, checked against the same schema.

Either way, arguments typed `Digits` are then taken from the caller's own words when they said a
digit run (agent/spoken.py): models copy "four seven one two" wrongly far more often than a parser.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

from agent.tools import Tool, ToolBox, ToolCall, ToolError

log = logging.getLogger(__name__)

Mode = Literal["grammar", "native"]

_STRING = r'"\"" ( [^"\\\x00-\x1f] | "\\" ["\\/bfnrt] ){0,200} "\""'


def tools_prompt(tools: ToolBox, mode: Mode) -> str:
    """What the system prompt adds about the tools (the native API carries the schemas itself)."""
    lines = ["", "You can use tools. Never state a fact about an order, account or booking unless a tool "
             "returned it in this conversation; if you need a fact, use the tool."]
    if mode == "grammar":
        lines.append('To use a tool, reply with only a JSON object {"name": TOOL, "arguments": {...}} and '
                     "nothing else. Otherwise reply in plain spoken English. The tools:")
        for t in tools:
            params = ", ".join(f"{k}: {_kind(v)}" for k, v in t.parameters["properties"].items())
            lines.append(f"- {t.name}({params}): {t.description}")
    return "\n".join(lines)


def _kind(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " or ".join(json.dumps(v) for v in schema["enum"])
    if "pattern" in schema:
        return "digits"
    return str(schema.get("type", "value"))


def gbnf(tools: ToolBox, only: list[str] | None = None, allow_answer: bool = True) -> str:
    """A GBNF grammar: prose not starting with "{", or one call of a tool in `only` (default: all)."""
    names = only or [t.name for t in tools]
    rules = [f"root ::= {'answer | ' if allow_answer else ''}call",
             r"answer ::= [^{\x00] [^\x00]*",
             "call ::= " + " | ".join(f"c{i}" for i in range(len(names))),
             f"str ::= {_STRING}",
             r'digits ::= "\"" [0-9]{1,32} "\""',
             r'int ::= "-"? [0-9]{1,12}',
             r'num ::= "-"? [0-9]{1,12} ("." [0-9]{1,6})?',
             'bool ::= "true" | "false"']
    for i, name in enumerate(names):
        t = tools.get(name)
        assert t is not None, name
        rules.append(f'c{i} ::= "{{\\"name\\": \\"{name}\\", \\"arguments\\": {{" {_args(t)} "}}}}"')
    return "\n".join(rules) + "\n"


def _args(t: Tool) -> str:
    props, required = t.parameters["properties"], set(t.parameters["required"])
    parts: list[str] = []
    first = True
    for key, schema in props.items():  # in the signature's order; optional ones may be left out
        sep = "" if first else ", "
        item = f'"{sep}\\"{key}\\": " {_value(schema)}'
        parts.append(item if key in required or not parts else f"({item})?")
        first = False
    return " ".join(parts) if parts else '""'


def _value(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "(" + " | ".join(_literal(json.dumps(v)) for v in schema["enum"]) + ")"
    kind = schema.get("type")
    if kind == "string":
        return "digits" if "pattern" in schema else "str"
    if kind == "array":
        item = _value(schema["items"])
        return f'"[" ({item} (", " {item})*)? "]"'
    return {"integer": "int", "number": "num", "boolean": "bool"}.get(str(kind), "str")


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def digit_tools(tools: ToolBox, messages: list[dict[str, Any]]) -> list[str] | None:
    """The tools the model may call now: one that needs digits (an order number) only once the
    caller has said some in their latest turn, so the model cannot make a number up (measured: the
    0.5B called lookup_order("12345") for "What are your opening hours?"). None: all of them."""
    needy = {t.name for t in tools if set(t.digit_params) & set(t.parameters["required"])}
    if not needy:
        return None
    from agent.spoken import digits

    said = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    if digits(str(said)):
        return None
    allowed = [t.name for t in tools if t.name not in needy]
    return allowed or []


def fill_digits(call: ToolCall, tools: ToolBox, messages: list[dict[str, Any]]) -> ToolCall:
    """`Digits` arguments taken from the caller's own words where they said a digit run."""
    tool = tools.get(call.name)
    if tool is None or not tool.digit_params:
        return call
    from agent.spoken import digits

    said = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    run = digits(str(said))
    if not run:
        return call
    return ToolCall(call.name, {**call.arguments, **{k: run for k in tool.digit_params}}, call.id)


def parse_call(text: str, tools: ToolBox) -> ToolCall:
    """The tool call in `text` (what the grammar allows); ToolError if it names no tool or is malformed."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolError(f"the model's tool call is not JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise ToolError(f"the model's tool call has no tool name: {text[:200]!r}")
    return _known(doc["name"], doc.get("arguments", {}), tools)


def _known(name: str, arguments: Any, tools: ToolBox, id: str = "") -> ToolCall:
    tool = tools.get(name)
    if tool is None:
        raise ToolError(f"the model called an unknown tool {name!r}; known: {', '.join(tools.tools)}")
    return ToolCall(name, tool.check(arguments), id)


async def decide(llm: Any, messages: list[dict[str, Any]], tools: ToolBox, mode: Mode,
                 only: list[str] | None = None) -> AsyncIterator[str | ToolCall]:
    """Stream the reply's text deltas, or yield one `ToolCall` (and no text). A malformed call (the
    native API does not constrain) raises ToolError, which the reply turns into an apology.
    `only`: the names of the tools that may be called now (`digit_tools`); None: all."""
    if only is not None:
        tools = ToolBox({name: t for name, t in tools.tools.items() if name in only})
    if not tools:
        async for delta in llm.stream(messages):
            if isinstance(delta, str):  # no tools were offered: a call cannot be meant
                yield delta
        return
    if mode == "native":
        async for item in llm.stream(messages, tools=tools.specs()):
            if isinstance(item, dict):
                try:
                    arguments = json.loads(item["arguments"] or "{}")
                except json.JSONDecodeError as exc:
                    raise ToolError(f"the model's arguments for {item['name']} are not JSON: {exc}") from None
                call = _known(item["name"], arguments, tools, item.get("id", ""))
                yield fill_digits(call, tools, messages)
                return
            yield item
        return
    held: list[str] = []  # until the first visible character says which branch this is
    calling: bool | None = None
    async for delta in llm.stream(messages, grammar=gbnf(tools)):
        if calling is None:
            held.append(delta)
            start = "".join(held).lstrip()
            if not start:
                continue
            calling = start.startswith("{")
            if not calling:
                yield "".join(held)
            continue
        if calling:
            held.append(delta)
        else:
            yield delta
    if calling:
        yield fill_digits(parse_call("".join(held), tools), tools, messages)
