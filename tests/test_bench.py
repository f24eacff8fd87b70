"""`rejoinder bench` keeps working: the scenario plan, the figures' shape, and a short real run.

The real run drives the real embedded stack over WebRTC on 127.0.0.1 through the CLI (two plain
turns of recorded speech, no warm-up), then checks the JSON and the chart it wrote. The other tests
are pure logic on hand-made records: no fakes, no models, no network.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from agent.benches.call import BARGE_POINTS, parse_compare, plan
from agent.benches.measure import _barge
from agent.benches.report import summarize, verdict
from agent.benches.stats import summary as stats


@pytest.mark.parametrize("talks_on_s, server_interrupted, ending", [
    (0.1, False, True),  # the reply ended by itself as the user began: nothing to cut
    (1.0, False, False),  # the agent talked on over the user: a miss
    (0.1, True, False),  # cut by the barge-in
])
def test_a_cut_in_as_the_reply_ends_is_not_counted_as_missed(talks_on_s, server_interrupted, ending):
    times = np.arange(0, 5, 0.02)
    voiced = times < 2.0 + talks_on_s  # the agent is heard until then; the user starts at 2.0 s
    server = {"interrupted": server_interrupted, "timings_ms": {"barge_in_to_silence": None}}
    rec = _barge(times, voiced, 2.0, server)
    assert rec["agent_was_speaking"] and rec["reply_ending"] is ending
    turn = {"barge_in": rec, "echo": False, "self_interruptions": 0, "v2v_client_ms": None}
    s = summarize([{"turns": [turn], "connect_ms": 50.0}])
    assert s["barge_ins_while_speaking"] == (0 if ending else 1)
    assert s["barge_ins_as_the_reply_ended"] == int(ending)


def test_plan_covers_dialogues_barge_ins_and_echo():
    convs = plan(10)
    assert sum(len(c.steps) for c in convs) == 10
    kinds = [c.kind for c in convs]
    assert kinds == ["dialogue", "barge", "echo"], kinds
    barges = [s.barge_after_s for c in convs for s in c.steps if s.barge_after_s is not None]
    assert barges == list(BARGE_POINTS[:3]) and all(0.5 <= b <= 2.0 for b in barges)
    assert [c.echo for c in convs] == [False, False, True]
    assert sum(len(c.steps) for c in plan(2)) == 2 and plan(2)[0].kind == "dialogue"


def test_compare_values_are_typed_and_aliases_resolve():
    assert parse_compare("stt.model=tiny.en,base") == ("stt.model", ["tiny.en", "base"])
    assert parse_compare("preemptive=on,off") == ("turns.preemptive", [True, False])
    assert parse_compare("embedded_llm.threads=1,2") == ("embedded_llm.threads", [1, 2])
    with pytest.raises(ValueError, match="KEY=A,B"):
        parse_compare("stt.model=tiny.en")


def test_verdict_names_the_largest_stage_when_a_target_is_missed():
    s = {"v2v_client_ms": stats([900, 1000, 1300]), "barge_in_to_silence_client_ms": stats([100, 200]),
         "echo_turns": 2, "self_interruptions": 0, "underruns_client": 3, "underruns_server_tts": 0,
         "underruns_server_playout": 0,
         "stages_ms": {"endpoint": stats([500, 510]), "llm_ttft": stats([300, 320]), "uplink": stats([50])}}
    v = verdict(s)
    assert v["met"]["v2v_client_p50_ms"] is False and v["met"]["barge_in_to_silence_p95_ms"] is True
    assert v["held_back_by"]["stage"] == "endpoint"
    s["v2v_client_ms"] = stats([600, 700, 700])
    assert verdict(s)["all_met"] and "held_back_by" not in verdict(s)


@pytest.mark.models
@pytest.mark.webrtc  # the bench's client calls the server over real aiortc peers on 127.0.0.1
@pytest.mark.timeout(120)
def test_bench_two_turns_on_the_real_stack(tmp_path):
    from agent.cli import main

    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(main, ["bench", "--turns", "2", "--fast-start", "--json", str(out),
                                       "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    s = doc["summary"]
    assert s["turns"] == 2 and s["answered"] == 2, s
    v2v = s["v2v_client_ms"]
    assert v2v["n"] == 2 and 100 <= v2v["p50"] <= v2v["p95"] <= v2v["max"] <= 10_000, v2v
    assert 100 <= s["v2v_server_ms"]["p50"] <= 10_000
    # the client hears the agent later than the server played it: the transport is on the path
    assert s["v2v_client_ms"]["p50"] > s["v2v_server_ms"]["p50"]
    for stage in ("endpoint", "llm_ttft", "tts_ttfa", "uplink", "downlink"):
        assert s["stages_ms"][stage]["n"] == 2, (stage, s["stages_ms"])
    turns = doc["configs"][0]["conversations"][0]["turns"]
    assert all(t["server"]["agent_text"] and t["reply_s"] > 0.3 for t in turns), turns
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu_model"]
    assert doc["cpu"]["process_cpu_s"] > 0 and doc["cpu"]["children_cpu_s"] > 0  # the LLM server decoded
    assert set(doc["verdict"]["met"]) == {"v2v_client_p50_ms", "v2v_client_p95_ms", "barge_in_to_silence_p95_ms",
                                         "self_interruptions", "underruns"}
    assert "voice-to-voice, client" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
