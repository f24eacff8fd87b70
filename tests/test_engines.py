"""Adding an engine is one file plus one registration line (`stt/engines.py`, `tts/engines.py`).

Fakes: the engines written here into a temporary module stand in for a new backend; the registries,
`load_config`, `load_stt`/`load_tts` and `StreamingTTS` are real. No model is loaded.
"""

from __future__ import annotations

import contextlib
import sys
import textwrap

import numpy as np
import pytest

from agent.config import load_config
from stt import engines as stt_engines
from tts import engines as tts_engines
from tts.stream import StreamingTTS

BEEP_VOICE = '''
    """A new voice backend: one file with `load(options)`."""
    import numpy as np

    from pipeline.stages import VoiceOptions


    class BeepVoice:
        sample_rate = 16_000

        def __init__(self, voice: str) -> None:
            self.voice_id, self.options = voice, VoiceOptions()

        def synthesize(self, text: str) -> np.ndarray:
            return np.full(160 * len(text.split()), 0.1, np.float32)  # 10 ms a word


    def load(options):
        return BeepVoice(options.voice)
'''

ECHO_STT = '''
    """A new speech recogniser: one file with `load(options)`."""
    from pipeline.stages import TranscriptionResult


    class CountingSTT:
        def __init__(self, language: str) -> None:
            self.language = language

        def transcribe(self, audio):
            return TranscriptionResult(f"{len(audio)} samples", 0.0, len(audio) / 16000)


    def load(options):
        return CountingSTT(options.language)
'''


@pytest.fixture
def new_module(tmp_path, monkeypatch):
    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in ("beep_voice", "counting_stt"):
        sys.modules.pop(name, None)


async def test_a_new_voice_is_one_file_and_one_registration_line(new_module, monkeypatch):
    monkeypatch.setitem(tts_engines.ENGINES, "beep", new_module("beep_voice", BEEP_VOICE))  # the one line
    cfg = load_config(**{"tts.backend": "beep", "tts.voice": "beep-1"})
    engine = tts_engines.load_tts(cfg.tts)
    assert engine.voice_id == "beep-1"
    tts = StreamingTTS(engine, chunk_ms=cfg.tts.chunk_ms)
    async with contextlib.aclosing(tts.speak("Hello there, caller.")) as chunks:
        audio = np.concatenate([c.samples async for c in chunks])
    assert len(audio) == 3 * 160 and tts.last_metrics is not None and tts.last_metrics.ttfa_ms is not None


def test_a_new_speech_recogniser_is_one_file_and_one_registration_line(new_module, monkeypatch):
    monkeypatch.setitem(stt_engines.ENGINES, "counting", new_module("counting_stt", ECHO_STT))
    cfg = load_config(**{"stt.backend": "counting", "stt.language": "de"})
    engine = stt_engines.load_stt(cfg.stt)
    assert engine.transcribe(np.zeros(1600, np.float32)).text == "1600 samples"


def test_an_unregistered_backend_is_refused_before_anything_loads():
    with pytest.raises(ValueError, match="unknown TTS backend 'beep'; known: piper"):
        load_config(**{"tts.backend": "beep"})
    with pytest.raises(ValueError, match="unknown STT backend 'counting'"):
        stt_engines.load_stt(load_config(**{"stt.backend": "counting"}).stt)
