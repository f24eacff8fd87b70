"""Prometheus metrics (agent/metrics.py, GET /metrics): what a turn measured is what is exported.

Fakes: `Rig`-free: a real `AgentStack` with FakeSTT/FakeLLM/FakeTTSEngine feeds the metrics from
hand-made events; the server test uses FakeStack plus a real aiohttp server on 127.0.0.1.
"""

from __future__ import annotations

from aiohttp import ClientSession

from agent.metrics import Metrics
from tests.fakes import FakeStack, served


def _turn(v2v_ms: float, interrupted: bool = False) -> dict:
    return {"type": "turn", "metrics": {"interrupted": interrupted, "error": None,
                                        "timings_ms": {"voice_to_voice": v2v_ms, "endpoint": 512.0, "llm_ttft": 300.0},
                                        "tts": {"cache_hits": 1, "cache_lookups": 3, "playout_underrun_frames": 2,
                                                "cancellation_latency_ms": 12.0 if interrupted else None}}}


def _value(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(name + " ") or x.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


def test_turn_events_become_prometheus_series_in_seconds():
    m = Metrics()
    m.call_started()
    for v in (800.0, 1200.0):
        m.observe(_turn(v))
    m.observe(_turn(900.0, interrupted=True))
    m.observe({"type": "v2v", "turn": 0, "client_ms": 950})
    m.observe({"type": "tool", "state": "done", "name": "lookup_order", "ok": False})
    text = m.text().decode()
    assert _value(text, "rejoinder_calls_active") == 1 and _value(text, "rejoinder_calls_total") == 1
    assert _value(text, "rejoinder_voice_to_voice_seconds_count") == 3
    assert abs(_value(text, "rejoinder_voice_to_voice_seconds_sum") - 2.9) < 1e-9
    assert 'rejoinder_turns_total{outcome="interrupted"} 1.0' in text
    assert _value(text, "rejoinder_client_voice_to_voice_seconds_count") == 1
    assert 'rejoinder_tool_calls_total{outcome="failed",tool="lookup_order"} 1.0' in text
    assert _value(text, "rejoinder_tts_cache_lookups_total") == 9
    assert _value(text, "rejoinder_cancellation_seconds_count") == 1
    m.call_ended()
    assert _value(m.text().decode(), "rejoinder_calls_active") == 0


async def test_the_server_serves_metrics_behind_the_token():
    class WithMetrics(FakeStack):
        def __init__(self) -> None:
            super().__init__()
            self.metrics = Metrics()

        def metrics_text(self) -> bytes:
            return self.metrics.text()

    async with served(WithMetrics(), token="t0k") as url, ClientSession() as http:
        assert (await http.get(f"{url}/metrics")).status == 401
        r = await http.get(f"{url}/metrics?token=t0k")
        assert r.status == 200 and "rejoinder_voice_to_voice_seconds_bucket" in await r.text()
