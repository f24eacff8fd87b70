"""`rejoinder turns-bench`: turn-taking figures through `converse` on the real stack.

Scenarios (recorded speech from tests/data as the user, the real embedded stack as the agent, on
the virtual clock so idle time is skipped but compute is real):

* echo: the agent's own voice mixed back into its input at -10 dB, 20–200 ms late, no user
  interruption: every barge-in is a self-interruption (target: none);
* barge-in: the same echo, and the next user turn starts 1 s into each reply (target: every one
  detected; onset → silence p95 ≤ 250 ms; heard text within a word of what was played);
* preemptive on/off, alternating, on the same turns: how much voice-to-voice the early start saves.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from agent.config import AgentConfig
from agent.converse import converse
from pipeline.audio import resample

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
CLIPS = ["librivox-0880.wav", "goforward.wav", "librivox-0920.wav", "cards/005.wav", "librivox-0870.wav"]


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


async def run_turns_bench(config: AgentConfig, delays_ms: tuple[int, ...] = (20, 80, 140, 200),
                          echo_db: float = -10.0, progress: Callable[[str], None] = print) -> dict:
    clips = [DATA / c for c in CLIPS]
    echo_turns = barge_turns = 0
    self_interruptions = 0
    detected = expected = 0
    b2s: list[float] = []
    cancel: list[float] = []
    heard_ok = heard_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for delay in delays_ms:
            progress(f"echo only, {echo_db} dB, {delay} ms…")
            doc = await converse(config, clips, None, fast=True, echo_db=echo_db, echo_delay_ms=delay)
            echo_turns += sum(1 for t in doc["turns"] if t["agent_text"])
            self_interruptions += doc["summary"]["self_interruptions"]
            progress(f"barge-in over echo, {delay} ms…")
            out = Path(tmp) / f"barge-{delay}.wav"
            doc = await converse(config, clips, out, fast=True, echo_db=echo_db, echo_delay_ms=delay,
                                 interrupt_after_s=1.0)
            self_interruptions += doc["summary"]["self_interruptions"]
            turns = doc["turns"]
            # every reply but the last is talked over by the next clip
            for t in turns[:-1]:
                if not t["agent_text"]:
                    continue
                expected += 1
                barge_turns += 1
                if t["interrupted"]:
                    detected += 1
                    if t["timings_ms"]["barge_in_to_silence"] is not None:
                        b2s.append(t["timings_ms"]["barge_in_to_silence"])
                    if t["tts"].get("cancellation_latency_ms") is not None:
                        cancel.append(t["tts"]["cancellation_latency_ms"])
                    ok = _heard_matches(out, t, doc["summary"]["timeline_start"])
                    if ok is not None:
                        heard_total += 1
                        heard_ok += ok
        progress("preemptive on/off, alternating…")
        v2v: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(2):
            for mode in ("on", "off"):
                cfg = copy.deepcopy(config)
                cfg.turns.preemptive = mode == "on"
                doc = await converse(cfg, clips[:3], None, fast=True)
                v2v[mode] += [t["timings_ms"]["voice_to_voice"] for t in doc["turns"]
                              if t["timings_ms"]["voice_to_voice"] is not None]
    med = {k: round(statistics.median(v), 1) if v else None for k, v in v2v.items()}
    return {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "echo": {"db": echo_db, "delays_ms": list(delays_ms)},
        "replies_with_echo": echo_turns + barge_turns,
        "self_interruptions": self_interruptions,
        "interruptions_detected": f"{detected}/{expected}",
        "barge_in_to_silence_ms": {"p50": _pct(b2s, 50), "p95": _pct(b2s, 95), "max": max(b2s, default=None)},
        "cancellation_ms": {"p50": _pct(cancel, 50), "p95": _pct(cancel, 95)},
        "heard_text_within_one_word": f"{heard_ok}/{heard_total}",
        "voice_to_voice_ms_median": {"preemptive_on": med["on"], "preemptive_off": med["off"],
                                     "saved": None if None in med.values() else round(med["off"] - med["on"], 1)},
        "targets": {"self_interruptions": 0, "detected": ">= 19 of 20", "barge_in_to_silence_p95_ms": 250,
                    "cancellation_ms": 30, "heard_within_one_word": ">= 95%",
                    "preemptive_saves_at_least_ms": config.vad.hangover_ms},
    }


_whisper = None


def _heard_matches(timeline: Path, turn: dict, t0: float | None) -> bool | None:
    """Transcribe what the agent channel actually played of this reply; compare word counts."""
    global _whisper
    from stt.whisper import WhisperEngine, WhisperOptions

    mt = turn["media_times"]
    if t0 is None or mt.get("first_audio_played") is None or mt.get("agent_stopped") is None:
        return None
    audio, rate = sf.read(timeline, dtype="float32")
    a, b = int((mt["first_audio_played"] - t0) * rate), int((mt["agent_stopped"] - t0) * rate)
    piece = audio[max(a, 0) : max(b, 0), 1]
    if piece.size < rate // 10:
        return None
    if _whisper is None:
        _whisper = WhisperEngine(WhisperOptions(model="base"))
    said = _whisper.transcribe(resample(piece, rate, 16000)).text.split()
    return abs(len(said) - len(turn["heard_text"].split())) <= 1

