"""`rejoinder tts-bench`: time to first audio, real-time factor, cadence, cancellation and cache,
measured on a fixed set of inputs, idle and again while another process keeps the cores busy.

Every figure comes from the TTS's own per-request `TTSMetrics`, except the task-cancellation time,
which is measured from outside (task.cancel() → the consumer's task has ended). Uncached inputs run
with the phrase cache off, so each repetition synthesizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from multiprocessing.process import BaseProcess

from agent.benches.stats import machine, summary
from tts.cache import PhraseCache
from tts.chunks import TTSMetrics
from tts.stream import StreamingTTS

FIRST_PHRASES = [  # first phrases of up to six words, as the splitter hands them over
    "Sure, I can help with that.",
    "Hello! How are you today?",
    "Okay, let me check that.",
    "Good morning, welcome back.",
    "Yes, that works for me.",
    "Let me look that up.",
]
MEDIUM = "Your appointment with Doctor Patel is confirmed for Tuesday at ten thirty in the morning."
LONG = (
    "The weather tomorrow looks mostly sunny with a light breeze from the west, a high of seventy two "
    "degrees in the afternoon, and a small chance of showers after sunset, so you may want to bring "
    "a light jacket if you plan to stay out late."
)
CACHED = "Thanks for calling. How can I help you today?"
REPLY = (
    "Sure, I can help with that. Your order shipped yesterday and should arrive on Thursday between "
    "nine and noon. If you are not home, the driver will leave it at the front desk. Is there anything "
    "else I can help you with today?"
)
TARGETS = {
    "idle": {"first_phrase_ttfa_p50_ms": 50, "rtf_p50": 0.1, "cancellation_p95_ms": 20, "cached_ttfa_p50_ms": 5},
    "loaded": {"first_phrase_ttfa_p50_ms": 150},
}


def _stats(xs: Sequence[float | None]) -> dict:
    """p50 / p95 of the measured values (None: not measured, e.g. no synthesis in the request), to
    3 digits (real-time factors are well under 1), and how many were measured."""
    return summary(xs, ("p50", "p95", "n"), digits=3)


def _metrics(tts: StreamingTTS) -> TTSMetrics:
    """The metrics of the request that just ended (every request sets `last_metrics` when it starts)."""
    m = tts.last_metrics
    assert m is not None, "no TTS request has run"
    return m


async def _one_phrase(tts: StreamingTTS, text: str) -> TTSMetrics:
    async def src() -> AsyncIterator[str]:
        yield text

    async with contextlib.aclosing(tts.stream_phrases(src())) as chunks:
        async for _ in chunks:
            pass
    return _metrics(tts)


async def _tokens(text: str, rate: float) -> AsyncIterator[str]:
    """A reply as an LLM streams it: word-piece tokens at `rate` tokens/s."""
    pieces = []
    for word in text.split(" "):
        while len(word) > 4:  # ~4 characters a token, like a BPE vocabulary on English
            pieces.append(word[:4])
            word = word[4:]
        pieces.append(word + " ")
    for p in pieces:
        await asyncio.sleep(1 / rate)
        yield p


async def run_suite(tts: StreamingTTS, reps: int, log: Callable[[str], None]) -> dict:
    chunk_ms = tts.chunk_samples * 1000 // tts.engine.sample_rate
    nocache = StreamingTTS(tts.engine, cache=PhraseCache(max_samples=0), chunk_ms=chunk_ms)
    res: dict[str, dict] = {}
    first: list[float | None] = []
    rtf: list[float | None] = []
    for _ in range(reps):
        for text in FIRST_PHRASES:
            m = await _one_phrase(nocache, text)
            first.append(m.ttfa_ms)
    res["first_phrase"] = {"ttfa_ms": _stats(first)}
    log(f"    first phrase (≤6 words) TTFA p50 {res['first_phrase']['ttfa_ms']['p50']} ms")
    for name, text in (("medium", MEDIUM), ("long", LONG)):
        ttfa: list[float | None] = []
        gap_max: list[float] = []
        under: list[float] = []
        for _ in range(reps):
            # full text in, as `speak` takes it: the splitter cuts the first phrase short
            async with contextlib.aclosing(nocache.speak(text)) as chunks:
                async for _c in chunks:
                    pass
            m = _metrics(nocache)
            ttfa.append(m.ttfa_ms)
            rtf.append(m.rtf)
            gap_max.append(max(m.chunk_gaps_ms))
            under.append(m.underrun_ms)
        res[name] = {"ttfa_ms": _stats(ttfa), "rtf": _stats(rtf[-reps:]),
                     "max_chunk_gap_ms": _stats(gap_max), "underrun_ms": _stats(under)}
        log(f"    {name}: TTFA p50 {res[name]['ttfa_ms']['p50']} ms, RTF p50 {res[name]['rtf']['p50']}, "
            f"max gap p50 {res[name]['max_chunk_gap_ms']['p50']} ms")
    res["rtf_all"] = _stats(rtf)
    # cached: one priming request, then repeats that must not synthesize
    await _one_phrase(tts, CACHED)
    cached: list[float | None] = []
    for _ in range(max(5, reps * 2)):
        m = await _one_phrase(tts, CACHED)
        assert m.cache_hits == 1, "the cached phrase missed the cache"
        cached.append(m.ttfa_ms)
    res["cached"] = {"ttfa_ms": _stats(cached)}
    log(f"    cached TTFA p50 {res['cached']['ttfa_ms']['p50']} ms")
    # a reply streamed token by token at ~30 tokens/s
    ttfa, under = [], []
    first_tok: list[float] = []
    gaps: list[float] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        first_audio = None
        async with contextlib.aclosing(nocache.stream_text(_tokens(REPLY, 30.0))) as chunks:
            async for c in chunks:
                if first_audio is None and c.samples.size:
                    first_audio = time.perf_counter()
        m = _metrics(nocache)
        assert first_audio is not None, "the streamed reply produced no audio"
        ttfa.append(m.ttfa_ms)
        first_tok.append((first_audio - t0) * 1000 - 1000 / 30)  # from the first token's arrival
        under.append(m.underrun_ms)
        gaps.append(max(m.chunk_gaps_ms))
    res["streamed_reply"] = {"ttfa_ms": _stats(ttfa), "first_token_to_audio_ms": _stats(first_tok),
                             "underrun_ms": _stats(under), "max_chunk_gap_ms": _stats(gaps)}
    log(f"    streamed reply @30 tok/s: TTFA p50 {res['streamed_reply']['ttfa_ms']['p50']} ms, "
        f"first token → audio p50 {res['streamed_reply']['first_token_to_audio_ms']['p50']} ms")
    res["cancellation"] = await _cancellations(nocache, reps)
    canc = res["cancellation"]
    log(f"    cancel(): p50 {canc['cancel_call_ms']['p50']} / p95 {canc['cancel_call_ms']['p95']} ms; "
        f"task cancel: p50 {canc['task_cancel_ms']['p50']} / p95 {canc['task_cancel_ms']['p95']} ms; "
        f"stale chunks {canc['stale_chunks']}")
    return res


async def _cancellations(tts: StreamingTTS, reps: int) -> dict:
    """Cancel a reply mid-way, while it is being synthesized and played ~0.6 s ahead in real time:
    by `cancel(request_id)` (latency from the TTS's metrics) and by cancelling the consumer's task
    (latency measured outside). Any chunk arriving after the cancel is counted as stale."""
    rng = random.Random(7)
    by_call: list[float | None] = []
    by_task: list[float] = []
    stale = 0
    for i in range(max(10, reps * 3)):
        rid = tts.new_request_id()
        got_after = 0
        cancelled_at: list[float] = []
        start = time.perf_counter()
        at = rng.uniform(0.15, 0.9)  # seconds into the reply

        async def consume(rid: str, start: float, cancelled_at: list[float]) -> None:
            nonlocal got_after
            played = 0.0
            async with contextlib.aclosing(tts.speak(LONG, rid)) as chunks:
                async for c in chunks:
                    if cancelled_at:
                        got_after += 1
                    played += c.duration
                    ahead = played - (time.perf_counter() - start) - 0.6  # a playout buffer of 0.6 s
                    if ahead > 0:
                        await asyncio.sleep(ahead)

        use_call = i % 2 == 0
        task = asyncio.create_task(consume(rid, start, cancelled_at))
        await asyncio.sleep(at)
        cancelled_at.append(time.perf_counter())
        if use_call:
            tts.cancel(rid)
            await task
            m = _metrics(tts)
            by_call.append(m.cancellation_latency_ms)
        else:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            by_task.append((time.perf_counter() - cancelled_at[0]) * 1000)
        stale += got_after
        await asyncio.sleep(0.05)  # let the abandoned window finish before the next request
    return {"cancel_call_ms": _stats(by_call), "task_cancel_ms": _stats(by_task), "stale_chunks": stale}


# --- load -----------------------------------------------------------------------------------------
def _burn() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def _llm_load(ready) -> None:
    """A child process: the embedded LLM (1 thread, as configured for 2 cores) decoding long replies
    in a loop, plus one CPU burner so that both cores are busy."""
    from agent.llm import LLMOptions, OpenAICompatibleLLM
    from agent.llm_server import EmbeddedLLMServer

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with EmbeddedLLMServer(n_threads=1) as server:
            llm = OpenAICompatibleLLM(LLMOptions(max_tokens=400), base_url=server.base_url)
            msgs = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper and the sea."}]
            ready.set()

            async def loop():
                while True:
                    async with contextlib.aclosing(llm.stream(msgs)) as s:
                        async for _ in s:
                            pass

            t = asyncio.create_task(loop())
            await stop.wait()
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    asyncio.run(main())


class Load:
    """Keeps both cores busy: `llm` (the embedded LLM decoding with 1 thread + one busy loop) or
    `burn` (two busy loops)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.procs: list[BaseProcess] = []

    def __enter__(self) -> Load:
        ctx = multiprocessing.get_context("spawn")
        if self.kind == "llm":
            ready = ctx.Event()
            p = ctx.Process(target=_llm_load, args=(ready,), daemon=True)
            p.start()
            self.procs.append(p)
            if not ready.wait(180):
                self.__exit__()
                raise RuntimeError("the embedded LLM did not start within 180 s; try --load burn")
            time.sleep(2.0)  # let it get into steady decoding
            n_burn = 1
        else:
            n_burn = 2
        for _ in range(n_burn):
            p = ctx.Process(target=_burn, daemon=True)
            p.start()
            self.procs.append(p)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(15)
            if p.is_alive():
                p.kill()
                p.join(5)


async def bench(engine_factory: Callable, reps: int = 5, load: str = "llm", log: Callable[[str], None] = print) -> dict:
    engine = engine_factory()
    tts = StreamingTTS(engine)
    doc = {"machine": machine(), "voice": engine.voice_id, "threads": getattr(engine, "threads", None),
           "streaming_engine": getattr(engine, "streaming", False), "reps": reps, "targets": TARGETS}
    log(f"idle ({doc['machine']['cores']} cores, {doc['machine']['cpu_model']})")
    doc["idle"] = await run_suite(tts, reps, log)
    if load != "none":
        log(f"loaded ({'embedded LLM decoding, 1 thread, + 1 busy loop' if load == 'llm' else '2 busy loops'})")
        with Load(load):
            tts.cache = PhraseCache()
            doc["loaded"] = await run_suite(tts, reps, log)
        doc["load"] = load
    doc["verdict"] = verdict(doc)
    return doc


def verdict(doc: dict) -> dict:
    idle = doc["idle"]
    out = {
        "idle_first_phrase_ttfa_p50_ms": [idle["first_phrase"]["ttfa_ms"]["p50"], 50],
        "idle_rtf_p50": [idle["rtf_all"]["p50"], 0.1],
        "idle_cancellation_p95_ms": [max(x for x in (idle["cancellation"]["cancel_call_ms"]["p95"],
                                                     idle["cancellation"]["task_cancel_ms"]["p95"])
                                         if x is not None), 20],
        "idle_cached_ttfa_p50_ms": [idle["cached"]["ttfa_ms"]["p50"], 5],
    }
    if "loaded" in doc:
        out["loaded_first_phrase_ttfa_p50_ms"] = [doc["loaded"]["first_phrase"]["ttfa_ms"]["p50"], 150]
    return {k: {"measured": v, "target": t, "met": v is not None and v <= t} for k, (v, t) in out.items()}


def summary_lines(doc: dict) -> list[str]:
    lines = [f"machine: {doc['machine']['cores']} cores, {doc['machine']['cpu_model']}; voice {doc['voice']}, "
             f"{doc['threads']} ONNX thread(s), streaming engine {doc['streaming_engine']}"]
    for k, v in doc["verdict"].items():
        lines.append(f"  {k:36s} {v['measured']!s:>8}  (target ≤ {v['target']})  {'ok' if v['met'] else 'MISSED'}")
    return lines
