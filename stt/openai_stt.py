"""Hosted STT: any OpenAI-compatible `/audio/transcriptions` endpoint, behind the engine interface.

Same contract as `WhisperEngine.transcribe` (blocking, 16 kHz mono float32 in, `TranscriptionResult`
out), so the streaming transcriber schedules it exactly like the local model. The utterance is sent
as a 16-bit WAV built in memory.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import soundfile as sf

from pipeline.stages import TranscriptionResult
from stt.whisper import WhisperOptions

BUNDLED = ("tiny.en", "base")


class STTError(RuntimeError):
    """The transcription endpoint failed; the message names it and the cause."""


class OpenAITranscriber:
    """Transcribes through `client.audio.transcriptions.create`. The API key comes from
    `api_key` or $OPENAI_API_KEY (a local server usually needs none)."""

    def __init__(self, base_url: str, model: str = "whisper-1", api_key: str | None = None,
                 language: str | None = "en", timeout_s: float = 30.0) -> None:
        from openai import OpenAI  # heavy import, keep it out of CLI start-up

        self.base_url = base_url.rstrip("/")
        # a bundled model key means "no model named for the endpoint": use OpenAI's name for Whisper
        self.model_name = "whisper-1" if model in BUNDLED else model
        self.language = language
        self._client = OpenAI(base_url=self.base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                              timeout=timeout_s, max_retries=1)

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> TranscriptionResult:
        """Transcribe 16 kHz mono float32 audio; empty or silent audio gives empty text without a request."""
        import openai

        audio_s = len(audio) / 16000
        if audio.size < 1600 or not np.any(audio):
            return TranscriptionResult("", 0.0, audio_s)
        wav = io.BytesIO()
        sf.write(wav, np.clip(audio, -1.0, 1.0), 16000, format="WAV", subtype="PCM_16")
        extra = {"language": self.language} if self.language else {}
        if prompt:
            extra["prompt"] = prompt
        t0 = time.perf_counter()
        try:
            # **extra (optional language/prompt) matches no single overload of the openai stubs;
            # openai.omit would, but it is newer than the supported openai>=1.40
            r = self._client.audio.transcriptions.create(  # type: ignore[call-overload]
                model=self.model_name, file=("utterance.wav", wav.getvalue(), "audio/wav"),
                response_format="json", **extra,
            )
        except openai.OpenAIError as exc:
            raise STTError(f"transcription endpoint {self.base_url} failed: {exc}; check --stt-url") from None
        text = getattr(r, "text", r if isinstance(r, str) else "")
        return TranscriptionResult(" ".join(str(text).split()), time.perf_counter() - t0, audio_s)


def load(options: WhisperOptions) -> OpenAITranscriber:
    """The engine registered as "openai" in `stt/engines.py`: `[stt] url` names the endpoint."""
    if not options.url:
        raise ValueError("the openai STT backend needs an endpoint: stt.url (--stt-url)")
    return OpenAITranscriber(options.url, options.model, language=options.language)
