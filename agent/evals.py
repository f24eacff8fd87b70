"""`rejoinder eval FILE`: scripted calls to an agent, and what must happen in each, on the real stack.

    agent = "order_desk.py:agent"            # relative to this file
    [[scenario]]
    name = "lookup by spoken digits"
    turns = ["Hi, my order number is four seven one two.", "No, that's all. Bye."]   # text, or "x.wav"
    tool = "lookup_order"                    # must be called (with these arguments, if given)
    arguments = { order_id = "4712" }
    reply_contains = ["Friday"]              # words the caller must hear (any turn)
    reply_excludes = ["pending"]             # words the caller must not hear
    hang_up = true                           # the agent ended the call (false: it must not)
    transfer = false                         # the agent transferred the call (or not)
    no_tool = false                          # true: nothing may be called
    facts = ["shipped", "delayed"]           # said only if a tool result of this call contained them

Text turns are synthesized with the agent's voice (Piper) and streamed as a microphone would, on the
virtual clock (`converse --fast`: compute is real, idle waits are skipped), through VAD, Whisper, the
turn manager, the LLM and the tools, so what is checked is what a caller would get. A scenario file
that cannot run is an error naming the scenario and the key, before any model loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.api import Agent, load_agent
from agent.config import AgentConfig
from agent.recorded_call import RecordedCall
from agent.toml_files import read_toml

_KEYS = {"name", "turns", "tool", "arguments", "reply_contains", "reply_excludes", "hang_up", "transfer",
         "no_tool", "facts", "transfer_ok"}


@dataclass
class Scenario:
    name: str
    turns: list[str]
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    reply_contains: list[str] = field(default_factory=list)
    reply_excludes: list[str] = field(default_factory=list)
    hang_up: bool | None = None
    transfer: bool | None = None
    no_tool: bool = False
    facts: list[str] = field(default_factory=list)
    transfer_ok: bool = True  # what the far end answers to a transfer

    def check(self, doc: dict) -> list[str]:
        """What went wrong in the conversation `doc` (converse's metrics document); empty: passed."""
        turns, summary = doc["turns"], doc["summary"]
        heard = " ".join(t["heard_text"] or "" for t in turns).lower()
        calls = [c for t in turns for c in t.get("tools", [])]
        results = json.dumps([c.get("result") for c in calls], default=str).lower()
        problems = []
        if self.tool is not None:
            match = [c for c in calls if c["name"] == self.tool
                     and all(c["arguments"].get(k) == v for k, v in self.arguments.items())]
            if not match:
                made = [(c["name"], c["arguments"]) for c in calls]
                problems.append(f"expected {self.tool}({self.arguments}); called {made}")
        if self.no_tool and calls:
            problems.append(f"expected no tool call; called {[c['name'] for c in calls]}")
        problems += [f"the caller never heard {w!r}" for w in self.reply_contains if w.lower() not in heard]
        problems += [f"the caller heard {w!r}" for w in self.reply_excludes if w.lower() in heard]
        problems += [f"said {w!r}, which no tool returned" for w in self.facts if w.lower() in heard
                     and w.lower() not in results]
        call = summary.get("call", {})
        if self.hang_up is not None and bool(call.get("hung_up")) != self.hang_up:
            problems.append(f"expected hang_up={self.hang_up}, got {call.get('hung_up')!r}")
        if self.transfer is not None and bool(call.get("transfers")) != self.transfer:
            problems.append(f"expected transfer={self.transfer}, got {call.get('transfers')}")
        return problems


@dataclass
class EvalFile:
    path: Path
    agent_spec: str
    scenarios: list[Scenario]

    @classmethod
    def load(cls, path: str | Path) -> EvalFile:
        p = Path(path)
        data = read_toml(p, "eval")
        spec = data.get("agent")
        if not isinstance(spec, str) or ":" not in spec:
            raise ValueError(f"{p}: needs agent = \"FILE.py:NAME\" (relative to the eval file)")
        file, _, name = spec.rpartition(":")
        spec = f"{(p.parent / file)}:{name}"
        raw = data.get("scenario")
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"{p}: no [[scenario]] tables")
        scenarios = []
        for i, item in enumerate(raw):
            where = f"{p}: scenario {i + 1} ({item.get('name', 'unnamed')})"
            unknown = sorted(set(item) - _KEYS)
            if unknown:
                raise ValueError(f"{where}: unknown keys {unknown}; known: {', '.join(sorted(_KEYS))}")
            turns = item.get("turns")
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
                raise ValueError(f"{where}: turns must be a list of texts or WAV paths")
            scenarios.append(Scenario(**{"name": f"scenario {i + 1}", **item}))
        return cls(p, spec, scenarios)


async def run_eval(config: AgentConfig, path: str | Path, progress: Callable[[str], None] = print,
                   agent: Agent | None = None) -> dict:
    """Run every scenario of the file on one loaded stack; the JSON report."""
    import asyncio

    from agent.benches.stats import machine, summary
    from agent.converse import converse_on
    from agent.stack import load_stack
    from pipeline.audio import read_audio

    ev = EvalFile.load(path)
    agent = agent or load_agent(ev.agent_spec)
    report: dict[str, Any] = {"file": str(ev.path), "agent": ev.agent_spec, "machine": machine(), "scenarios": []}
    async with load_stack(config, progress, agent=agent) as stack:
        for sc in ev.scenarios:
            turns = []
            for t in sc.turns:
                if t.lower().endswith((".wav", ".flac", ".ogg")):
                    turns.append(read_audio(ev.path.parent / t))
                else:
                    audio = await asyncio.to_thread(stack.tts_engine.synthesize, t)
                    turns.append((audio, stack.tts_engine.sample_rate))
            doc = await converse_on(stack, turns, fast=True, call=RecordedCall(transfer_ok=sc.transfer_ok))
            problems = sc.check(doc)
            v2v = [t["timings_ms"]["voice_to_voice"] for t in doc["turns"]]
            report["scenarios"].append({
                "name": sc.name, "passed": not problems, "problems": problems,
                "heard": [(t["user_text"], t["heard_text"]) for t in doc["turns"]],
                "tools": [c for t in doc["turns"] for c in t.get("tools", [])],
                "call": doc["summary"].get("call"), "voice_to_voice_ms": summary(v2v),
                "timings_ms": [t["timings_ms"] for t in doc["turns"]],
            })
            progress(f"{'PASS' if not problems else 'FAIL'} {sc.name}" + "".join(f"\n    {p}" for p in problems))
    passed = sum(s["passed"] for s in report["scenarios"])
    report["passed"], report["n"] = passed, len(report["scenarios"])
    return report
