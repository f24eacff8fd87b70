"""`rejoinder converse` end to end on the REAL embedded stack (Silero, Whisper, Qwen via llama.cpp,
Piper), offline, on a virtual clock; plus the bad inputs of the spine issue through the real CLI.

The LLM-failure test uses `FakeLLMServer` (tests/fakes.py: a fake OpenAI-compatible server, aiohttp)
in place of the LLM; everything else in it is real. The CLI tests run `rejoinder` (`agent.cli`) in
a child process, which loads the real models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from agent.config import load_config
from agent.converse import converse
from agent.turns import APOLOGY
from pipeline.audio import resample
from stt.whisper import WhisperEngine, WhisperOptions
from tests.fakes import DATA, FakeLLMServer, closed_port, words

pytestmark = pytest.mark.models


def run_cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


async def test_spoken_conversation_from_a_recording(tmp_path):
    out = tmp_path / "c.wav"
    doc = await converse(load_config(), [DATA / "librivox-0880.wav"], out, fast=True)
    (turn,) = doc["turns"]
    assert {"young", "man"} <= set(words(turn["user_text"]))
    assert turn["agent_text"] and turn["heard_text"] and not turn["interrupted"]
    t = turn["timings_ms"]
    for key in ("endpoint", "llm_ttft", "first_phrase", "tts_ttfa", "voice_to_voice"):
        assert t[key] is not None and t[key] >= -1, key
    # the speculative pass at the first silence can finish before the endpoint: negative is fine
    assert t["stt_final"] is not None and t["stt_final"] > -t["endpoint"]
    assert t["voice_to_voice"] > t["endpoint"] + t["stt_final"]
    assert turn["tts"]["voice_id"] == "en_US-joe-medium" and turn["tts"]["chunks"] > 0
    assert 0 < turn["tts"]["rtf"] < 1.0
    # the timeline: user on the left, the agent's reply on the right, after the user
    audio, rate = sf.read(out, dtype="float32")
    assert audio.ndim == 2 and audio.shape[1] == 2
    left_active = np.flatnonzero(np.abs(audio[:, 0]) > 0.02)
    right_active = np.flatnonzero(np.abs(audio[:, 1]) > 0.02)
    assert right_active.size > rate * 0.5, "agent said less than half a second"
    assert right_active[0] > left_active[-1], "agent spoke before the user finished"
    # intelligible: the recorded agent channel transcribes back to the words it was meant to say
    heard = WhisperEngine(WhisperOptions(model="base")).transcribe(resample(audio[:, 1], rate, 16000)).text
    said, got = set(words(turn["heard_text"])), set(words(heard))
    assert len(said & got) >= 0.6 * len(said), (turn["heard_text"], heard)


async def test_barge_in_over_the_agents_own_echo_on_the_real_stack():
    """The turn-taking scenario on the real stack: the agent's voice leaks back at -10 dB, 80 ms
    late, and each next user turn cuts in 0.7 s into the reply. Every cut-in that lands while the
    agent is audible silences it; the echo alone never does; history keeps only what was heard."""
    clips = [DATA / "librivox-0880.wav", DATA / "goforward.wav", DATA / "cards" / "001.wav"]
    doc = await converse(load_config(), clips, None, fast=True, echo_db=-10, echo_delay_ms=80,
                         interrupt_after_s=0.7)
    s = doc["summary"]
    assert s["self_interruptions"] == 0, doc["turns"]
    assert s["user_interrupting"] == [False, True, True]
    for onset in s["user_speech_onsets"][1:]:
        reply = max((t for t in doc["turns"] if t["media_times"]["first_audio_played"] is not None
                     and t["media_times"]["first_audio_played"] <= onset),
                    key=lambda t: t["media_times"]["first_audio_played"])
        if reply["media_times"]["agent_stopped"] - onset < 0.3 and not reply["interrupted"]:
            continue  # the reply ended by itself as the user began: nothing to cut
        assert reply["interrupted"], reply
        mt = reply["media_times"]
        assert onset <= mt["agent_stopped"] < onset + 0.6, "the agent talked on over the user"
        assert 0 < reply["timings_ms"]["barge_in_to_silence"] < 500
        heard, said = reply["heard_text"].split(), reply["agent_text"].split()
        # (all of a short reply may have been heard when the cut-in came with its last word)
        assert heard and len(heard) <= len(said) and said[: len(heard) - 1] == heard[:-1], reply


@pytest.fixture
async def failing_llm():
    """An OpenAI-compatible endpoint that lists models but fails every chat request (HTTP 500)."""
    async with FakeLLMServer(root="fail") as server:
        yield server.url()


async def test_llm_failing_mid_conversation_gets_a_spoken_apology(failing_llm, tmp_path):
    cfg = load_config(**{"llm.url": failing_llm})
    doc = await converse(cfg, [DATA / "goforward.wav"], tmp_path / "c.wav", fast=True)
    (turn,) = doc["turns"]
    assert turn["error"] and "500" in turn["error"]
    assert turn["heard_text"] == APOLOGY
    assert doc["summary"]["errors"]


def test_unreachable_llm_is_a_clear_error():
    r = run_cli("converse", "--in", str(DATA / "goforward.wav"), "--fast",
                "--llm-url", f"http://127.0.0.1:{closed_port()}/v1")
    assert r.returncode == 2
    assert "unreachable" in r.stderr and "--llm-url" in r.stderr


def test_missing_and_non_audio_files_are_clear_errors(tmp_path):
    r = run_cli("converse", "--in", str(tmp_path / "nope.wav"))
    assert r.returncode == 2 and "audio file not found" in r.stderr
    junk = tmp_path / "junk.wav"
    junk.write_text("this is not audio")
    r = run_cli("converse", "--in", str(junk))
    assert r.returncode == 2 and "not a readable audio file" in r.stderr


def test_empty_and_silent_wavs_make_no_turn_and_exit_0(tmp_path):
    empty, silent = tmp_path / "empty.wav", tmp_path / "silent.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    sf.write(silent, np.zeros(32000, np.float32), 16000)
    r = run_cli("converse", "--in", str(empty), "--in", str(silent), "--json", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    assert "no turn" in r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["turns"] == []


def test_nan_samples_are_sanitized_not_fatal(tmp_path):
    speech, rate = sf.read(DATA / "goforward.wav", dtype="float32")
    speech[::97] = np.nan
    speech[5::101] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, speech, rate, subtype="FLOAT")
    r = run_cli("transcribe", str(path), "--json")
    assert r.returncode == 0, r.stderr
    assert {"forward", "meters"} <= set(words(json.loads(r.stdout)["text"]))


def test_a_cached_model_failing_its_checksum_is_named_and_rebuilt(tmp_path):
    """A damaged joined file in the cache is rebuilt from the packages (one line names it); a damaged
    package itself still stops with the reinstall message (tests/test_cache_integrity.py)."""
    cache = tmp_path / "cache"
    (cache / "base").mkdir(parents=True)
    (cache / "base" / "model.bin").write_bytes(b"not the model")
    r = run_cli("transcribe", str(DATA / "goforward.wav"), "--stt-model", "base",
                env={"REJOINDER_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    assert "model.bin failed its sha256 check; rebuilding it" in r.stderr
    assert "forward" in r.stdout.lower()
