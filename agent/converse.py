"""`rejoinder converse`: a whole spoken conversation from WAV files, on the real stack.

Each input file is one user turn, streamed as a microphone would (20 ms frames, paced on the clock);
the output is a stereo timeline (user left, agent right) and per-turn metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.api import Agent
from agent.benches.stats import machine
from agent.config import AgentConfig
from agent.recorded_call import RecordedCall
from agent.stack import AgentStack, load_stack
from pipeline.audio import read_audio
from pipeline.clock import Clock, RealClock, VirtualClock
from transport.files import EchoPath, ScriptedMicrophone, TimelineRecorder

log = logging.getLogger(__name__)


async def converse(
    config: AgentConfig,
    inputs: list[Path],
    out: Path | None,
    fast: bool = False,
    gap_s: float = 1.0,
    progress: Callable[[str], None] = lambda s: None,
    interrupt_after_s: float | None = None,
    echo_db: float | None = None,
    echo_delay_ms: float = 100.0,
    agent: Agent | None = None,
) -> dict:
    """Run the conversation; return the metrics document (`{"turns": [...], "summary": {...}}`)."""
    turns: list[tuple[np.ndarray, int]] = []
    notes: list[str] = []
    for p in inputs:
        audio, rate = read_audio(p)  # AudioFileError names the file
        if audio.size == 0 or not np.any(np.nan_to_num(audio)):
            notes.append(f"{p}: no audio (empty or all silent); no turn")
            progress(notes[-1])
            continue
        turns.append((audio, rate))
    if not turns:
        return {"turns": [], "summary": {"turns": 0, "notes": notes}}
    async with load_stack(config, progress, agent=agent) as stack:
        return await converse_on(stack, turns, out, fast=fast, gap_s=gap_s, progress=progress,
                                 interrupt_after_s=interrupt_after_s, echo_db=echo_db, echo_delay_ms=echo_delay_ms,
                                 notes=notes)


async def converse_on(
    stack: AgentStack,
    turns: list[tuple[np.ndarray, int]],
    out: Path | None = None,
    fast: bool = False,
    gap_s: float = 1.0,
    progress: Callable[[str], None] = lambda s: None,
    interrupt_after_s: float | None = None,
    echo_db: float | None = None,
    echo_delay_ms: float = 100.0,
    notes: list[str] | None = None,
    call: RecordedCall | None = None,
    clock: Clock | None = None,
) -> dict:
    """One conversation of user turns (audio, rate) on a loaded stack (its agent); the metrics document."""
    config = stack.config
    notes = list(notes or [])
    clock = clock or (VirtualClock() if fast else RealClock())
    recorder = TimelineRecorder()
    echo = EchoPath(echo_db, echo_delay_ms) if echo_db is not None else None

    def sink(frame):
        recorder.agent(frame)
        if echo is not None:
            echo.played(frame)

    events: list[dict] = []
    call = call or RecordedCall()

    def on_event(event: dict) -> None:
        _log_event(event)
        if event.get("type") in ("tool", "flow"):
            events.append(event)

    session = stack.new_session(clock, sink=sink, on_event=on_event, call=call)
    call.ended = session.hang_up
    mic = ScriptedMicrophone(
        clock, turns, session.idle, gap_s=gap_s, min_tail_s=config.vad.hangover_ms / 1000 + 0.3,
        interrupt_after_s=interrupt_after_s, speaking_since=session.turns.speaking_since, echo=echo,
    )

    async def frames():
        async for f in mic.frames():
            recorder.user(f)
            yield f

    progress(f"conversation: {len(turns)} user turn(s){' on a virtual clock' if fast else ' in real time'}…")
    await session.run(frames())
    metrics = [m.as_dict() for m in session.turns.turns]
    history = [dataclasses.asdict(m) for m in session.turns.conversation.messages]
    underruns = session.playout.underruns
    cache = stack.cache
    self_interruptions = _self_interruptions(metrics, mic.user_spans)
    if out is not None:
        seconds = recorder.write(out)
        progress(f"wrote {out} ({seconds:.1f} s, user left, agent right)")
    if not metrics:
        notes.append("no speech detected in the input; no turn")
        progress(notes[-1])
    summary = _summary(metrics, underruns, cache, notes, fast, config)
    summary["self_interruptions"] = self_interruptions
    summary["timeline_start"] = recorder.t0  # media time of the output WAV's first sample
    # the script's ground truth: when each user turn's words began, and which ones cut in
    summary["user_speech_onsets"] = mic.speech_onsets
    summary["user_interrupting"] = mic.interrupting
    summary["history"] = history  # what the next LLM call sees: the user's words and what they heard
    summary["call"] = call.as_dict()  # what the agent did to the call: hang-up, transfers, digits sent
    summary["tool_events"] = events
    if echo is not None:
        summary["echo"] = {"db": echo_db, "delay_ms": echo_delay_ms}
    return {"turns": metrics, "summary": summary}


def _self_interruptions(turns: list[dict], user_spans: list[tuple[float, float]]) -> int:
    """Barge-ins that no user audio can explain: the agent interrupted itself (its echo, noise)."""
    count = 0
    for t in turns:
        at = t["media_times"].get("barge_in")
        if at is not None and not any(a - 0.1 <= at <= b + 0.1 for a, b in user_spans):
            count += 1
    return count


def _summary(turns: list[dict], underruns: int, cache, notes: list[str], fast: bool, config: AgentConfig) -> dict:
    v2v = [t["timings_ms"]["voice_to_voice"] for t in turns if t["timings_ms"]["voice_to_voice"] is not None]
    return {
        "turns": len(turns),
        "voice_to_voice_ms_median": round(statistics.median(v2v), 1) if v2v else None,
        "voice_to_voice_ms_max": max(v2v) if v2v else None,
        "interruptions": sum(t["interrupted"] for t in turns),
        "errors": [t["error"] for t in turns if t["error"]],
        "underrun_frames": underruns,
        "cache_hit_rate": cache.hit_rate,
        "clock": "virtual" if fast else "real",
        "stt_model": config.stt.model,
        "llm": config.llm.base_url or "embedded qwen2.5-0.5b",
        "machine": machine(),
        "notes": notes,
    }


def _log_event(event: dict) -> None:
    if event["type"] == "turn":
        m = event["metrics"]
        log.info("turn %d: user=%r agent=%r timings=%s", m["index"], m["user_text"], m["agent_text"], m["timings_ms"])
    elif event["type"] == "state":
        log.debug("state → %s", event["state"])
