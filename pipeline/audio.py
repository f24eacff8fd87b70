"""Audio frames and the conversions between what an edge delivers and what a stage needs.

Everything inside the pipeline is mono float32 in [-1, 1]; sample rates are explicit on every
frame. Resampling is done by soxr (streaming, so frame boundaries leave no clicks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

log = logging.getLogger(__name__)

STT_RATE = 16_000  # Silero VAD and Whisper both want 16 kHz
FRAME_MS = 20


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """A short run of mono float32 samples that starts at a media time (seconds, pipeline clock)."""

    samples: np.ndarray
    sample_rate: int
    timestamp: float

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end(self) -> float:
        return self.timestamp + self.duration


class AudioFileError(ValueError):
    """The file is missing, unreadable or not audio."""


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read any file libsndfile understands as mono float32; name the problem if it cannot."""
    p = Path(path)
    if not p.exists():
        raise AudioFileError(f"audio file not found: {p}")
    if p.is_dir():
        raise AudioFileError(f"expected an audio file, got a directory: {p}")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioFileError(f"{p} is not a readable audio file ({exc})") from None
    return to_mono(data), int(rate)


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average channels (shape (n, ch) or (n,)) into one float32 channel."""
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr.mean(axis=1) if arr.shape[1] > 1 else arr[:, 0]
    if arr.dtype.kind in "iu":
        scale = float(np.iinfo(arr.dtype).max) + 1.0
        arr = arr.astype(np.float32) / scale
    return np.ascontiguousarray(arr, dtype=np.float32)


def sanitize(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN/inf with silence and clip to [-1, 1]; return the clean array and how many were bad.

    A broken capture device can emit NaNs; one NaN would poison VAD state and Whisper's features.
    """
    bad = ~np.isfinite(samples)
    n_bad = int(bad.sum())
    if n_bad:
        samples = np.where(bad, 0.0, samples).astype(np.float32)
    return np.clip(samples, -1.0, 1.0, dtype=np.float32) if samples.size else samples, n_bad


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a whole buffer (offline use: files, tests)."""
    if from_rate == to_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, from_rate, to_rate).astype(np.float32, copy=False)


class StreamResampler:
    """Streaming resampler that keeps filter state across frames (no clicks at frame edges)."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate, self.to_rate = from_rate, to_rate
        self._rs = None if from_rate == to_rate else soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32")

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._rs is None:
            return samples
        return self._rs.resample_chunk(samples.astype(np.float32, copy=False), last=last)


def frames_from_array(samples: np.ndarray, sample_rate: int, start: float = 0.0, frame_ms: int = FRAME_MS):
    """Cut a buffer into consecutive frames with media timestamps (the last one may be short)."""
    step = sample_rate * frame_ms // 1000
    for i in range(0, len(samples), step):
        yield AudioFrame(samples[i : i + step], sample_rate, start + i / sample_rate)


def rms_dbfs(samples: np.ndarray) -> float:
    """Level in dBFS (-inf for digital silence)."""
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20 * np.log10(rms) if rms > 0 else float("-inf")
