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
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from agent.tools import Tool, ToolBox, ToolCall, ToolError

log = logging.getLogger(__name__)

Mode = Literal["grammar", "native"]

ANSWER_ONLY = "root ::= answer\n" + r"answer ::= [^{}`\x00]+" + "\n"

_STRING = r'"\"" ( [^"\\\x00-\x1f] | "\\" ["\\/bfnrt] ){0,200} "\""'


@dataclass(frozen=True)
class Calling:
    """The model has begun a call of `name` (its arguments are still being decoded)."""

    name: str


_NAMED = re.compile(r'\{"name": "([A-Za-z0-9_]+)"')


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
             r"answer ::= [^{}`\x00]+",  # prose has no braces or backticks: nothing JSON-like is spoken
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


def _last_user(messages: list[dict[str, Any]]) -> str:
    """The caller's latest words in a prompt (what the offer rules and the digit parser read)."""
    return str(next((m["content"] for m in reversed(messages) if m.get("role") == "user"), ""))


def digit_tools(tools: ToolBox, messages: list[dict[str, Any]]) -> list[str] | None:
    """The tools the model may call now, from the caller's latest words: one that needs digits (an
    order number) only once they said some, so the model cannot make a number up (measured: the 0.5B
    called lookup_order("12345") for "What are your opening hours?"); one with cue words (transfer,
    end_call) only when one of them was said. None: all of them."""
    if not any(set(t.digit_params) & set(t.parameters["required"]) or t.cues for t in tools):
        return None
    from agent.spoken import digits

    said = _last_user(messages)
    lowered = f" {said.lower()} "
    run = digits(said)
    has_digits = bool(run) and len(run or "") >= MIN_DIGITS  # "go forward ten meters" is not an order number
    allowed = []
    for t in tools:
        if set(t.digit_params) & set(t.parameters["required"]) and not has_digits:
            continue
        if t.cues and not any(c in lowered for c in t.cues):
            continue
        allowed.append(t.name)
    return allowed


MIN_DIGITS = 3  # a digit run this long is a number to look up; shorter ones are counts ("ten", "2 bikes")


def digit_call(tools: ToolBox, messages: list[dict[str, Any]], min_digits: int = MIN_DIGITS) -> str | None:
    """The tool that must be called now: one of its `decisive` words was said ("goodbye",
    "operator"), or the caller's latest words hold a run of at least
    `min_digits` digits and exactly one tool takes them (an order number, a ticket). Measured in the
    order desk eval: with the choice left to it, the 0.5B answered "4 7 1 2" with "What's your order
    number?" in a real call (greeting and history before it); a number the caller read out is what
    the tool is for, and the parse of it is deterministic (agent/spoken.py)."""
    said = _last_user(messages)
    words = " " + re.sub(r"[^a-z' ]+", " ", said.lower()) + " "
    for t in tools:  # decisive words first: "bye" after an order number still ends the call
        if t.decisive and not t.parameters["required"] and any(f" {w} " in words for w in t.decisive):
            return t.name
    needy = [t.name for t in tools if set(t.digit_params) & set(t.parameters["required"])]
    if len(needy) != 1:
        return None
    from agent.spoken import digits

    run = digits(said)
    return needy[0] if run and len(run) >= min_digits else None


def fill_digits(call: ToolCall, tools: ToolBox, messages: list[dict[str, Any]]) -> ToolCall:
    """`Digits` arguments taken from the caller's own words where they said a digit run."""
    tool = tools.get(call.name)
    if tool is None or not tool.digit_params:
        return call
    from agent.spoken import digits

    said = _last_user(messages)
    run = digits(said)
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
                 only: list[str] | None = None, must: str | None = None) -> AsyncIterator[str | Calling | ToolCall]:
    """Stream the reply's text deltas, or yield one `ToolCall` (and no text). A malformed call (the
    native API does not constrain) raises ToolError, which the reply turns into an apology.
    `only`: the names of the tools that may be called now (`digit_tools`); None: all. `must`: the
    tool that has to be called now (`digit_call`): the grammar has no prose branch."""
    had_tools = bool(tools)
    if must is not None and tools.get(must) is not None:
        only, tools = [must], ToolBox({must: tools.tools[must]})
    if only is not None:
        tools = ToolBox({name: t for name, t in tools.tools.items() if name in only})
    if not tools:
        # nothing may be called now; the prompt still describes the tools, so the model may try to
        # write a call anyway (measured: it wrote lookup_order JSON for "do you sell helmets"):
        # on a grammar server the output is held to prose, elsewhere a JSON-looking reply is refused
        grammar = ANSWER_ONLY if had_tools and mode == "grammar" else None
        start = ""
        async for delta in llm.stream(messages, **({"grammar": grammar} if grammar else {})):
            if not isinstance(delta, str):  # a native call of a tool that was not offered
                raise ToolError("the model called a tool that was not offered")
            if had_tools and len(start) < 8:
                start += delta
                if start.lstrip()[:1] in ("{", "`"):
                    raise ToolError(f"the model wrote a call as text: {start!r}")
            yield delta
        return
    if mode == "native":
        extra = {"tool_choice": {"type": "function", "function": {"name": must}}} if must else {}
        async for item in llm.stream(messages, tools=tools.specs(), **extra):
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
    announced = False
    async for delta in llm.stream(messages, grammar=gbnf(tools, allow_answer=must is None)):
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
            if not announced and (m := _NAMED.match("".join(held).lstrip())) and m.group(1) in tools.tools:
                announced = True
                yield Calling(m.group(1))  # the filler can start now, while the arguments decode
        else:
            yield delta
    if calling:
        yield fill_digits(parse_call("".join(held), tools), tools, messages)
