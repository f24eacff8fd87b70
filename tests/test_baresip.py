"""A real softphone calls the real agent: baresip (Debian's baresip-core, a WAV file as its
microphone, what it hears dumped to WAV by its sndfile module) dials `rejoinder sip` serving the
order desk on the REAL embedded stack, inside a loopback-only network namespace; Whisper then
transcribes what the caller heard. Prints the caller-side voice-to-voice (a figure, not a target:
targets live in benches)."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.audio import read_audio, resample
from tests.fakes import DATA

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """poll_method poll
sip_listen 127.0.0.1:5062
audio_player aufile,{d}/heard.wav
audio_source aufile,{d}/mic.wav
audio_alert aufile,{d}/alert.wav
ausrc_srate 8000
auplay_srate 8000
module_path /usr/lib/baresip/modules
module stdio.so
module g711.so
module aufile.so
module sndfile.so
module_app account.so
module_app menu.so
snd_path {d}
"""

SCRIPT = """set -e
ip link set lo up
cd {root}
{py} -m agent.cli sip --listen 127.0.0.1:5060 --agent demos/order_desk.py:agent > {d}/server.log 2>&1 &
SRV=$!
for i in $(seq 1 90); do grep -q "answering SIP calls" {d}/server.log && break; sleep 1; done
timeout 60 baresip -f {d} -4 -n 127.0.0.1 -e "/dial sip:agent@127.0.0.1:5060" -t 30 > {d}/baresip.log 2>&1 || true
kill $SRV; wait $SRV 2>/dev/null || true
"""

SPEECH_AT = 6.0  # seconds of silence before the caller speaks (the greeting plays meanwhile)


@pytest.mark.phone
@pytest.mark.models
def test_baresip_calls_the_order_desk_and_hears_it_answer(tmp_path):
    if not shutil.which("baresip") or not Path("/usr/lib/baresip/modules/aufile.so").exists():
        pytest.skip("baresip missing: apt-get install -y baresip-core")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("no network namespace here (unshare -n): SIP tests run only where nothing can leave the machine")
    audio, rate = read_audio(DATA / "goforward.wav")
    speech = resample(audio, rate, 8000)
    mic = np.concatenate([np.zeros(int(8000 * SPEECH_AT), np.float32), speech, np.zeros(8000 * 14, np.float32)])
    sf.write(tmp_path / "mic.wav", mic, 8000, subtype="PCM_16")
    (tmp_path / "config").write_text(CONFIG.format(d=tmp_path))
    (tmp_path / "accounts").write_text("<sip:caller@127.0.0.1>;regint=0\n")
    script = tmp_path / "run.sh"
    script.write_text(SCRIPT.format(root=ROOT, py=sys.executable, d=tmp_path))
    subprocess.run(["unshare", "-n", "sh", str(script)], timeout=200, check=True)
    log = (tmp_path / "baresip.log").read_text(errors="replace")
    assert "Call established" in log, log[-2000:]
    (heard_file,) = glob.glob(str(tmp_path / "dump-*-dec.wav"))
    heard, hr = read_audio(heard_file)
    from stt.engines import load_stt

    text = load_stt().transcribe(resample(heard, hr, 16000)).text.lower()
    print(f"\nthe caller heard: {text!r}")
    assert "calling" in text and "order" in text, text  # the greeting, over G.711, through a real phone
    # caller-side voice-to-voice: end of the caller's speech → the agent's next audio in what it heard
    end = SPEECH_AT + len(speech) / 8000
    level = np.abs(heard) > 0.02
    after = np.nonzero(level[int(end * hr):])[0]
    if after.size:
        print(f"caller-side voice-to-voice ≈ {after[0] / hr * 1000:.0f} ms (includes the 500 ms end-of-turn wait)")
