"""`rejoinder turns-bench`: turn-taking figures through `converse` on the real stack.

Scenarios (recorded speech from tests/data as the user, the real embedded stack as the agent, on
the virtual clock so idle time is skipped but compute is real):

* echo: the agent's own voice mixed back into its input at -10 dB, 20–200 ms late, no user
  interruption: every barge-in is a self-interruption (target: none);
* barge-in: the same echo, and the next user turn's words start 0.7 s into each reply (target:
  every one detected; onset → silence p95 ≤ 250 ms; heard text within a word of what was played);
* preemptive replies on (prefill while the user speaks, reply from the pause), from the pause
  only, and no speculation at all, alternating on the same turns: how much voice-to-voice the
  early start saves.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import soundfile as sf

from agent.benches.stats import machine, median, summary
from agent.config import AgentConfig
from agent.converse import converse
from pipeline.audio import resample
from stt.vad import WINDOW_S, _windows

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"
CLIPS = ["librivox-0880.wav", "goforward.wav", "librivox-0920.wav", "cards/005.wav", "librivox-0870.wav",
         "cards/001.wav"]


async def run_turns_bench(config: AgentConfig, delays_ms: tuple[int, ...] = (20, 80, 140, 200),
                          echo_db: float = -10.0, interrupt_after_s: float = 0.7,
                          progress: Callable[[str], None] = print) -> dict:
    clips = [DATA / c for c in CLIPS]
    echo_turns = 0
    self_interruptions = 0
    barge: list[dict] = []  # one per user turn that cut in
    with tempfile.TemporaryDirectory() as tmp:
        for delay in delays_ms:
            progress(f"echo only, {echo_db} dB, {delay} ms…")
            doc = await converse(config, clips, None, fast=True, echo_db=echo_db, echo_delay_ms=delay)
            echo_turns += sum(1 for t in doc["turns"] if t["agent_text"])
            self_interruptions += doc["summary"]["self_interruptions"]
            progress(f"barge-in over echo, {delay} ms…")
            out = Path(tmp) / f"barge-{delay}.wav"
            doc = await converse(config, clips, out, fast=True, echo_db=echo_db, echo_delay_ms=delay,
                                 interrupt_after_s=interrupt_after_s)
            self_interruptions += doc["summary"]["self_interruptions"]
            echo_turns += sum(1 for t in doc["turns"] if t["agent_text"])
            barge += [{**b, "delay_ms": delay} for b in _barge_ins(doc, out)]
        progress("preemptive replies on, at the pause only, off, alternating…")
        v2v = await _preemption(config, clips[:4])
    counted = [b for b in barge if b["outcome"] in ("detected", "missed")]
    detected = [b for b in counted if b["outcome"] == "detected"]
    heard = [b["heard_ok"] for b in detected if b["heard_ok"] is not None]
    med = {k: median(v) for k, v in v2v.items()}
    med_on, med_off = med["on"], med["off"]
    return {
        "machine": machine(),
        "echo": {"db": echo_db, "delays_ms": list(delays_ms)},
        "replies_with_echo": echo_turns,
        "self_interruptions": self_interruptions,
        "interruptions_detected": f"{len(detected)}/{len(counted)}",
        "interruptions_not_counted": {
            "reply_shorter_than_the_cut_in_time": sum(b["outcome"] == "reply shorter than the cut-in time"
                                                      for b in barge),
            "reply_over_before_the_user_spoke": sum(b["outcome"] == "reply already over" for b in barge),
            "reply_ended_within_300_ms_of_onset": sum(b["outcome"] == "reply ending" for b in barge)},
        # onset as the VAD places it (the system's own view, what the turn metrics record)
        "barge_in_to_silence_ms": _stats([b["vad_onset_to_silence_ms"] for b in detected]),
        # onset of the words in the recording: adds Silero's own onset lag (30–230 ms on these clips)
        "speech_onset_to_silence_ms": _stats([b["onset_to_silence_ms"] for b in detected]),
        "cancellation_ms": _stats([b["cancellation_ms"] for b in detected if b["cancellation_ms"] is not None]),
        "heard_text_within_one_word": f"{sum(heard)}/{len(heard)}",
        "voice_to_voice_ms_median": {
            "preemptive_on": med_on, "preemptive_at_pause_only": med["pause_only"], "preemptive_off": med_off,
            "saved": None if med_on is None or med_off is None else round(med_off - med_on, 1),
            "saved_paired_median": med["paired"], "pairs": len(v2v["paired"]),
            # when transcript + LLM + first phrase + TTS take longer than the hangover (they do on
            # 2 cores), starting them at the pause instead of the endpoint saves hangover - pause;
            # only work done before the pause (the prefill) can save more
            "pause_only_bound_when_work_exceeds_hangover":
                _window_ms(config.vad.hangover_ms) - _window_ms(config.vad.pause_ms)},
        "barge_ins": barge,
        "targets": {"self_interruptions": 0, "detected": ">= 19 of 20", "barge_in_to_silence_p95_ms": 250,
                    "cancellation_ms": 30, "heard_within_one_word": ">= 95%",
                    "preemptive_saves_at_least_ms": config.vad.hangover_ms},
    }


def _window_ms(ms: float) -> float:
    return round(_windows(ms) * WINDOW_S * 1000)  # the VAD rounds durations up to whole windows


def _stats(values: list[float]) -> dict:
    return summary(values, ("p50", "p95", "max"))


def _barge_ins(doc: dict, timeline: Path) -> list[dict]:
    """Each user turn that cut in, matched to the reply that was audible when its words began."""
    s = doc["summary"]
    found = []
    for i, (onset, cut_in) in enumerate(zip(s["user_speech_onsets"], s["user_interrupting"])):
        if not cut_in:
            if i > 0:  # scripted to cut in, but the reply was over before the cut-in time came
                found.append({"onset": round(onset, 3), "outcome": "reply shorter than the cut-in time"})
            continue
        reply = next((t for t in doc["turns"] if t["media_times"].get("first_audio_played") is not None
                      and t["media_times"]["first_audio_played"] <= onset
                      <= (t["media_times"].get("agent_stopped") or 1e18)),
                     None)
        b = {"onset": round(onset, 3), "outcome": "reply already over", "vad_onset_to_silence_ms": None,
             "onset_to_silence_ms": None, "cancellation_ms": None, "heard_ok": None}
        if reply is not None:
            mt = reply["media_times"]
            if reply["interrupted"]:
                said = _played_words(timeline, reply, s["timeline_start"])
                b.update(outcome="detected", vad_onset_to_silence_ms=reply["timings_ms"]["barge_in_to_silence"],
                         onset_to_silence_ms=round((mt["agent_stopped"] - onset) * 1000, 1),
                         cancellation_ms=reply["tts"].get("cancellation_latency_ms"),
                         heard_ok=None if said is None else abs(len(said) - len(reply["heard_text"].split())) <= 1,
                         heard_text=reply["heard_text"], played_as_transcribed=None if said is None else " ".join(said))
            else:  # too close to the reply's natural end for any listener to cut in
                b["outcome"] = "reply ending" if mt["agent_stopped"] - onset < 0.3 else "missed"
        found.append(b)
    return found


MODES = ("on", "pause_only", "off")


async def _preemption(config: AgentConfig, clips: list[Path], reps: int = 3) -> dict[str, list[float]]:
    """Voice-to-voice with preemptive replies on (the LLM reads the user's interim words while they
    speak; transcript and reply start at the pause), started at the pause only (no prefill), and
    with no speculation at all (transcript and reply wait for the endpoint). Modes alternate so that
    machine load drifts hit all three; `paired` holds off - on for the same user turn of the same
    round (less noisy than two medians)."""
    v2v: dict[str, list[float]] = {m: [] for m in (*MODES, "paired")}
    for _ in range(reps):
        got = {}
        for mode in MODES:
            cfg = copy.deepcopy(config)
            cfg.turns.preemptive = mode != "off"
            if mode == "pause_only":
                cfg.llm.prefill_while_listening = False
            doc = await converse(cfg, clips, None, fast=True)
            got[mode] = [t["timings_ms"]["voice_to_voice"] for t in doc["turns"]]
            v2v[mode] += [v for v in got[mode] if v is not None]
        if len(got["on"]) == len(got["off"]):
            v2v["paired"] += [b - a for a, b in zip(got["on"], got["off"]) if a is not None and b is not None]
    return v2v


_whisper = None


def _played_words(timeline: Path, turn: dict, t0: float | None) -> list[str] | None:
    """Transcribe what the agent channel actually played of this reply (None: too little to tell)."""
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
    return said

