"""`rejoinder chat-bench`: does the agent answer everyday talk well, as speech, and how fast?

Short dialogues a caller might have: facts ("What's the capital of Australia?"), how-to, small
talk, and follow-ups that need an earlier turn ("My name is Sam." → "What's my name?"). Each reply is
checked deterministically: words it must contain (any of "a|b" for each), words it must not (the
wrong answer, the user's own sentence echoed), and whether it is spoken prose (no list markers,
"*", "#", backticks, emoji or URLs). The dialogues run through the real `Conversation` (the
configured system prompt, default the speech one, and PRIMER) on the configured LLM via
`OpenAICompatibleLLM.stream`, at its temperature (what a call gets), one reply at a time, each
reply kept in the history as heard. Reports correctness per kind, prose, reply length, the first
token, the decode rate (stream deltas per second after the first: llama.cpp streams one token
each), the embedded server's memory, n, the machine, and the CPU other processes took meanwhile
(a figure taken on a busy machine says so).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.benches.stats import machine, median, summary
from agent.context import Conversation
from agent.prompts import PRIMER


@dataclass(frozen=True)
class Ask:
    """One user turn and what its reply must (each `all_of` entry, alternatives split by "|") and
    must not (`none_of`) contain, case-insensitively."""

    said: str
    all_of: tuple[str, ...] = ()
    none_of: tuple[str, ...] = ()


# (kind, turns): "fact" has one right answer, "memory" needs an earlier turn, "how-to" must say
# the steps' key words, "small talk" must stay on topic and not echo the user.
DIALOGUES: list[tuple[str, list[Ask]]] = [
    ("memory", [Ask("My name is Sam.", none_of=("my name is sam",)),
                Ask("What's my name?", ("sam",), ("my name is sam",))]),
    ("memory", [Ask("I have a dog called Max.", none_of=("i have a dog called max",)),
                Ask("What's my dog's name?", ("max",))]),
    ("memory", [Ask("What's the capital of Japan?", ("tokyo",), ("kyoto",)),
                Ask("And how do you say hello in the language they speak there?",
                    ("konnichiwa|konichiwa|こんにちは",))]),
    ("memory", [Ask("I'm planning a trip to Italy next month.", none_of=("i'm planning a trip to italy",)),
                Ask("What language do they speak there?", ("italian",))]),
    ("fact", [Ask("What's the capital of Australia?", ("canberra",), ("sydney",))]),
    ("fact", [Ask("Who wrote Romeo and Juliet?", ("shakespeare",))]),
    ("fact", [Ask("How many legs does a spider have?", ("eight|8",), ("six legs",))]),
    ("fact", [Ask("What's the largest planet in our solar system?", ("jupiter",))]),
    ("fact", [Ask("At what temperature does water boil, in Celsius?", ("100|hundred",))]),
    ("fact", [Ask("How many days are there in a week?", ("seven|7",))]),
    ("fact", [Ask("What's the opposite of hot?", ("cold",))]),
    ("how-to", [Ask("How do I boil an egg?", ("water", "boil")),
                Ask("And how long for a soft one?", ("minute",))]),
    ("how-to", [Ask("How do I make a cup of tea?", ("water|kettle", "bag|leaves|steep|brew|pour"))]),
    ("how-to", [Ask("What's a good way to fall asleep faster?",
                    ("sleep|bed|screen|relax|breath|caffeine|routine|dark|read|music|meditat|calm",))]),
    ("small talk", [Ask("Hi, how are you today?", ("good|great|well|fine|doing|thank|thanks|happy",))]),
    ("small talk", [Ask("I just got back from a run.",
                        ("run|jog|workout|exercise|mile|kilomet|far|long|feel",), ("i just got back from a run",))]),
    ("small talk", [Ask("Tell me a fun fact about octopuses.", ("octop|heart|arm|tentacle|ink|brain",))]),
    ("small talk", [Ask("Thanks, that's all for now.",
                        ("welcome|bye|goodbye|care|pleasure|anytime|glad|great day|nice day",))]),
]

_LIST_MARK = re.compile(r"^\s*(?:[-•*+]|\d+[.)])\s", re.MULTILINE)
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f]")


def not_prose(reply: str) -> list[str]:
    """What makes `reply` read badly aloud: list markers, "*", "#", backticks, emoji, URLs (empty: prose)."""
    found = []
    if _LIST_MARK.search(reply):
        found.append("list")
    found += [f"'{c}'" for c in ("*", "#", "`") if c in reply]
    if _EMOJI.search(reply):
        found.append("emoji")
    if re.search(r"https?://|www\.", reply):
        found.append("url")
    return found


def check(ask: Ask, reply: str) -> list[str]:
    """Why `reply` misses `ask` (empty: it is right): each required word absent, each forbidden present."""
    text = reply.lower()
    missing = [f"lacks {want!r}" for want in ask.all_of if not any(w in text for w in want.split("|"))]
    return missing + [f"says {bad!r}" for bad in ask.none_of if bad in text]


def words(reply: str) -> int:
    return len(reply.split())


async def run_chat_bench(llm: Any, system_prompt: str, repeat: int = 1, progress: Callable[[str], None] = print,
                         dialogues: list[tuple[str, list[Ask]]] | None = None) -> dict:
    """Every dialogue `repeat` times, each in a fresh `Conversation`; the JSON document."""
    dialogues = DIALOGUES if dialogues is None else dialogues
    rows: list[dict[str, Any]] = []
    for run in range(repeat):
        for number, (kind, asks) in enumerate(dialogues):
            conversation = Conversation(system_prompt, PRIMER)
            for turn, ask in enumerate(asks):
                conversation.add_user(ask.said)
                t0 = time.perf_counter()
                stamps: list[float] = []
                reply = ""
                try:
                    async for delta in llm.stream(conversation.for_llm()):
                        if isinstance(delta, str):
                            stamps.append(time.perf_counter())
                            reply += delta
                    error = None
                except Exception as exc:  # a failed reply counts as wrong, and is shown
                    error = f"{type(exc).__name__}: {exc}"
                reply = reply.strip()
                conversation.add_agent(reply, interrupted=False)  # heard in full
                wrong = check(ask, reply) if error is None else [error]
                unspoken = not_prose(reply)
                decode_s = stamps[-1] - stamps[0] if len(stamps) > 1 else None
                rows.append({
                    "run": run, "dialogue": number, "turn": turn, "kind": kind, "said": ask.said, "reply": reply,
                    "ok": not wrong, "why": wrong, "prose": not unspoken, "not_prose": unspoken,
                    "words": words(reply),
                    "first_token_ms": round((stamps[0] - t0) * 1000, 1) if stamps else None,
                    "decode_tokens": len(stamps) - 1 if stamps else 0,
                    "decode_s": round(decode_s, 3) if decode_s else None,
                })
                progress(f"[{run}.{number}.{turn}] {'ok ' if not wrong else 'BAD'} {ask.said!r} -> {reply!r}"
                         + (f"  ({'; '.join(wrong + unspoken)})" if wrong or unspoken else ""))
    return report(rows, repeat, len(dialogues))


def report(rows: list[dict[str, Any]], repeat: int, dialogues: int) -> dict:
    """The figures of `rows` (one per reply): right per kind, prose, words, first token, decode rate."""
    def share(items: list[dict[str, Any]], key: str) -> dict:
        good = sum(1 for r in items if r[key])
        return {"right": good, "n": len(items), "rate": round(good / len(items), 3) if items else None}

    kinds = dict.fromkeys(r["kind"] for r in rows)
    rates = [r["decode_tokens"] / r["decode_s"] for r in rows if r["decode_s"]]
    tokens = sum(r["decode_tokens"] for r in rows if r["decode_s"])
    seconds = sum(r["decode_s"] for r in rows if r["decode_s"])
    return {
        "machine": machine(), "n": len(rows), "repeat": repeat, "dialogues": dialogues,
        "correct": share(rows, "ok"),
        "by_kind": {k: share([r for r in rows if r["kind"] == k], "ok") for k in kinds},
        "prose": share(rows, "prose"),
        "words": {"median": median([r["words"] for r in rows]),
                  **summary([r["words"] for r in rows], ("p95", "max"))},
        "first_token_ms": summary([r["first_token_ms"] for r in rows]),
        "decode_tokens_per_s": {"overall": round(tokens / seconds, 1) if seconds else None,
                                "p50": median(rates)},
        "rows": rows,
    }


def rss_mb(pid: int | None) -> dict | None:
    """Resident memory of process `pid` now and at its peak (MiB, from /proc), or None."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    kib = lambda name: int(fields[name].split()[0]) if name in fields else None  # noqa: E731
    now, peak = kib("VmRSS"), kib("VmHWM")
    return {"rss_mib": round(now / 1024) if now else None, "peak_mib": round(peak / 1024) if peak else None}


def _cpu_s(pid: int | str = "self") -> float:
    """CPU seconds (user + system) process `pid` has used so far; 0 if it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    """CPU seconds all cores have been busy since boot (/proc/stat), or 0."""
    try:
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in cpu[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def summary_lines(doc: dict) -> list[str]:
    m, c, p = doc["machine"], doc["correct"], doc["prose"]
    ft, rate = doc["first_token_ms"], doc["decode_tokens_per_s"]
    mem = (doc.get("server") or {}).get("memory") or {}
    kinds = ", ".join(f"{k} {v['right']}/{v['n']}" for k, v in doc["by_kind"].items())
    return [
        f"conversation on {doc['n']} replies ({doc['repeat']} x {doc['dialogues']} dialogues), "
        f"{doc.get('model', '?')} ({m['cores']} cores, {m['cpu_model']}):",
        f"  right {c['right']}/{c['n']} ({c['rate']:.0%}): {kinds}",
        f"  spoken prose {p['right']}/{p['n']}; words per reply median {doc['words']['median']}, "
        f"p95 {doc['words']['p95']}",
        f"  first token p50 {ft['p50']} ms, p95 {ft['p95']} ms; decode {rate['overall']} tokens/s"
        + (f"; server RSS {mem.get('rss_mib')} MiB (peak {mem.get('peak_mib')})" if mem else ""),
        *([f"  other processes used {doc['cpu']['others_cores']} cores on average meanwhile"] if "cpu" in doc else []),
    ]


async def main(config: Any, repeat: int = 1, progress: Callable[[str], None] = print) -> dict:
    from agent.stack import load_stack

    async with load_stack(config, progress) as stack:
        await asyncio.sleep(0)
        pid = stack.llm_supervisor.health().get("pid") if stack.llm_supervisor is not None else None
        # the CPU others used meanwhile: a figure measured on a busy machine says so
        t0, busy0, ours0 = time.perf_counter(), _busy_s(), _cpu_s() + (_cpu_s(pid) if pid else 0.0)
        doc = await run_chat_bench(stack.llm, config.system_prompt, repeat, progress)
        wall, ours = time.perf_counter() - t0, _cpu_s() + (_cpu_s(pid) if pid else 0.0) - ours0
        doc["cpu"] = {"wall_s": round(wall, 1), "bench_and_server_cpu_s": round(ours, 1),
                      "others_cores": round(max(0.0, _busy_s() - busy0 - ours) / wall, 2)}
        embedded = not config.llm.base_url
        doc["model"] = config.embedded_llm.model if embedded else f"{config.llm.model} at {config.llm.base_url}"
        doc["server"] = {"embedded": embedded, "threads": config.embedded_llm.threads if embedded else None,
                         "slots": config.embedded_llm.slots if embedded else None,
                         "temperature": config.llm.temperature, "memory": rss_mb(pid)}
        return {k: doc[k] for k in ("model", "server", *[k for k in doc if k not in ("model", "server")])}
