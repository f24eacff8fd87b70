"""What the bench measures in one call's recorded audio and events (see `agent/benches/call.py`),
and the scenario types both read: a conversation's steps and each clip as the mic sent it.

Client figures come from energy per 20 ms frame on both directions, on the client's clock; the
server's turn events are kept beside each turn. In process, the server's media times are on the
same clock, so the transport's share (uplink, downlink) is measured too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transport.client import AgentCall

VOICED_RMS = 0.01
SILENT_RUN_S = 0.5  # agent "falls silent": this long without an audible frame


# --- what was said, and when (the caller fills these in; `analyse` reads them) -------------------
@dataclass
class Step:
    clip: str
    barge_after_s: float | None = None  # start this clip this long into the previous reply


@dataclass
class Conversation:
    kind: str  # dialogue | barge | echo
    steps: list[Step]

    @property
    def echo(self) -> bool:
        return self.kind == "echo"


@dataclass
class SentClip:
    """A clip queued on the mic; times (time.monotonic) are filled in as its frames are sent."""

    name: str
    start: int  # sample offset in the mic's stream
    end: int
    first_voiced: int  # frame indices within the clip
    last_voiced: int
    onset: float | None = None  # the first voiced frame was sent
    voiced_end: float | None = None  # the frame with the last voiced sample had played out
    done: asyncio.Event = field(default_factory=asyncio.Event)


# --- the figures ----------------------------------------------------------------------------------
def analyse(call: AgentCall, clips: list[SentClip], conv: Conversation, in_process: bool = True) -> list[dict]:
    """Per user turn (`clips`: the mic's, in the order sent): client figures from the audio both ways,
    and the server's turn event. In process the server's media times are on our clock, so the
    transport's share is measured too."""
    times = np.array([t for t, _, _ in call.audio])
    rms = np.array([float(np.sqrt(np.mean(s * s))) if s.size else 0.0 for _, s, _ in call.audio])
    peak = np.array([float(np.abs(s).max()) if s.size else 0.0 for _, s, _ in call.audio])
    voiced = rms > VOICED_RMS
    turn_events = [(t, e["metrics"]) for e, t in zip(call.events, call.event_times) if e["type"] == "turn"]
    spans = [(c.onset, c.voiced_end) for c in clips if c.onset and c.voiced_end]
    out = []
    for i, (step, clip) in enumerate(zip(conv.steps, clips)):
        ve = clip.voiced_end
        assert ve is not None, "analyse() runs once every clip has been sent"
        nxt = clips[i + 1] if i + 1 < len(clips) else None
        rec: dict = {"conversation": conv.kind, "clip": clip.name, "echo": conv.echo,
                     "barge_after_s": step.barge_after_s}
        after = np.nonzero((times >= ve) & voiced)[0]
        if nxt is not None and nxt.onset is not None:
            after = after[times[after] < nxt.onset]  # the reply to this clip, not the next one
        first = int(after[0]) if after.size else None
        rec["v2v_client_ms"] = round(float(times[first] - ve) * 1000, 1) if first is not None else None
        rec["first_agent_audio"] = float(times[first]) if first is not None else None
        server = next((m for t, m in turn_events if t >= ve), None)
        if server is not None:
            rec["server"] = {k: server[k] for k in ("index", "user_text", "agent_text", "heard_text",
                                                      "interrupted", "preemptive", "error", "timings_ms")}
            rec["server"]["tts_underruns"] = server.get("tts", {}).get("underruns", 0)
            rec["server"]["playout_underruns"] = server.get("tts", {}).get("playout_underrun_frames", 0)
            rec["server"]["media_times"] = server.get("media_times")  # same clock as ours when in-process
            rec["voiced_end"] = ve
            mt = server.get("media_times") or {}
            if in_process and mt.get("user_last_voiced") is not None:  # transport, both ways
                rec["uplink_ms"] = round((mt["user_last_voiced"] - ve) * 1000, 1)
                if first is not None and mt.get("first_audio_played") is not None:
                    rec["downlink_ms"] = round((float(times[first]) - mt["first_audio_played"]) * 1000, 1)
        else:
            rec["server"] = None
        # the next clip interrupted this reply: its onset, once sent
        barge_onset = nxt.onset if nxt is not None and conv.steps[i + 1].barge_after_s is not None else None
        barged = barge_onset is not None
        if first is not None:
            stop = _reply_end(times, voiced, first, nxt.onset if (nxt and nxt.onset and not barged) else None)
            rec["client_underruns"], rec["client_underrun_ms"] = _gaps(peak, first, stop)
            rec["reply_s"] = round(float(times[stop] - times[first]), 2)
        if barge_onset is not None:
            rec["barge_in"] = _barge(times, voiced, barge_onset, server)
        out.append(rec)
    # self-interruptions: the server saw the user start talking while nobody was talking
    states = [t for e, t in zip(call.events, call.event_times) if e.get("state") == "user_speaking"]
    phantom = [t for t in states if not any(a - 0.1 <= t <= b + 1.0 for a, b in spans)]
    for rec in out:
        rec["self_interruptions"] = 0
    if out:
        out[0]["self_interruptions"] = len(phantom)  # counted once per conversation
    return out


def _reply_end(times: np.ndarray, voiced: np.ndarray, first: int, before: float | None) -> int:
    """Index of the reply's last audible frame: before `SILENT_RUN_S` of silence (or `before`)."""
    run = int(SILENT_RUN_S / 0.02)
    last = first
    for j in range(first, len(times)):
        if before is not None and times[j] >= before:
            break
        if voiced[j]:
            last = j
        elif j - last >= run:
            break
    return last


def _gaps(peak: np.ndarray, first: int, last: int) -> tuple[int, float]:
    """Runs of ≥ 2 digital-silence frames inside a reply, and their length (ms): the server's
    playout starved and sent zeros (Piper's own pauses are quiet but never exactly zero)."""
    gaps, frames, run = 0, 0, 0
    for j in range(first, last + 1):
        if peak[j] < 1e-4:
            run += 1
        else:
            if run >= 2:
                gaps, frames = gaps + 1, frames + run
            run = 0
    return gaps, frames * 20.0


REPLY_ENDING_MS = 300.0


def _barge(times: np.ndarray, voiced: np.ndarray, onset: float, server: dict | None) -> dict:
    idx = np.nonzero(times >= onset)[0]
    rec: dict = {"detected": bool(server and server["interrupted"]),
                 "server_ms": server["timings_ms"].get("barge_in_to_silence") if server else None}
    if not idx.size:
        return rec
    j0 = int(idx[0])
    speaking = bool(voiced[max(0, j0 - 15) : j0 + 1].any())  # audible within 300 ms before the onset
    rec["agent_was_speaking"] = speaking
    if speaking:
        end = _reply_end(times, voiced, j0, None)
        rec["client_ms"] = round(max(0.0, times[end] - onset) * 1000, 1)
        # the reply ended by itself as the user began: nothing was left to cut (not a miss)
        rec["reply_ending"] = bool(not rec["detected"] and rec["client_ms"] < REPLY_ENDING_MS)
    return rec
