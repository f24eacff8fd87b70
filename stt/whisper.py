"""faster-whisper (CTranslate2) transcription of one utterance, off the event loop.

Whisper pads every call to 30 s of features, so one call costs about the same for a short or a
long utterance; the engine is built to be called once per utterance (or per interim pass).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.assets import ASSETS, model_path

log = logging.getLogger(__name__)

DEFAULT_STT_MODEL = "tiny.en"


@dataclass
class WhisperOptions:
    """`model` is a bundled model key (tiny.en, base) or a path to any CTranslate2 Whisper directory."""

    model: str = DEFAULT_STT_MODEL
    compute_type: str = "int8"
    beam_size: int = 1
    threads: int = 1  # 2-core budget: the LLM and TTS need the other core
    language: str = "en"
    url: str | None = None  # an OpenAI-compatible endpoint (…/v1) instead of a local model; `model` names its model


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    compute_s: float  # wall time of the call
    audio_s: float


class WhisperEngine:
    """A loaded Whisper model. `transcribe` is blocking and thread-safe (one call at a time)."""

    def __init__(self, options: WhisperOptions | None = None) -> None:
        from faster_whisper import WhisperModel  # heavy import, keep it out of CLI start-up

        self.options = options or WhisperOptions()
        path = _resolve(self.options.model)
        self.model_name = self.options.model
        self._multilingual = "base" == self.options.model or not self.options.model.endswith(".en")
        self._model = WhisperModel(
            str(path), device="cpu", compute_type=self.options.compute_type, cpu_threads=self.options.threads
        )
        self._lock = threading.Lock()

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> TranscriptionResult:
        """Transcribe 16 kHz mono float32 audio; empty or silent audio gives empty text."""
        audio_s = len(audio) / 16000
        if audio.size < 1600 or not np.any(audio):
            return TranscriptionResult("", 0.0, audio_s)
        t0 = time.perf_counter()
        with self._lock:
            segments, _info = self._model.transcribe(
                np.ascontiguousarray(audio, dtype=np.float32),
                language=self.options.language if self._multilingual else None,
                beam_size=self.options.beam_size,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
                initial_prompt=prompt,
            )
            text = " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.8 or s.avg_logprob > -1.0)
        return TranscriptionResult(_clean(text), time.perf_counter() - t0, audio_s)


def load_engine(options: WhisperOptions | None = None):
    """The configured engine: the local Whisper model, or the hosted endpoint when `options.url` is set."""
    options = options or WhisperOptions()
    if options.url:
        from stt.openai_stt import OpenAITranscriber

        return OpenAITranscriber(options.url, options.model, language=options.language)
    return WhisperEngine(options)


def _resolve(model: str) -> Path:
    if model in ASSETS:
        return model_path(model)
    p = Path(model).expanduser()
    if (p / "model.bin").is_file():
        return p
    bundled = ", ".join(k for k in ASSETS if k in ("tiny.en", "base"))
    raise ValueError(f"unknown STT model '{model}': use one of {bundled} or a CTranslate2 Whisper directory")


_HALLUCINATIONS = {"you", "thank you.", "thanks for watching!", "thank you for watching.", "."}


def _clean(text: str) -> str:
    text = " ".join(text.split())
    # Whisper's stock hallucinations on near-silence
    return "" if text.lower() in _HALLUCINATIONS else text
