"""Tools: plain Python functions the agent may call, described to the LLM by their signature.

    async def lookup_order(order_id: Digits) -> dict:
        \"\"\"Look up an order by its number.\"\"\"

A tool's name is the function's, its description the docstring's first paragraph, its JSON schema
comes from the type hints (str, int, float, bool, Literal[...], Optional, list[...]; `Digits` for a
number the caller says digit by digit, which is read out of the caller's words deterministically:
small models copy "four seven one two" wrongly). A parameter typed `Call` receives the call itself
(hang up, transfer, send DTMF, say something) and is not shown to the model.

Running a tool is bounded: a timeout, arguments checked against the schema, a result that must be
JSON-serializable; any failure becomes a `ToolError` whose message is safe to log, and the reply
turns it into a short spoken apology (agent/reply.py), never silence or a crash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NewType

from pipeline.stages import CallControl

Digits = NewType("Digits", str)
"""A string of digits the caller says ("four seven one two" → "4712"); parsed from speech, not guessed."""

Call = CallControl
"""Annotate a parameter with this to receive the call (see `pipeline.stages.CallControl`)."""

_JSON_TYPES: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    Digits: {"type": "string", "pattern": "^[0-9]{1,32}$", "description": "digits only, as the caller said them"},
}


class ToolError(RuntimeError):
    """A tool could not be run or failed; the message says which and why (never shown to the caller)."""


@dataclass(frozen=True)
class ToolCall:
    """The model's decision to call `name` with `arguments` (already parsed from JSON)."""

    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass
class ToolResult:
    """One call's outcome, as it goes into the history, the turn's metrics and the page."""

    call: ToolCall
    ok: bool
    result: Any = None  # JSON-serializable when ok
    error: str | None = None
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.call.name, "arguments": self.call.arguments, "ok": self.ok, "result": self.result,
                "error": self.error, "duration_ms": round(self.duration_ms, 1)}

    def for_model(self) -> str:
        """How the result is shown to the LLM: one line it can answer from."""
        # worded as facts for the model, not as a line to copy: in a call the 0.5B read an earlier
        # "The tool lookup_order(...) returned: ..." note aloud, with a made-up result
        if self.ok:
            shown = {k: v for k, v in self.result.items() if k not in ("say", "hang_up", "next")} \
                if isinstance(self.result, dict) else self.result
            facts = json.dumps(shown, default=str)
            return f"Facts from {self.call.name} (for you; say them in your own words): {facts}"
        return f"{self.call.name} could not be done. Say so briefly; do not make anything up."


@dataclass
class Tool:
    """A callable the model may choose, with what the model is told about it."""

    fn: Callable[..., Any]
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of an object
    call_param: str | None = None  # the parameter that receives the call, if any
    filler: str | None = "One moment, let me check."  # said while it runs; None: say nothing
    timeout_s: float = 5.0
    ends_call: bool = False  # after the reply is played, the call ends (end_call)
    digit_params: tuple[str, ...] = ()
    # Words of the caller that make this tool plausible ("human", "operator"); when given, the tool
    # is offered to the model only in a turn whose words contain one (agent/decide.py `offered`)
    cues: tuple[str, ...] = ()
    # Words that settle it: said, the tool is called without asking the model (a caller who says
    # "goodbye" or asks for an operator is not left to a 0.5B's whim; order desk eval)
    decisive: tuple[str, ...] = ()

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None, filler: str | None | object = ...,
                      timeout_s: float = 5.0, cues: Sequence[str] = (), decisive: Sequence[str] = ()) -> Tool:
        """Describe `fn` from its signature and docstring. A missing hint or docstring is an error
        at definition time (the model needs both), not a confusing call at run time."""
        label = name or fn.__name__
        doc = inspect.getdoc(fn)
        if not doc:
            raise ValueError(f"tool {label}: needs a docstring (it tells the model when to use it)")
        description, arg_docs = _parse_doc(doc)
        try:
            hints = typing.get_type_hints(fn)
        except NameError as exc:
            raise ValueError(f"tool {label}: a type hint cannot be resolved ({exc})") from None
        props: dict[str, Any] = {}
        required: list[str] = []
        call_param = None
        digit_params = []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise ValueError(f"tool {label}: *args/**kwargs cannot be described to the model")
            hint = hints.get(p.name)
            if hint is None:
                raise ValueError(f"tool {label}: parameter {p.name!r} needs a type hint")
            if hint is CallControl:
                call_param = p.name
                continue
            schema = _schema(hint, f"tool {label}, parameter {p.name!r}")
            if hint is Digits or _optional_of(hint) is Digits:
                digit_params.append(p.name)
            if p.name in arg_docs:
                schema = {**schema, "description": arg_docs[p.name]}
            props[p.name] = schema
            if p.default is p.empty:
                required.append(p.name)
        params = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
        kw: dict[str, Any] = {} if filler is ... else {"filler": filler}
        return cls(fn, label, description, params, call_param, timeout_s=timeout_s, cues=tuple(cues),
                   decisive=tuple(decisive),
                   digit_params=tuple(digit_params), **kw)

    def spec(self) -> dict[str, Any]:
        """The OpenAI `tools` entry."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def check(self, arguments: Any) -> dict[str, Any]:
        """`arguments` if they fit the schema, else a ToolError naming what is wrong."""
        if not isinstance(arguments, dict):
            raise ToolError(f"{self.name}: arguments must be an object, got {type(arguments).__name__}")
        props, required = self.parameters["properties"], self.parameters["required"]
        unknown = sorted(set(arguments) - set(props))
        missing = [r for r in required if r not in arguments]
        if unknown or missing:
            raise ToolError(f"{self.name}: unknown arguments {unknown}, missing {missing}")
        for key, value in arguments.items():
            if not _fits(value, props[key]):
                raise ToolError(f"{self.name}: argument {key}={value!r} does not fit {props[key]}")
        return arguments

    async def run(self, call: ToolCall, control: CallControl | None) -> ToolResult:
        """Run once, bounded by `timeout_s`; every failure is a ToolResult with ok=False, except
        cancellation (a barge-in), which propagates so the reply's scope ends at once."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            kwargs = dict(self.check(call.arguments))
            if self.call_param is not None:
                kwargs[self.call_param] = control
            async with asyncio.timeout(self.timeout_s):
                if inspect.iscoroutinefunction(self.fn):
                    value = await self.fn(**kwargs)
                else:  # a blocking function (a database query) runs off the event loop
                    value = await asyncio.to_thread(self.fn, **kwargs)
                    if inspect.isawaitable(value):
                        value = await value
            value = _jsonable(value, self.name)
            return ToolResult(call, True, value, duration_ms=(loop.time() - t0) * 1000)
        except TimeoutError:
            error = f"{self.name} took longer than {self.timeout_s:g} s"
        except ToolError as exc:
            error = str(exc)
        except Exception as exc:  # the user's code: any failure is reported, never raised into the reply
            error = f"{self.name} raised {type(exc).__name__}: {exc}"
        return ToolResult(call, False, error=error, duration_ms=(loop.time() - t0) * 1000)


@dataclass
class ToolBox:
    """The tools one agent (or one flow node) offers, by name."""

    tools: dict[str, Tool] = field(default_factory=dict)

    @classmethod
    def of(cls, items: Sequence[Callable[..., Any] | Tool]) -> ToolBox:
        box = cls()
        for item in items:
            tool = item if isinstance(item, Tool) else Tool.from_function(item)
            if tool.name in box.tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            box.tools[tool.name] = tool
        return box

    def __bool__(self) -> bool:
        return bool(self.tools)

    def __iter__(self) -> typing.Iterator[Tool]:
        return iter(self.tools.values())

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self]


def tool(fn: Callable[..., Any] | None = None, *, filler: str | None | object = ..., timeout_s: float = 5.0,
         name: str | None = None, cues: Sequence[str] = ()) -> Any:
    """Optional decorator to set a tool's filler, timeout or cue words: `@tool(filler=None, timeout_s=2)`."""

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, filler=filler, timeout_s=timeout_s, cues=cues)

    return wrap(fn) if fn is not None else wrap


def _parse_doc(doc: str) -> tuple[str, dict[str, str]]:
    """First paragraph → description; `Args:` lines (`name: text`) → per-parameter descriptions."""
    paragraphs = doc.split("\n\n")
    description = " ".join(paragraphs[0].split())
    args: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
            continue
        if in_args and ":" in stripped:
            key, _, text = stripped.partition(":")
            args[key.strip().split(" ")[0]] = text.strip()
        elif in_args and not stripped:
            in_args = False
    return description, args


def _optional_of(hint: Any) -> Any:
    args = typing.get_args(hint)
    if (typing.get_origin(hint) in (typing.Union, types.UnionType)) and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None))
    return None


def _schema(hint: Any, where: str) -> dict[str, Any]:
    if hint in _JSON_TYPES:
        return dict(_JSON_TYPES[hint])
    inner = _optional_of(hint)
    if inner is not None:
        return _schema(inner, where)
    origin = typing.get_origin(hint)
    if origin is Literal:
        values = list(typing.get_args(hint))
        return {"type": "string" if all(isinstance(v, str) for v in values) else "integer", "enum": values}
    if origin is list:
        (item,) = typing.get_args(hint) or (str,)
        return {"type": "array", "items": _schema(item, where)}
    raise ValueError(f"{where}: type {hint!r} cannot be described to the model "
                     "(use str, int, float, bool, Digits, Literal[...], Optional[...] or list[...])")


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind == "string":
        if not isinstance(value, str):
            return False
        return "pattern" not in schema or value.isdigit() and 0 < len(value) <= 32
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list) and all(_fits(v, schema["items"]) for v in value)
    return True


def _jsonable(value: Any, name: str) -> Any:
    """A value that survives JSON (dataclasses become dicts); else a ToolError naming the tool."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ToolError(f"{name} returned a value that is not JSON-serializable: {exc}") from None
    return value

