"""The SIP edge (transport/sip.py, transport/sip_media.py) and its wiring (agent/phone.py).

Fast unit tests, no network: SDP offer/answer, G.711 round trips, the allow-list and the listen
check, the keypad digit collector, and a keypad turn on the real turn manager (`Rig` of tests/fakes.py:
FakeSTT, FakeLLM, FakeTTSEngine on a VirtualClock).
Phone tests (`phone` marker): SIPp 3.6 (`/usr/bin/sipp`, Debian sip-tester) calls the real SIP edge
and a real `AgentStack` session (real Silero VAD, turn manager, TTS streaming and playout; FakeSTT,
FakeLLM, FakeTTSEngine) run by tests/sip_rig.py inside a network namespace with only loopback
(`unshare -n`); skipped with a reason where SIPp or namespaces are missing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from aiosipua import parse_sdp

from agent.phone import sip_options
from pipeline.dtmf import DigitCollector
from tests.fakes import Rig
from transport.g711 import decode, encode
from transport.sip_media import NoCodec, allowed, check_listen, negotiate, parse_allow

ROOT = Path(__file__).resolve().parents[1]


def offer(formats: str, *rtpmaps: str, ptime: int | None = None) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio 6000 RTP/AVP {formats}", *(f"a=rtpmap:{r}" for r in rtpmaps)]
    if ptime:
        lines.append(f"a=ptime:{ptime}")
    return "\r\n".join(lines) + "\r\n"


# --- SDP -----------------------------------------------------------------------------------------
def test_answer_takes_the_callers_first_g711_and_its_telephone_event_type():
    answer, media = negotiate(parse_sdp(offer("8 0 96", "96 telephone-event/8000", ptime=30)), "127.0.0.1", 7000)
    assert (media.payload_type, media.codec, media.dtmf_payload_type) == (8, "PCMA", 96)
    assert media.remote == ("127.0.0.1", 6000)
    m = answer.media[0]
    assert m.port == 7000 and m.formats == ["8", "96"] and m.attributes["ptime"] == ["20"]
    assert "96 telephone-event/8000" in m.attributes["rtpmap"]


def test_answer_without_telephone_event_offers_none():
    answer, media = negotiate(parse_sdp(offer("0")), "127.0.0.1", 7000)
    assert media.codec == "PCMU" and media.dtmf_payload_type is None and answer.media[0].formats == ["0"]


@pytest.mark.parametrize("sdp", [
    offer("9 18", "9 G722/8000", "18 G729/8000"),  # no G.711
    offer("96", "96 opus/48000/2"),
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n",  # no audio at all
])
def test_offers_without_a_codec_we_speak_are_refused(sdp):
    with pytest.raises(NoCodec):
        negotiate(parse_sdp(sdp), "127.0.0.1", 7000)


# --- G.711 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pt", [0, 8])
def test_g711_round_trip_keeps_speech_level_audio(pt):
    t = np.arange(1600) / 8000
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    payload = encode(x, pt)
    assert len(payload) == len(x)  # one byte a sample
    y = decode(payload, pt)
    snr = 10 * np.log10(np.sum(x**2) / np.sum((x - y) ** 2))
    assert y.dtype == np.float32 and snr > 30, snr
    assert np.all(np.isfinite(decode(encode(np.array([2.0, -2.0, 0.0], np.float32), pt), pt)))  # clipped


# --- who may call --------------------------------------------------------------------------------
def test_listening_beyond_loopback_needs_an_allow_list():
    assert [str(n) for n in check_listen("127.0.0.1", [])] == ["127.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match="--allow NET"):
        check_listen("192.0.2.10", [])
    nets = check_listen("192.0.2.10", parse_allow(["192.0.2.0/24", "198.51.100.7"]))
    assert allowed("192.0.2.99", nets) and allowed("198.51.100.7", nets)
    assert not allowed("203.0.113.1", nets) and not allowed("::1", nets) and not allowed("nonsense", nets)
    with pytest.raises(ValueError, match="--allow 'tenet'"):
        parse_allow(["tenet"])
    with pytest.raises(ValueError, match="HOST:PORT"):
        sip_options("5060", 1, [])
    with pytest.raises(ValueError, match="wildcard"):
        sip_options("0.0.0.0:5060", 1, ["10.0.0.0/8"])
    assert sip_options("127.0.0.1:5062", 2, []).port == 5062


# --- keypad digits -------------------------------------------------------------------------------
async def test_digits_become_one_entry_at_pound_or_after_a_pause():
    got: list[str] = []
    keys = DigitCollector(got.append, pause_s=0.05)
    for k in "4712#":
        keys.press(k)
    assert got == ["4712"]
    for k in "9*":
        keys.press(k)
    await asyncio.sleep(0.02)
    keys.press("3")
    assert got == ["4712"]  # each key restarts the pause
    await asyncio.sleep(0.1)
    assert got == ["4712", "9*3"]
    keys.press("#")  # a lone pound is no entry
    assert got == ["4712", "9*3"]
    keys.close()


async def test_a_keypad_entry_is_a_user_turn_that_gets_a_reply():
    async with Rig([], ["Order 4712 is on its way."]) as rig:
        await rig.turns.user_typed("4712")
        await rig.turns.wait_reply()
    assert rig.llm.requests and rig.llm.requests[0][-1] == {"role": "user", "content": "4712"}
    assert any(e["type"] == "transcript" and e["final"] and e["text"] == "4712" for e in rig.events)
    assert rig.turns.turns[0].heard_text.startswith("Order 4 7 1 2")  # digits spoken one by one


# --- real SIP callers (SIPp) in a loopback-only namespace ----------------------------------------
def _netns_prefix() -> list[str] | None:
    """`unshare -n` with loopback up, if this machine lets us (root or user namespaces)."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return None
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"'] if probe.returncode == 0 else None


def rig(scenario: str) -> dict:
    if not shutil.which("sipp"):
        pytest.skip("SIPp missing: apt-get install -y sip-tester")
    prefix = _netns_prefix()
    if prefix is None:
        pytest.skip("no network namespace here (unshare -n needs root or user namespaces): SIP tests run only "
                    "where nothing can leave the machine")
    proc = subprocess.run(prefix + [sys.executable, "-m", "tests.sip_rig", scenario], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\n".join(doc["logs"][-20:]))
    return doc


def _clean_end(doc: dict, reason: str) -> None:
    assert doc["calls"] == 1 and doc["open_calls"] == 0 and doc["sessions_done"] == 1, doc
    assert doc["end_reasons"] == [reason]
    assert not [line for line in doc["logs"] if line.startswith("ERROR")], doc["logs"]



@pytest.mark.phone
def test_sipp_call_connects_and_audio_flows_both_ways():
    doc = rig("call")
    assert doc["sipp"]["rc"] == 0, doc["sipp"]
    assert doc["packets_in"][0] > 100, "the caller's speech did not arrive"
    assert doc["stt_calls"] > 0 and doc["user_texts"], "the caller's speech never reached the transcriber"
    assert doc["heard"]["voiced"] > 50, doc["heard"]  # the greeting (and a reply) reached the caller
    _clean_end(doc, "the caller hung up")


@pytest.mark.phone
def test_sipp_busy_gets_486_and_no_codec_gets_488():
    doc = rig("limits")
    assert doc["sipp"]["rc"] == 0 and doc["busy"]["rc"] == 0 and doc["nocodec"]["rc"] == 0, doc
    assert doc["rejected"] == [486, 488]
    _clean_end(doc, "the caller hung up")


@pytest.mark.phone
def test_sipp_bye_mid_reply_ends_the_session_cleanly():
    doc = rig("bye_mid_reply")
    assert doc["sipp"]["rc"] == 0, doc["sipp"]
    assert doc["heard"]["voiced"] > 10 and doc["packets_out"][0] < 120  # cut short in the greeting
    assert doc["leftover_tasks"] == []
    _clean_end(doc, "the caller hung up")


@pytest.mark.phone
def test_sipp_dtmf_digits_reach_the_conversation():
    doc = rig("dtmf")
    assert doc["sipp"]["rc"] == 0, doc["sipp"]
    assert doc["dtmf_in"] == [["4", "7", "1", "2", "#"]]
    assert doc["user_texts"] == ["4712"] and doc["user_prompts"][-1] == "4712"
    _clean_end(doc, "the caller hung up")


@pytest.mark.phone
def test_malformed_requests_get_a_log_line_or_400_and_no_crash():
    doc = rig("malformed")
    assert doc["answers"] == [[], ["SIP/2.0 400 Missing Required Header"], ["SIP/2.0 400 Bad Request"]]
    assert doc["options"] == ["SIP/2.0 200 OK"]  # still answering
    assert any("could not handle INVITE" in line for line in doc["logs"])
    assert doc["sipp"]["rc"] == 0 and doc["heard"]["voiced"] > 20  # and a real call afterwards works
    assert doc["open_calls"] == 0


@pytest.mark.phone
def test_agent_hang_up_sends_bye():
    doc = rig("agent_bye")
    assert doc["sipp"]["rc"] == 0, doc["sipp"]  # SIPp received our BYE and answered it
    _clean_end(doc, "agent hung up")


@pytest.mark.phone
def test_transfer_sends_refer_and_succeeds_on_202_and_notify_200():
    doc = rig("refer")
    assert doc["transferred"] is True and doc["targets"] == ["sip:operator@127.0.0.1"]
    assert doc["sipp"]["rc"] == 0, doc["sipp"]
    _clean_end(doc, "agent hung up")


@pytest.mark.phone
def test_refused_transfer_returns_false_and_the_call_stays():
    doc = rig("refer_refused")
    assert doc["transferred"] is False and doc["still_up"] is True
    assert doc["sipp"]["rc"] == 0, doc["sipp"]
    _clean_end(doc, "the caller hung up")


@pytest.mark.phone
def test_fifty_calls_in_a_row_leak_no_task_thread_or_socket():
    """SIPp calls 50 times, one call at a time; what the process holds after call 50 is what it
    held after call 5 (tasks, threads, file descriptors: the RTP sockets and ports are fds)."""
    doc = rig("many")
    assert doc["warm"]["rc"] == 0 and doc["sipp"]["rc"] == 0, (doc["warm"], doc["sipp"])
    assert doc["answered"] == 50 and doc["sessions_done"] == 50 and doc["open_calls"] == 0
    a, b = doc["after_5"], doc["after_50"]
    assert b["fds"] <= a["fds"] + 2 and b["threads"] <= a["threads"] + 1 and b["tasks"] <= a["tasks"], (a, b)
