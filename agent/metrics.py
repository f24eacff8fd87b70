"""Prometheus metrics of the running agent: calls, turns, and the timings every turn already measures.

Fed from the same events the page and the JSON get (a session's `on_event`), so a figure on a
dashboard is the figure in `converse --json`. Names follow Prometheus conventions (base units:
seconds; `_total` counters); served at `GET /metrics` by `rejoinder serve` (behind the token off
loopback). One registry per stack, not the process-global one, so tests and several stacks in one
process do not share counts.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Spoken-turn latencies: 50 ms to 10 s (a reply later than that is a failure anyway)
_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

# (metric name, timings_ms key, what it measures) — see README "Metrics"
_STAGES = (
    ("rejoinder_voice_to_voice_seconds", "voice_to_voice", "Last voiced audio to the first agent audio played"),
    ("rejoinder_end_of_turn_delay_seconds", "endpoint", "User's last voiced audio to the end-of-turn decision"),
    ("rejoinder_stt_final_seconds", "stt_final", "End of turn to the final transcript"),
    ("rejoinder_llm_first_token_seconds", "llm_ttft", "LLM request to its first token"),
    ("rejoinder_tts_first_audio_seconds", "tts_ttfa", "First phrase to the first synthesized audio"),
    ("rejoinder_barge_in_to_silence_seconds", "barge_in_to_silence", "Barge-in to the agent's audio stopping"),
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls_active = Gauge("rejoinder_calls_active", "Calls in progress", registry=r)
        self.calls = Counter("rejoinder_calls", "Calls started", registry=r)
        self.turns = Counter("rejoinder_turns", "Agent replies finished", ["outcome"], registry=r)
        self.stages = {key: Histogram(name, doc, buckets=_BUCKETS, registry=r) for name, key, doc in _STAGES}
        self.client_v2v = Histogram("rejoinder_client_voice_to_voice_seconds",
                                    "Voice-to-voice measured in the caller's browser", buckets=_BUCKETS, registry=r)
        self.cancellation = Histogram("rejoinder_cancellation_seconds", "Barge-in to the TTS and output stopped",
                                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5), registry=r)
        self.underruns = Counter("rejoinder_playout_underrun_frames", "Frames the output had nothing to play "
                                 "mid-reply", registry=r)
        self.cache_hits = Counter("rejoinder_tts_cache_hits", "Phrases served from the phrase cache", registry=r)
        self.cache_lookups = Counter("rejoinder_tts_cache_lookups", "Phrase cache lookups", registry=r)
        self.tool_calls = Counter("rejoinder_tool_calls", "Tool calls by tool and outcome", ["tool", "outcome"],
                                  registry=r)
        self.errors = Counter("rejoinder_errors", "Turns that failed, by stage", ["stage"], registry=r)

    def call_started(self) -> None:
        self.calls.inc()
        self.calls_active.inc()

    def call_ended(self) -> None:
        self.calls_active.dec()

    def observe(self, event: dict[str, Any]) -> None:
        """One session event (`turn`, `v2v`, `tool`); others are ignored."""
        kind = event.get("type")
        if kind == "turn":
            self._turn(event["metrics"])
        elif kind == "v2v" and isinstance(event.get("client_ms"), int | float):
            self.client_v2v.observe(event["client_ms"] / 1000)
        elif kind == "tool" and event.get("state") == "done":
            self.tool_calls.labels(event.get("name", "?"), "ok" if event.get("ok") else "failed").inc()

    def _turn(self, m: dict[str, Any]) -> None:
        self.turns.labels("interrupted" if m.get("interrupted") else "error" if m.get("error") else "done").inc()
        for key, hist in self.stages.items():
            v = (m.get("timings_ms") or {}).get(key)
            if v is not None:
                hist.observe(max(0.0, v / 1000))
        tts = m.get("tts") or {}
        if tts.get("cancellation_latency_ms") is not None:
            self.cancellation.observe(tts["cancellation_latency_ms"] / 1000)
        self.underruns.inc(tts.get("playout_underrun_frames") or 0)
        self.cache_hits.inc(tts.get("cache_hits") or 0)
        self.cache_lookups.inc(tts.get("cache_lookups") or 0)
        if m.get("error"):
            self.errors.labels("llm").inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
