"""`rejoinder soak-bench`: many short calls in a row against one server; does anything pile up?

Each call is a real aiortc client that connects, says one recorded clip, waits for the agent's
reply and hangs up (the `rejoinder bench` caller). After every call, with the server idle, this
samples the server process: resident memory (RSS), threads, open file descriptors, asyncio tasks,
child processes and the live sessions. The report is the curve, and the one figure the soak is
judged by: RSS after the last call minus RSS after the warm-up calls (default: the 20th).

In-process by design: the server and the caller share this process, so the counts include the
caller's own peers — which are closed after each call, so they must come back too.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig, load_config

CLIPS = ["goforward.wav", "cards/005.wav", "librivox-0880.wav"]


def rss_mb() -> float:
    """Resident set size of this process, from /proc (what `top` shows), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the peak instead


def children() -> int:
    """Live child processes of this one (the embedded LLM server is one)."""
    me = str(os.getpid())
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            count += 1
    return count


@dataclass
class Sample:
    """The server process after one call, idle."""

    call: int
    rss_mb: float
    threads: int
    fds: int
    tasks: int
    children: int
    sessions: int
    ok: bool
    cache_mb: float = 0.0  # audio held by the stack's phrase cache (part of RSS, bounded by its cap)

    def as_dict(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def sample(call: int, sessions: int, ok: bool, cache_mb: float = 0.0) -> Sample:
    gc.collect()
    return Sample(call, rss_mb(), threading.active_count(), len(os.listdir("/proc/self/fd")),
                  len(asyncio.all_tasks()), children(), sessions, ok, cache_mb)


async def run_soak(config: AgentConfig | None = None, calls: int = 200, warmup: int = 20,
                   progress: Callable[[str], None] = print) -> dict:
    """Run `calls` calls one at a time; return the per-call samples and the summary."""
    from aiohttp import web

    from agent.benches.call import run_conversation
    from agent.benches.measure import Conversation, Step
    from agent.benches.stats import machine
    from agent.stack import load_stack
    from transport.server import PEERS, ServeOptions, make_app

    if calls < 2 or not 1 <= warmup < calls:
        raise ValueError(f"need calls >= 2 and 1 <= warmup < calls, got calls={calls}, warmup={warmup}")
    config = config or load_config()
    samples: list[Sample] = []
    t0 = time.monotonic()
    async with load_stack(config, progress) as stack:
        app = make_app(stack, ServeOptions(port=0, max_sessions=1))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        samples.append(sample(0, 0, True))
        for n in range(1, calls + 1):
            conv = Conversation("dialogue", [Step(CLIPS[n % len(CLIPS)])])
            ok = True
            try:
                result = await run_conversation(url, conv, gap_s=0.2)
                ok = bool(result["turns"]) and all(t.get("v2v_client_ms") is not None for t in result["turns"])
            except Exception as exc:  # a failed call is a finding, not the end of the soak
                progress(f"call {n} failed: {exc}")
                ok = False
            await asyncio.sleep(0.5)  # teardown of the server's side of the call
            samples.append(sample(n, len(app[PEERS]), ok, stack.cache.held_bytes / 2**20))
            if n % 10 == 0 or n == calls:
                s = samples[-1]
                progress(f"call {n}/{calls}: rss {s.rss_mb:.0f} MiB, threads {s.threads}, fds {s.fds}, "
                         f"tasks {s.tasks}, children {s.children}, phrase cache {s.cache_mb:.1f} MiB")
        await runner.cleanup()
    base, last = samples[warmup], samples[-1]
    return {
        "bench": "soak",
        "machine": machine(),
        "calls": calls,
        "warmup": warmup,
        "minutes": round((time.monotonic() - t0) / 60, 1),
        "failed_calls": sum(not s.ok for s in samples[1:]),
        "rss_growth_mb": round(last.rss_mb - base.rss_mb, 1),
        "rss_per_call_kb": round((last.rss_mb - base.rss_mb) * 1024 / (calls - warmup), 1),
        "delta_after_warmup": {k: getattr(last, k) - getattr(base, k) for k in ("threads", "fds", "tasks", "children")},
        "samples": [s.as_dict() for s in samples],
    }


def summary_lines(doc: dict) -> list[str]:
    curve = [s for s in doc["samples"] if s["call"] in (0, 1, doc["warmup"]) or s["call"] % 50 == 0
             or s["call"] == doc["calls"]]
    lines = [f"soak: {doc['calls']} calls in {doc['minutes']} min on {doc['machine']}, "
             f"{doc['failed_calls']} failed",
             f"RSS after call {doc['warmup']} → after call {doc['calls']}: {doc['rss_growth_mb']:+.1f} MiB "
             f"({doc['rss_per_call_kb']:+.1f} KiB per call); other counts {doc['delta_after_warmup']}"]
    lines += [f"  call {s['call']:>4}: rss {s['rss_mb']:>6.1f} MiB  threads {s['threads']:>3}  fds {s['fds']:>4}  "
              f"tasks {s['tasks']:>3}  children {s['children']}" for s in curve]
    return lines
