"""faster-whisper (CTranslate2) transcription of one utterance, off the event loop.

Whisper is trained on 30 s windows, and `WhisperModel.transcribe` pads every call to 30 s of features,
so its encoder costs the same for a 2 s utterance as for a 30 s one. The short-window path encodes
only `max(min_window_s, audio + margin)` seconds of features (CTranslate2's encoder accepts any
length up to 30 s; whisper.cpp's `audio_ctx` is the same trick): 5–10× less encoder work on short
utterances. A window with little padding after the speech makes Whisper loop ("ten of clubs ten of
clubs …"), so the decoder gets a token budget scaled to the audio, and an output that looks
degenerate (hit the budget, a repeated phrase, empty where the model heard speech, or too
unsure) is thrown away and the utterance goes through the full 30 s path; so does audio longer
than `max_window_s`. `WhisperEngine.stats` counts which path each call took.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.assets import ASSETS, model_path
from pipeline.stages import TranscriptionResult

log = logging.getLogger(__name__)

DEFAULT_STT_MODEL = "tiny.en"

_RATE = 16000
_FRAMES_PER_S = 100  # Whisper's mel hop is 10 ms
# faster-whisper's thresholds, so both paths drop the same things: a result is no speech when
# no_speech_prob > 0.6 and avg_logprob < -1.0; below -1.0 with speech the full path resamples
_NO_SPEECH = 0.6
_LOGPROB = -1.0


@dataclass
class WhisperOptions:
    """`model` is a bundled model key (tiny.en, base) or a path to any CTranslate2 Whisper directory.

    The short-window path (`short_window`) encodes `max(min_window_s, ceil(audio + window_margin_s))`
    seconds instead of 30; `min_window_s` below ~10 s makes Whisper loop or drop words on 1–2 s clips
    (measured on tests/data: see tests/test_whisper_fast.py)."""

    backend: str = ""  # an engine of stt/engines.py; "" = "whisper", or "openai" when `url` is set
    model: str = DEFAULT_STT_MODEL
    compute_type: str = "int8"
    beam_size: int = 1
    threads: int = 1  # 2-core budget: the LLM and TTS need the other core
    language: str = "en"
    url: str | None = None  # an OpenAI-compatible endpoint (…/v1) instead of a local model; `model` names its model
    short_window: bool = True  # encode only the audio's own window, not 30 s (falls back to 30 s when unsure)
    min_window_s: float = 10.0
    window_margin_s: float = 1.0  # padding after the audio, beyond which the window is rounded up to whole seconds
    max_window_s: float = 20.0  # longer audio takes the full path (the saving shrinks; the risk does not)
    tokens_per_s: float = 7.0  # decoder budget: 10 + this × audio seconds (speech is ≤ ~5 tokens/s)
    repetition_penalty: float = 1.0  # short path only; > 1 or no_repeat_ngram_size turn a clean, detectable
    no_repeat_ngram_size: int = 0  # loop into garbage that is not (measured), so both are off by default

    def __post_init__(self) -> None:
        if not 1.0 <= self.min_window_s <= 30.0 or not self.min_window_s <= self.max_window_s <= 30.0:
            raise ValueError(f"need 1 <= min_window_s <= max_window_s <= 30, got {self.min_window_s}, "
                             f"{self.max_window_s}")
        if self.window_margin_s < 0 or self.tokens_per_s <= 0:
            raise ValueError(f"window_margin_s must be >= 0 and tokens_per_s > 0, got {self.window_margin_s}, "
                             f"{self.tokens_per_s}")


class WhisperEngine:
    """A loaded Whisper model. `transcribe` is blocking and thread-safe (one call at a time).

    `stats` counts calls by path: "short", "full" (not eligible for the short path) and
    "fallback:<reason>" (short output rejected: runaway, loop, empty, unsure)."""

    def __init__(self, options: WhisperOptions | None = None) -> None:
        from faster_whisper import WhisperModel  # heavy import, keep it out of CLI start-up
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.options = options or WhisperOptions()
        path = _resolve(self.options.model)
        self.model_name = self.options.model
        self._multilingual = "base" == self.options.model or not self.options.model.endswith(".en")
        self._model = WhisperModel(
            str(path), device="cpu", compute_type=self.options.compute_type, cpu_threads=self.options.threads
        )
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        ct2_multilingual = self._model.model.is_multilingual
        language = self.options.language if ct2_multilingual else "en"
        # No language on a multilingual model means detection: left to the full path.
        self._tokenizer = (Tokenizer(self._model.hf_tokenizer, ct2_multilingual, task="transcribe", language=language)
                           if language else None)
        if self._tokenizer is not None:
            self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))
            self._sot = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> TranscriptionResult:
        """Transcribe 16 kHz mono float32 audio; empty or silent audio gives empty text."""
        audio_s = len(audio) / _RATE
        if audio.size < 1600 or not np.any(audio):
            return TranscriptionResult("", 0.0, audio_s)
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        t0 = time.perf_counter()
        with self._lock:
            window_s = self.window_s(audio_s)
            text, kind = None, "full"
            if window_s is not None:
                text, why = self._short(audio, window_s, prompt)
                kind = "short" if text is not None else "fallback"
                self.stats[kind if text is not None else f"fallback:{why}"] += 1
                if text is None:
                    log.debug("short-window output rejected (%s) on %.2f s; running the full 30 s path", why, audio_s)
            else:
                self.stats["full"] += 1
            if text is None:
                text = self._full(audio, prompt)
        return TranscriptionResult(_clean(text), time.perf_counter() - t0, audio_s, kind)

    def window_s(self, audio_s: float) -> float | None:
        """Seconds of features the short path encodes for this much audio; None: the full path."""
        o = self.options
        if not o.short_window or self._tokenizer is None:
            return None
        window = max(o.min_window_s, math.ceil(audio_s + o.window_margin_s))
        return float(window) if window <= o.max_window_s else None

    def _full(self, audio: np.ndarray, prompt: str | None) -> str:
        segments, _info = self._model.transcribe(
            audio,
            language=self.options.language if self._multilingual else None,
            beam_size=self.options.beam_size,
            condition_on_previous_text=False,
            # long speech without timestamp tokens: the decoder may stop after its first sentence
            # (measured: 20 of 92 words of 30 s of reading); with them it goes on segment by segment
            without_timestamps=len(audio) <= 10 * _RATE,
            vad_filter=False,
            initial_prompt=prompt,
        )
        return " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.8 or s.avg_logprob > -1.0)

    def _short(self, audio: np.ndarray, window_s: float, prompt: str | None) -> tuple[str | None, str]:
        """(text, "") or (None, why the output was rejected)."""
        o, tok = self.options, self._tokenizer
        assert tok is not None, "the short path runs only with a tokenizer (see window_s)"
        frames = int(window_s * _FRAMES_PER_S)
        features = self._model.feature_extractor(audio)[:, :frames]
        # Zero padding in feature space, as faster-whisper pads its 30 s window (measured: padding the
        # audio with silence or room noise before the mel loops more often).
        features = np.pad(features, ((0, 0), (0, frames - features.shape[1])))
        encoded = self._model.encode(np.ascontiguousarray(features))
        tokens = list(self._sot)
        if prompt and prompt.strip():
            tokens = [tok.sot_prev, *tok.encode(" " + prompt.strip())[-(self._model.max_length // 2 - 1):], *tokens]
        budget = int(10 + o.tokens_per_s * len(audio) / _RATE)
        # CTranslate2 4.x makes at most min(max_length // 2, max_length - len(prompt) + 1) new Whisper
        # tokens (measured), hence the doubling.
        max_length = min(self._model.max_length, max(2 * budget, budget + len(tokens)))
        result = self._model.model.generate(
            encoded, [tokens], beam_size=o.beam_size, max_length=max_length, return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self._suppress,
            repetition_penalty=o.repetition_penalty, no_repeat_ngram_size=o.no_repeat_ngram_size,
        )[0]
        ids = result.sequences_ids[0]
        if len(ids) >= min(budget, max_length // 2):
            return None, "runaway"
        text = tok.decode(ids).strip()
        avg_logprob = result.scores[0] * len(ids) / (len(ids) + 1)  # as faster-whisper computes it
        no_speech = result.no_speech_prob
        if no_speech > _NO_SPEECH and avg_logprob < _LOGPROB:
            return "", ""  # no speech: what the full path would drop
        if _loops(text):
            return None, "loop"
        if not _clean(text) and no_speech < 0.5:
            return None, "empty"
        if avg_logprob < _LOGPROB:
            return None, "unsure"  # the full path resamples at higher temperatures here
        return text, ""


def load(options: WhisperOptions) -> WhisperEngine:
    """The engine registered as "whisper" in `stt/engines.py`."""
    return WhisperEngine(options)


def _resolve(model: str) -> Path:
    if model in ASSETS:
        return model_path(model)
    p = Path(model).expanduser()
    if (p / "model.bin").is_file():
        return p
    bundled = ", ".join(k for k in ASSETS if k in ("tiny.en", "base"))
    raise ValueError(f"unknown STT model '{model}': use one of {bundled} or a CTranslate2 Whisper directory")


def _loops(text: str) -> bool:
    """Whisper's failure mode on a window without enough padding: a phrase said again right after
    itself ("ten of clubs ten of clubs ten"), or one word three times in a row."""
    w = re.sub(r"[^\w' ]+", " ", text.lower()).split()
    for i in range(len(w) - 2):
        if w[i] == w[i + 1] == w[i + 2]:
            return True
    for n in range(2, len(w) // 2 + 1):
        for i in range(len(w) - 2 * n + 1):
            if w[i:i + n] == w[i + n:i + 2 * n]:
                return True
    return False


_HALLUCINATIONS = {"you", "thank you.", "thanks for watching!", "thank you for watching.", "."}


def _clean(text: str) -> str:
    text = " ".join(text.split())
    # Whisper's stock hallucinations on near-silence
    return "" if text.lower() in _HALLUCINATIONS else text
