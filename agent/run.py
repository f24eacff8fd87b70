"""Run an `Agent` from its own file: `serve(agent)` is `rejoinder serve --agent THIS_FILE:agent`.

Kept apart from agent/api.py so that describing an agent imports nothing of the app (the CLI
imports the stack, which imports the agent's description: the other way round would be a cycle).
"""

from __future__ import annotations

import sys

from agent.api import Agent


def serve(agent: Agent, *args: str) -> None:
    """`rejoinder serve` (or `converse ...`, `talk ...` when `args` starts with that command) with `agent`.
    Arguments default to this program's own command line, so `python my_agent.py --port 8081` works."""
    from agent.cli import main

    argv = list(args) if args else sys.argv[1:]
    if not argv or argv[0] not in ("serve", "converse", "talk"):
        argv = ["serve", *argv]
    main(argv, obj={"agent": agent})
