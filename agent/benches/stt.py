"""Listening on the clock: play audio through the VAD and the streaming transcriber, and measure it.

`stream_audio` is the harness shared by `rejoinder transcribe --stream`, `rejoinder stt-bench` and
the tests: frames are delivered when they are complete (as a microphone does), on a real or virtual
clock. The virtual clock skips only idle waiting; every engine pass runs inside `clock.working()`,
so its real compute time is charged to media time and the latency figures keep their meaning.

Word error rate uses one normalization for reference and hypothesis: lower case, no punctuation,
hyphens as spaces, numbers as words ("10" → "ten"), spoken forms of titles ("Mr." → "mister").
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.benches.stats import machine, summary
from pipeline.audio import STT_RATE, frames_from_array, read_audio
from pipeline.clock import Clock, VirtualClock
from pipeline.events import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted, Transcript, VADEvent
from stt.transcriber import Engine, StreamingTranscriber, TranscriberOptions
from stt.vad import VAD, SileroVAD, VADOptions, VADSegmenter

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"

# --- word error rate ------------------------------------------------------------------------------

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_TITLES = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "ms": "miss", "jr": "junior"}


def number_words(n: int) -> str:
    """English words for a non-negative integer ("105" → "one hundred five")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for size, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= size:
            rest = n % size
            return number_words(n // size) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def normalize(text: str) -> list[str]:
    """Words for WER: lower case, hyphens as spaces, numbers and titles spelled out, no punctuation."""
    t = text.lower().replace("-", " ").replace("\u2014", " ").replace("\u2019", "'")
    t = re.sub(r"(?<=\d),(?=\d{3})", "", t)
    t = re.sub(r"\d+", lambda m: " " + number_words(int(m.group())) + " ", t)
    t = re.sub(r"[^a-z' ]", " ", t).replace("'", "")
    return [_TITLES.get(w, w) for w in t.split()]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(ref: str, hyp: str) -> float:
    r = normalize(ref)
    return edit_distance(r, normalize(hyp)) / max(1, len(r))


# --- the shared clips -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    name: str
    group: str  # librivox | cmu
    audio: np.ndarray
    rate: int
    reference: str


def load_clips(data: Path = DATA) -> list[Clip]:
    """The recordings in tests/data with their transcripts (see tests/data/SOURCES.md)."""
    clips = []
    for n in ("0870", "0880", "0920"):
        audio, rate = read_audio(data / f"librivox-{n}.wav")
        clips.append(Clip(f"librivox-{n}", "librivox", audio, rate, (data / f"librivox-{n}.txt").read_text().strip()))
    audio, rate = read_audio(data / "goforward.wav")
    clips.append(Clip("goforward", "cmu", audio, rate, (data / "goforward.txt").read_text().strip()))
    for line in (data / "cards" / "cards.transcription").read_text().splitlines():
        m = re.match(r"<s>(.*)</s>\s*\((\d+)\)", line.strip())
        if m:
            audio, rate = read_audio(data / "cards" / f"{m.group(2)}.wav")
            clips.append(Clip(f"cards-{m.group(2)}", "cmu", audio, rate, m.group(1).strip()))
    return clips


def room(seconds: float, rate: int = STT_RATE, seed: int = 0) -> np.ndarray:
    """A quiet room: white noise at -70 dBFS (a real microphone is never digitally silent)."""
    n = int(seconds * rate)
    return (np.random.default_rng(seed).standard_normal(n) * 10 ** (-70 / 20)).astype(np.float32)


# --- the harness ----------------------------------------------------------------------------------


@dataclass
class StreamRun:
    """What one stream produced: VAD events, every transcript, and each final with its endpoint."""

    events: list[VADEvent] = field(default_factory=list)
    transcripts: list[Transcript] = field(default_factory=list)
    finals: list[tuple[SpeechEnded, Transcript]] = field(default_factory=list)
    max_buffered_samples: int = 0
    transcriber: StreamingTranscriber | None = None

    @property
    def text(self) -> str:
        return " ".join(t.text for _, t in self.finals if t.text)


async def stream_audio(
    engine: Engine,
    samples: np.ndarray,
    rate: int,
    clock: Clock,
    options: TranscriberOptions | None = None,
    vad_options: VADOptions | None = None,
    vad: VAD | None = None,
    frame_ms: int = 20,
    on_event: Callable[[VADEvent | Transcript], None] | None = None,
) -> StreamRun:
    """Play `samples` (mono or (n, channels)) in frames on `clock` through VAD + streaming transcriber."""
    run = StreamRun()
    emit = on_event or (lambda e: None)

    def got(t: Transcript) -> None:
        run.transcripts.append(t)
        emit(t)

    seg = VADSegmenter(vad_options or VADOptions(), vad if vad is not None else SileroVAD())
    tr = run.transcriber = StreamingTranscriber(engine, clock, options, on_transcript=got)
    finals: list[tuple[SpeechEnded, asyncio.Task]] = []

    def handle(events: list[VADEvent]) -> None:
        for e in events:
            run.events.append(e)
            emit(e)
            task = tr.handle(e)
            if task is not None:
                finals.append((e, task))  # type: ignore[arg-type]

    t0 = clock.now()
    try:
        for frame in frames_from_array(samples, rate, t0, frame_ms):
            await clock.sleep_until(frame.end)  # a microphone hands over a frame once it is complete
            handle(seg.process(frame))
            tr.update(frame.end, seg.utterance_audio)
            run.max_buffered_samples = max(run.max_buffered_samples, seg.buffered_samples)
        handle(seg.flush(clock.now()))
        for ended, task in finals:
            run.finals.append((ended, await task))
    finally:
        await tr.aclose()
    return run


def event_json(e: VADEvent | Transcript, t0: float = 0.0) -> dict:
    """One line of `transcribe --stream --json` output; times are seconds from the start of the file."""
    r = lambda t: round(t - t0, 3)  # noqa: E731
    if isinstance(e, Transcript):
        return {"type": "transcript", "final": e.final, "text": e.text, "at": r(e.at), "audio_end": r(e.audio_end)}
    if isinstance(e, SpeechStarted):
        return {"type": "speech_started", "at": r(e.at)}
    if isinstance(e, SpeechPaused):
        return {"type": "speech_paused", "last_voiced": r(e.last_voiced)}
    if isinstance(e, SpeechResumed):
        return {"type": "speech_resumed", "at": r(e.at)}
    return {"type": "speech_ended", "started": r(e.started), "last_voiced": r(e.last_voiced),
            "decided_at": r(e.decided_at)}


async def stream_file(engine: Engine, path: Path, clock: Clock, emit: Callable[[dict], None],
                      vad_options: VADOptions | None = None, options: TranscriberOptions | None = None) -> StreamRun:
    """`rejoinder transcribe --stream`: the file as a microphone, then enough silence for an endpoint."""
    audio, rate = read_audio(path)
    vo = vad_options or VADOptions()
    tail = np.zeros(int((vo.hangover_ms / 1000 + 0.3) * rate), np.float32)
    t0 = clock.now()
    return await stream_audio(engine, np.concatenate([audio, tail]), rate, clock, options, vo,
                              on_event=lambda e: emit(event_json(e, t0)))


# --- the benchmark --------------------------------------------------------------------------------


async def bench_engine(engine: Engine, clips: list[Clip], repeat: int = 3,
                       options: TranscriberOptions | None = None, vad_options: VADOptions | None = None,
                       progress: Callable[[str], None] = lambda s: None) -> dict:
    """Every clip (0.5 s of room noise before, 1 s after) played `repeat` times on a virtual clock."""
    vo = vad_options or VADOptions()
    vad = SileroVAD()
    engine.transcribe(clips[0].audio)  # warm-up, not measured
    after_decision: list[float] = []
    after_voiced: list[float] = []
    edits = {"librivox": 0, "cmu": 0}
    words = {"librivox": 0, "cmu": 0}
    per_clip = []
    audio_s = 0.0
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for k in range(repeat):
        for clip in clips:
            x = np.concatenate([room(0.5, clip.rate, 1), clip.audio, room(1.0, clip.rate, 2)])
            audio_s += len(x) / clip.rate
            run = await stream_audio(engine, x, clip.rate, VirtualClock(), options, vo, vad=vad)
            for ended, final in run.finals:
                after_decision.append((final.at - ended.decided_at) * 1000)
                after_voiced.append((final.at - ended.last_voiced) * 1000)
            if k == 0:
                tr = run.transcriber
                assert tr is not None, "stream_audio() always attaches its transcriber"
                ref = normalize(clip.reference)
                e = edit_distance(ref, normalize(run.text))
                edits[clip.group] += e
                words[clip.group] += len(ref)
                per_clip.append({"clip": clip.name, "text": run.text, "errors": e, "words": len(ref),
                                 "interims": sum(not t.final for t in run.transcripts),
                                 "passes": dict(tr.passes), "reused": tr.reused})
        progress(f"  round {k + 1}/{repeat} done")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    hang = vo.hangover_ms
    return {
        "endpoint_to_final_ms": summary(after_decision, ("p50", "p95", "n")),
        "last_voiced_to_final_ms": summary(after_voiced, ("p50", "p95")),
        "beyond_hangover_ms": summary([v - hang for v in after_voiced], ("p50", "p95")),
        "wer": {g: round(edits[g] / max(1, words[g]), 4) for g in edits}
        | {"all": round(sum(edits.values()) / max(1, sum(words.values())), 4)},
        "cpu_s_per_audio_s": round(cpu / audio_s, 3),
        "wall_s": round(wall, 1),
        "audio_s": round(audio_s, 1),
        "clips": per_clip,
    }


async def run_bench(models: list[str], repeat: int = 3, baseline: bool = False, threads: int = 1,
                    progress: Callable[[str], None] = lambda s: None) -> dict:
    """`rejoinder stt-bench`: each available bundled model, streaming (and optionally a no-speculation
    baseline that transcribes only after the endpoint)."""
    from pipeline.assets import ModelAssetError
    from stt.whisper import WhisperEngine, WhisperOptions

    clips = load_clips()
    modes = {"streaming": TranscriberOptions()}
    if baseline:
        modes["after_endpoint"] = TranscriberOptions(interim=False, speculative=False)
    doc: dict = {"models": {}, "notes": [], "setup": {
        "clips": [c.name for c in clips], "repeat": repeat, "clock": "virtual (compute charged in real time)",
        "hangover_ms": VADOptions().hangover_ms, "pause_ms": VADOptions().pause_ms, "whisper_threads": threads,
        "machine": {**machine(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "cpu_s_per_audio_s": "process CPU time (VAD + all passes) per second of input played, silence included",
    }}
    for name in models:
        try:
            progress(f"loading Whisper {name}…")
            engine = WhisperEngine(WhisperOptions(model=name, threads=threads))
        except (ModelAssetError, ValueError) as exc:
            doc["notes"].append(f"{name}: not available ({exc})")
            progress(doc["notes"][-1])
            continue
        doc["models"][name] = {}
        for mode, opts in modes.items():
            progress(f"{name} / {mode}: {len(clips)} clips × {repeat}…")
            engine.stats.clear()
            doc["models"][name][mode] = await bench_engine(engine, clips, repeat, opts, progress=progress)
            doc["models"][name][mode]["engine_paths"] = dict(engine.stats)  # short / full / fallback:<why>
    doc["setup"]["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    return doc


def summary_lines(doc: dict) -> list[str]:
    lines = []
    for name, modes in doc["models"].items():
        for mode, r in modes.items():
            e, b = r["endpoint_to_final_ms"], r["beyond_hangover_ms"]
            lines.append(f"{name:8s} {mode:15s} endpoint→final p50 {e['p50']} ms p95 {e['p95']} ms | "
                         f"last voiced→final beyond hangover p50 {b['p50']} p95 {b['p95']} ms | "
                         f"WER librivox {r['wer']['librivox']:.1%} cmu {r['wer']['cmu']:.1%} | "
                         f"CPU {r['cpu_s_per_audio_s']} s/s")
    return lines + doc["notes"]

