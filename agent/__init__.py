"""The conversation: turn manager, context, LLM adapters, configuration and the `rejoinder` CLI.

`from agent import Agent, serve, Digits, Call, transfer_to` is the Python API (agent/api.py)."""

from __future__ import annotations

from typing import Any

_API = {"Agent": "agent.api", "load_agent": "agent.api", "Digits": "agent.tools", "Call": "agent.tools",
        "Tool": "agent.tools", "tool": "agent.tools", "transfer_to": "agent.calltools",
        "send_dtmf": "agent.calltools", "end_call": "agent.calltools", "serve": "agent.run"}


def __getattr__(name: str) -> Any:  # imported on first use: `import agent.x` stays cheap
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
