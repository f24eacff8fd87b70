"""Typed events that flow through listening, and the per-turn metrics record.

Timestamps are media time on the session's clock (seconds), see `pipeline.clock`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """VAD confirmed speech (after the minimum speech duration). `at` is the first voiced sample."""

    at: float


@dataclass(frozen=True, slots=True)
class SpeechPaused:
    """The first silence after speech: the user *may* be done. Lets STT/LLM start speculatively."""

    last_voiced: float
    audio: np.ndarray  # 16 kHz mono float32, the utterance so far (with a little padding)


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """Speech came back before the endpoint hangover ran out: discard speculative work."""

    at: float


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """Endpoint: silence lasted the hangover. `last_voiced` is the end of the user's last voiced audio."""

    started: float
    last_voiced: float
    decided_at: float
    audio: np.ndarray  # 16 kHz mono float32, the whole utterance with padding
    continued: bool = False  # cut by the length cap while the user talks on: a SpeechStarted follows at once


VADEvent = SpeechStarted | SpeechPaused | SpeechResumed | SpeechEnded


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    final: bool
    at: float  # media time the transcript became available
    audio_end: float  # media time of the end of the audio it covers


@dataclass
class TurnMetrics:
    """One user turn and the agent's reply, with the timings that make up voice-to-voice."""

    index: int
    user_text: str = ""
    agent_text: str = ""
    heard_text: str = ""
    interrupted: bool = False
    preemptive: bool = False  # the reply was started at the first silence, before the endpoint
    error: str | None = None
    # media times (seconds)
    user_started: float | None = None
    user_last_voiced: float | None = None
    endpoint_at: float | None = None
    stt_final_at: float | None = None
    llm_request_at: float | None = None
    llm_first_token_at: float | None = None
    first_phrase_at: float | None = None
    tts_first_chunk_at: float | None = None
    tts_last_chunk_at: float | None = None  # the reply's final chunk was generated (not yet played)
    first_audio_played_at: float | None = None
    agent_stopped_at: float | None = None
    barge_in_at: float | None = None  # onset of the user speech that interrupted this reply
    tts: dict = field(default_factory=dict)
    tools: list[dict] = field(default_factory=list)  # tool calls of this reply: name, arguments, ok, result
    call_answered_at: float | None = None  # the greeting turn: when the session (the call) started

    def timings_ms(self) -> dict[str, float | None]:
        def d(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        return {
            "endpoint": d(self.user_last_voiced, self.endpoint_at),
            "stt_final": d(self.endpoint_at, self.stt_final_at),
            "llm_ttft": d(self.llm_request_at, self.llm_first_token_at),
            "first_phrase": d(self.llm_first_token_at, self.first_phrase_at),
            "tts_ttfa": d(self.first_phrase_at, self.tts_first_chunk_at),
            "playout": d(self.tts_first_chunk_at, self.first_audio_played_at),
            "voice_to_voice": d(self.user_last_voiced, self.first_audio_played_at),
            "barge_in_to_silence": d(self.barge_in_at, self.agent_stopped_at) if self.barge_in_at else None,
            "answer_to_first_audio": d(self.call_answered_at, self.first_audio_played_at),
        }

    def as_dict(self) -> dict:
        return {
            "index": self.index,
            "user_text": self.user_text,
            "agent_text": self.agent_text,
            "heard_text": self.heard_text,
            "interrupted": self.interrupted,
            "preemptive": self.preemptive,
            "error": self.error,
            "timings_ms": self.timings_ms(),
            "media_times": {
                "user_started": self.user_started,
                "user_last_voiced": self.user_last_voiced,
                "first_audio_played": self.first_audio_played_at,
                "generation_ended": self.tts_last_chunk_at,
                "agent_stopped": self.agent_stopped_at,
                "barge_in": self.barge_in_at,
            },
            "tts": self.tts,
            "tools": self.tools,
        }
