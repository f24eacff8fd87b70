"""`rejoinder tools-bench`: does the agent choose the right action, with the right arguments?

Caller requests as speech recognition writes them (digits in words or figures, fillers, no
punctuation), each with the action it must lead to: a tool and its arguments, or a plain answer
(questions that must NOT call a tool). Run against the order desk's tools on the configured LLM, in
each decision mode side by side, one request at a time, at the configured temperature (what a call
gets). Prints accuracy with n and the time to the first output: the answer's first token, or for a
call the moment its tool is named (the filler starts there, while the arguments are decoded).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from agent.benches.stats import machine, summary
from agent.calltools import END_CALL, transfer_to
from agent.decide import Calling, decide, digit_tools
from agent.prompts import SPEECH_STYLE
from agent.tools import Digits, ToolBox, ToolCall

ANSWER = None  # the expected action "answer in prose, call nothing"

# (what the caller said, expected tool or ANSWER, expected arguments)
REQUESTS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("hi where is my order the number is four seven one two", "lookup_order", {"order_id": "4712"}),
    ("my order 88231 hasn't arrived yet", "lookup_order", {"order_id": "88231"}),
    ("can you check order five five oh one nine", "lookup_order", {"order_id": "55019"}),
    ("order number three double oh seven seven please", "lookup_order", {"order_id": "30077"}),
    ("um yeah it's 4 7 1 2", "lookup_order", {"order_id": "4712"}),
    ("i'd like to know when order eight eight two three one will be delivered", "lookup_order",
     {"order_id": "88231"}),
    ("status of 55019", "lookup_order", {"order_id": "55019"}),
    ("the order is nine nine nine nine one", "lookup_order", {"order_id": "99991"}),
    ("can i talk to a real person please", "transfer_to_human", {}),
    ("get me a human", "transfer_to_human", {}),
    ("i want to speak to an agent", "transfer_to_human", {}),
    ("operator", "transfer_to_human", {}),
    ("this is useless put me through to someone", "transfer_to_human", {}),
    ("that's all thanks bye", "end_call", {}),
    ("okay thank you goodbye", "end_call", {}),
    ("no that's everything have a nice day", "end_call", {}),
    ("what are your opening hours", ANSWER, {}),
    ("what's the capital of australia", ANSWER, {}),
    ("hello", ANSWER, {}),
    ("how do i find my order number", ANSWER, {}),
    ("do you sell bike helmets", ANSWER, {}),
    ("where is my order", ANSWER, {}),
    ("can you hear me", ANSWER, {}),
    ("my name is sam", ANSWER, {}),
]

# Written after the cue words and the guard were fixed, and never used to change them: the figure
# to trust is this set's (`--set heldout`).
HELDOUT: list[tuple[str, str | None, dict[str, Any]]] = [
    ("yes hello i'm calling about order two two one nine zero", "lookup_order", {"order_id": "22190"}),
    ("could you tell me what's happening with seven seven three one", "lookup_order", {"order_id": "7731"}),
    ("it's order 6 0 4 4 8", "lookup_order", {"order_id": "60448"}),
    ("number one oh oh two", "lookup_order", {"order_id": "1002"}),
    ("i need to check on nine one three three please", "lookup_order", {"order_id": "9133"}),
    ("i'd rather talk to somebody", "transfer_to_human", {}),
    ("can you connect me with customer service", "transfer_to_human", {}),
    ("representative please", "transfer_to_human", {}),
    ("alright that's it for today cheers", "end_call", {}),
    ("great thanks bye bye", "end_call", {}),
    ("what's your address", ANSWER, {}),
    ("do you repair electric bikes", ANSWER, {}),
    ("sorry what did you say", ANSWER, {}),
    ("is it going to rain today", ANSWER, {}),
    ("how long does delivery usually take", ANSWER, {}),
    ("i think my order is late", ANSWER, {}),
]

INSTRUCTIONS = ("You answer the phone for the order desk of Spoke and Chain, a bike shop. You help callers "
                "with the status of their orders. Ask for the order number if you need it.")


def order_tools() -> ToolBox:
    def lookup_order(order_id: Digits) -> dict:
        """Look up the status and delivery date of an order by its order number.

        Args:
            order_id: the order number, digits only
        """
        return {}

    return ToolBox.of([lookup_order, transfer_to("sip:orders@example"), END_CALL])


async def run_tools_bench(llm: Any, modes: list[str], progress: Callable[[str], None] = print,
                          which: str = "dev") -> dict:
    """`modes`: grammar | native, each optionally -noguard; "plain" is the agent with no tools (the
    baseline of the first token when nothing is called). `which`: the dev set, or the held-out one."""
    from agent.decide import tools_prompt

    requests = HELDOUT if which == "heldout" else REQUESTS
    doc: dict[str, Any] = {"machine": machine(), "n": len(requests), "set": which, "modes": {}}
    for mode in modes:
        guard = not mode.endswith("-noguard")
        kind = mode.removesuffix("-noguard")
        box = ToolBox() if kind == "plain" else order_tools()
        system = f"{INSTRUCTIONS}\n{SPEECH_STYLE}" + (tools_prompt(box, kind) if box else "")  # type: ignore[arg-type]
        rows: list[dict[str, Any]] = []
        latency: list[float | None] = []
        for text, tool, args in requests:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
            only = digit_tools(box, messages) if guard else None
            t0 = time.perf_counter()
            first: float | None = None
            got: str | ToolCall = ""
            try:
                async for item in decide(llm, messages, box, "grammar" if kind == "plain" else kind,  # type: ignore[arg-type]
                                         only=only):
                    if first is None:
                        first = time.perf_counter() - t0
                    if isinstance(item, ToolCall):
                        got = item
                        break
                    if isinstance(item, Calling):  # the filler starts here: the first thing heard
                        continue
                    got = str(got) + item
            except Exception as exc:  # a malformed native call counts as a miss, and is shown
                got = f"<error: {exc}>"
            ok = (isinstance(got, ToolCall) and got.name == tool and got.arguments == args) if tool else \
                not isinstance(got, ToolCall) and not str(got).lstrip().startswith("{")
            decided = first * 1000 if first is not None else None
            latency.append(decided)
            rows.append({"said": text, "expected": tool or "answer", "ok": ok,
                         "got": got.__dict__ if isinstance(got, ToolCall) else str(got)[:120],
                         "decision_ms": round(decided, 1) if decided is not None else None})
            progress(f"[{mode}] {'ok ' if ok else 'BAD'} {text!r} -> {rows[-1]['got']}")
        correct = sum(1 for r in rows if r["ok"])
        answers = [r["decision_ms"] for r in rows if r["expected"] == "answer"]
        doc["modes"][mode] = {"accuracy": round(correct / len(rows), 3), "answer_first_token_ms": summary(answers),
                              "correct": correct, "decision_ms": summary(latency),
                              "rows": rows}
    return doc


def summary_lines(doc: dict) -> list[str]:
    m = doc["machine"]
    lines = [f"tool decisions on {doc['n']} caller requests, {doc['set']} set ({m['cores']} cores, "
             f"{m['cpu_model']}):"]
    for mode, r in doc["modes"].items():
        d = r["decision_ms"]
        a = r["answer_first_token_ms"]
        lines.append(f"  {mode:16s} {r['correct']}/{doc['n']} right ({r['accuracy']:.0%}); first output "
                     f"p50 {d.get('p50')} ms, p95 {d.get('p95')} ms; when answering (n={a.get('n')}): "
                     f"first token p50 {a.get('p50')} ms")
    return lines


async def main(config: Any, modes: list[str], progress: Callable[[str], None] = print, which: str = "dev") -> dict:
    from agent.stack import load_stack

    async with load_stack(config, progress) as stack:
        await asyncio.sleep(0)
        return await run_tools_bench(stack.llm, modes, progress, which)
