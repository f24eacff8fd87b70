"""Call flows for IVR: nodes, each with its own instructions and tools, moved between by tool calls.

A flow is a file a non-programmer can read and edit (TOML), checked when it is loaded:

    start = "ask_number"

    [nodes.ask_number]
    instructions = "Ask for the caller's order number, then look the order up."
    tools = ["lookup_order", "transfer_to_human"]
    next = { lookup_order = "order_found" }        # after this tool succeeds, go there

    [nodes.order_found]
    instructions = "Tell the caller what the lookup returned. Ask if there is anything else."
    tools = ["lookup_order", "end_call"]

Like pipecat-flows' nodes (role + task messages, functions whose handlers pick the next node) and
LiveKit's agent handoffs (a tool returns the next agent), a transition is decided by a tool call;
unlike them, the graph is data, so it is validated before a call starts: a transition to a missing
node, a node without instructions, an unknown tool or a syntax error is an error naming the file
and the place. A tool can also choose the next node itself by returning `{"next": "NODE"}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.toml_files import read_toml
from agent.tools import ToolBox, ToolResult


class FlowError(ValueError):
    """A flow file that cannot run; the message names the file and the node or key."""


@dataclass(frozen=True)
class Node:
    name: str
    instructions: str
    tools: tuple[str, ...] = ()
    next: dict[str, str] = field(default_factory=dict)  # tool name → node entered after it succeeds


@dataclass(frozen=True)
class Flow:
    start: str
    nodes: dict[str, Node]
    source: str = "<flow>"

    @classmethod
    def load(cls, path: str | Path, tools: ToolBox | None = None) -> Flow:
        return cls.from_dict(read_toml(path, "flow", FlowError), source=str(Path(path)), tools=tools)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<flow>", tools: ToolBox | None = None) -> Flow:
        unknown = sorted(set(data) - {"start", "nodes"})
        if unknown:
            raise FlowError(f"{source}: unknown keys {unknown}; a flow has `start` and [nodes.NAME] tables")
        raw = data.get("nodes")
        if not isinstance(raw, dict) or not raw:
            raise FlowError(f"{source}: no nodes; add a [nodes.NAME] table with `instructions`")
        nodes: dict[str, Node] = {}
        for name, spec in raw.items():
            where = f"{source}: [nodes.{name}]"
            if not isinstance(spec, dict):
                raise FlowError(f"{where} must be a table")
            extra = sorted(set(spec) - {"instructions", "tools", "next"})
            if extra:
                raise FlowError(f"{where}: unknown keys {extra}; a node has instructions, tools, next")
            text = spec.get("instructions")
            if not isinstance(text, str) or not text.strip():
                raise FlowError(f"{where} has no instructions")
            names = spec.get("tools", [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise FlowError(f"{where}: tools must be a list of tool names")
            nxt = spec.get("next", {})
            if not isinstance(nxt, dict) or not all(isinstance(v, str) for v in nxt.values()):
                raise FlowError(f"{where}: next must map tool names to node names")
            nodes[name] = Node(name, text.strip(), tuple(names), dict(nxt))
        start = data.get("start", next(iter(nodes)))
        if start not in nodes:
            raise FlowError(f"{source}: start node {start!r} does not exist; nodes: {', '.join(nodes)}")
        flow = cls(start, nodes, source)
        flow.check(tools)
        return flow

    def check(self, tools: ToolBox | None) -> None:
        """Every transition leads to a node; every tool a node names exists (when `tools` is known)."""
        for node in self.nodes.values():
            for tool, target in node.next.items():
                if target not in self.nodes:
                    raise FlowError(f"{self.source}: [nodes.{node.name}] next.{tool} goes to {target!r}, "
                                    f"which is not a node; nodes: {', '.join(self.nodes)}")
                if tool not in node.tools:
                    raise FlowError(f"{self.source}: [nodes.{node.name}] next.{tool}: the node does not offer "
                                    f"the tool {tool!r}; add it to its tools")
            if tools is not None:
                missing = [t for t in node.tools if tools.get(t) is None]
                if missing:
                    raise FlowError(f"{self.source}: [nodes.{node.name}] names unknown tools {missing}; "
                                    f"the agent has: {', '.join(tools.tools)}")


class FlowState:
    """Where one call is in its flow: the current node, its tools, and what the model is told."""

    def __init__(self, flow: Flow, tools: ToolBox) -> None:
        self.flow, self.all_tools = flow, tools
        self.node = flow.nodes[flow.start]
        self.visited: list[str] = [self.node.name]

    @property
    def tools(self) -> ToolBox:
        return ToolBox({n: self.all_tools.tools[n] for n in self.node.tools if n in self.all_tools.tools})

    def after(self, result: ToolResult) -> str | None:
        """The node to enter after `result` (the tool's own `next`, else the node's transition), or None."""
        if not result.ok:
            return None
        chosen = result.result.get("next") if isinstance(result.result, dict) else None
        target = chosen if isinstance(chosen, str) else self.node.next.get(result.call.name)
        if target is None or target not in self.flow.nodes:
            return None
        self.node = self.flow.nodes[target]
        self.visited.append(target)
        return target
