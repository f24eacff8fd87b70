"""Build your own agent: instructions, a greeting, tools. The same object runs under every command.

    from agent import Agent, serve

    def opening_hours() -> str:
        \"\"\"The shop's opening hours.\"\"\"
        return "nine to five, Monday to Friday"

    shop = Agent(instructions="You answer the phone for a bike shop.", greeting="Hi! How can I help?",
                 tools=[opening_hours])

    if __name__ == "__main__":
        serve(shop)         # or: rejoinder serve --agent shop.py:shop  (also converse, talk)

Tools are plain functions (agent/tools.py). The built-in call controls (agent/calltools.py) are
`end_call` (on by default: "goodbye" ends the call), `transfer_to(target)` and `send_dtmf`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.calltools import END_CALL
from agent.decide import Mode, tools_prompt
from agent.flows import Flow, FlowState
from agent.prompts import SPEECH_STYLE, SPEECH_SYSTEM_PROMPT
from agent.tools import Tool, ToolBox


@dataclass
class Agent:
    """What the agent is told, says first, and can do. `instructions`: who it is and what it is for
    (the spoken-style rules are added to them); `greeting`: said when a call starts (None: wait for
    the caller); `tools`: functions or `Tool`s; `end_call`: offer the built-in hang-up tool."""

    instructions: str = ""
    greeting: str | None = None
    tools: Sequence[Callable[..., Any] | Tool] = ()
    end_call: bool = True
    name: str = "agent"
    flow: Flow | str | Path | None = None  # a call flow (agent/flows.py), or the path of its TOML file
    _box: ToolBox | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._box = self.toolbox()  # a bad tool (no docstring, an untyped parameter) fails here, by name
        if self.flow is not None and not isinstance(self.flow, Flow):
            self.flow = Flow.load(self.flow, tools=self._box)  # a bad flow file fails here, naming the place
        elif isinstance(self.flow, Flow):
            self.flow.check(self._box)

    def toolbox(self) -> ToolBox:
        items = list(self.tools)
        if self.end_call and not any(getattr(t, "name", getattr(t, "__name__", "")) == "end_call" for t in items):
            items.append(END_CALL)
        return ToolBox.of(items) if self.instructions or items else ToolBox()

    @property
    def box(self) -> ToolBox:
        assert self._box is not None
        return self._box

    def system_prompt(self, mode: Mode, state: FlowState | None = None) -> str:
        """What the model is told first: the instructions, the spoken style, and every tool. It stays
        the same for the whole call (the server's prompt cache keeps it and the history read); the
        step of a flow goes at the end of the prompt instead (`step_note`)."""
        if not self.instructions:  # the default conversational agent, with its own wording
            base = SPEECH_SYSTEM_PROMPT
        else:
            base = f"{self.instructions.strip()}\n{SPEECH_STYLE}"
        return base + (tools_prompt(self.box, mode) if self.box else "")

    @staticmethod
    def step_note(state: FlowState | None) -> str | None:
        """The flow step the call is at, told last (changing it re-reads nothing before it: measured,
        a step in the system prompt made the next turn's first token 4.8 s on 2 cores)."""
        if state is None:
            return None
        tools = ", ".join(state.node.tools) or "none"
        return f"Now: {state.node.instructions} (Tools for this step: {tools}.)"

    def new_flow_state(self) -> FlowState | None:
        return FlowState(self.flow, self.box) if isinstance(self.flow, Flow) else None


def load_agent(spec: str) -> Agent:
    """`FILE.py:NAME` → the `Agent` named NAME in that file; a one-line ValueError otherwise."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not name or not path_text:
        raise ValueError(f"--agent {spec!r}: expected FILE.py:NAME (e.g. demos/order_desk.py:agent)")
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"--agent {spec!r}: no such file {path}")
    module_name = f"rejoinder_agent_{path.stem}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ValueError(f"--agent {spec!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ValueError(f"--agent {spec!r}: syntax error in {path} line {exc.lineno}: {exc.msg}") from None
    except ValueError as exc:  # a tool that cannot be described, a bad flow file
        raise ValueError(f"--agent {spec!r}: {exc}") from None
    agent = getattr(module, name, None)
    if agent is None:
        found = [k for k, v in vars(module).items() if isinstance(v, Agent)]
        raise ValueError(f"--agent {spec!r}: {path} has no {name!r}; agents in it: {', '.join(found) or 'none'}")
    if not isinstance(agent, Agent):
        raise ValueError(f"--agent {spec!r}: {name} is a {type(agent).__name__}, not an Agent")
    return agent


def with_greeting(options: Any, agent: Agent) -> Any:
    """Turn options with the agent's greeting (if it has one)."""
    return dataclasses.replace(options, greeting=agent.greeting) if agent.greeting else options
