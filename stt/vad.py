"""Voice activity: Silero VAD v6 on ONNX Runtime, and the segmenter that turns frames into speech events.

The model is run directly with onnxruntime (the `silero_vad` package would import torch for the
same ONNX file). The segmenter adds what a live conversation needs on top of per-window
probabilities: hysteresis, a minimum speech length (coughs and clicks are not turns), an early
"paused" signal for speculative STT/LLM work, an endpoint hangover, padding, and bounded memory.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from pipeline.assets import model_file
from pipeline.audio import STT_RATE, AudioFrame, StreamResampler, sanitize, to_mono
from pipeline.events import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted, VADEvent

WINDOW = 512  # samples per model call at 16 kHz (32 ms); the only size v5/v6 accept at this rate
CONTEXT = 64  # v5/v6 expect the previous call's last 64 samples prepended to each window
WINDOW_S = WINDOW / STT_RATE


_SESSIONS: dict[Path, ort.InferenceSession] = {}
_SESSIONS_LOCK = threading.Lock()


def _shared_session(path: Path) -> ort.InferenceSession:
    """One ONNX Runtime session per model file for the whole process.

    The LSTM state lives in each `SileroVAD` and is passed in on every call, so the session holds
    no per-stream state and `run` is thread-safe. A session per call kept ~MBs of native arenas
    per call that glibc never gave back (the soak found RSS growing with every call).
    """
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(path)
        if session is None:
            opts = ort.SessionOptions()
            # one thread each: a 32 ms window costs ~0.2 ms, and thread hand-offs would cost more
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            _SESSIONS[path] = session
        return session


class SileroVAD:
    """Speech probability of consecutive 512-sample windows of 16 kHz audio (Silero VAD v6, ONNX).

    The model is stateful (an LSTM state plus the 64-sample context), so windows must be fed in
    stream order; `reset()` starts a new stream.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else model_file("silero-vad")
        self._session = _shared_session(self.path)
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ValueError(f"{self.path} is not a Silero VAD v5/v6 model (inputs {sorted(names)}); "
                             "reinstall the pinned silero-vad package")
        self._sr = np.array(STT_RATE, dtype=np.int64)  # a 0-d int64 tensor, not shape (1,)
        self._buf = np.zeros((1, CONTEXT + WINDOW), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._buf[:] = 0.0

    def __call__(self, chunk: np.ndarray) -> float:
        if chunk.shape != (WINDOW,):
            raise ValueError(f"Silero VAD takes exactly {WINDOW} samples at 16 kHz, got shape {chunk.shape}")
        self._buf[0, CONTEXT:] = chunk
        out, self._state = self._session.run(None, {"input": self._buf, "state": self._state, "sr": self._sr})
        self._buf[0, :CONTEXT] = self._buf[0, -CONTEXT:]  # this window's tail is the next one's context
        return float(out[0, 0])


class VAD(Protocol):
    """What the segmenter needs from a model: stateful per-window probabilities. One per segmenter."""

    def __call__(self, chunk: np.ndarray) -> float: ...
    def reset(self) -> None: ...


@dataclass
class VADOptions:
    """How speech is cut into user utterances. Durations are rounded up to whole 32 ms windows."""

    threshold: float = 0.5  # probability that starts (or resumes) speech
    neg_threshold: float = 0.35  # speech continues until the probability falls below this (hysteresis)
    min_speech_ms: int = 250  # voiced audio needed before SpeechStarted: shorter bursts (coughs, clicks) are dropped
    pause_ms: int = 64  # silence before SpeechPaused (2 windows): speculative STT/LLM start here; a reply slower
    # than the hangover can gain at most (hangover - pause) from them
    hangover_ms: int = 500  # silence that ends the utterance (the endpoint)
    pad_ms: int = 200  # audio kept before the onset and after the last voiced window
    # a longer monologue is cut into utterances, so memory stays bounded and every Whisper pass is
    # short: audio + 1 s margin up to 20 s takes the short-window path (stt/whisper.py max_window_s);
    # a 30 s pass took 6-8 s on 2 cores, or stopped after its first sentence (LibriVox reading)
    max_utterance_s: float = 18.0
    max_gain_db: float = 24.0  # quiet input is boosted up to this much before the model (0 = off)
    silence_dbfs: float = -80.0  # windows below this level are digital silence: the model is not run

    def __post_init__(self) -> None:
        if not 0.0 < self.neg_threshold <= self.threshold < 1.0:
            raise ValueError(f"need 0 < neg_threshold <= threshold < 1, got {self.neg_threshold}, {self.threshold}")
        if not 0 < self.pause_ms <= self.hangover_ms:
            raise ValueError(f"need 0 < pause_ms <= hangover_ms, got {self.pause_ms}, {self.hangover_ms}")
        if self.max_utterance_s * 1000 <= self.pad_ms + self.min_speech_ms:
            raise ValueError(f"max_utterance_s={self.max_utterance_s} is too short to hold one utterance")


def _windows(ms: float) -> int:
    return max(1, math.ceil(ms / 1000 / WINDOW_S - 1e-9))


class VADSegmenter:
    """Turns audio frames (any rate, any length) into SpeechStarted/Paused/Resumed/Ended events.

    Times are media times taken from the frames' own timestamps, so gaps and jitter in the input
    show up in the events as they happened. Memory is bounded: a short pre-roll while idle, at most
    `max_utterance_s` of audio while speaking. A natural end is always preceded by SpeechPaused; a
    forced one (the length cap, `flush`) may not be, and a cut while still talking is followed at
    once by a new SpeechStarted. Synchronous, ~0.25 ms per 32 ms window: fine inline or in a thread.
    """

    def __init__(self, options: VADOptions | None = None, vad: VAD | None = None) -> None:
        self.options = o = options or VADOptions()
        self.vad: VAD = vad if vad is not None else SileroVAD()
        self._pause_w, self._hang_w = _windows(o.pause_ms), _windows(o.hangover_ms)
        self._min_w = _windows(o.min_speech_ms)
        self._pad = round(o.pad_ms / 1000 * STT_RATE)
        self._max = int(o.max_utterance_s * STT_RATE)
        self._max_gain = 10 ** (o.max_gain_db / 20)
        self._floor = 10 ** (o.silence_dbfs / 20)
        self.windows = 0  # windows seen, for stats and tests
        self.speech_windows = 0  # windows at or above `threshold`
        self.reset()

    def reset(self) -> None:
        """Forget the stream: model state, buffers and the utterance in progress."""
        self.vad.reset()
        self._resampler: StreamResampler | None = None
        self._pending = np.zeros(0, dtype=np.float32)  # 16 kHz samples not yet a whole window
        self._anchors: deque[tuple[float, float]] = deque()  # (16 kHz position, media time) per frame
        self._in_pos = 0.0  # 16 kHz position of the next input sample
        self._pos = 0  # 16 kHz position of the next window
        self._t_end = 0.0  # media time of the end of the last window
        self._dc: float | None = None
        self._peak = 0.0
        self._preroll: deque[np.ndarray] = deque(maxlen=math.ceil(self._pad / WINDOW))
        self._state = "idle"  # idle -> pending (voiced, not yet min_speech) -> speech -> idle
        self._buf: list[np.ndarray] = []
        self._buf_pos = 0  # 16 kHz position of the first buffered sample
        self._started = self._last_voiced = 0.0
        self._last_voiced_pos = 0
        self._voiced_w = self._silent_w = 0
        self._paused = False

    @property
    def in_speech(self) -> bool:
        return self._state == "speech"

    @property
    def buffered_samples(self) -> int:
        """Samples held right now (pre-roll, utterance, partial window): stays bounded however long the stream."""
        return len(self._pending) + sum(map(len, self._preroll)) + sum(map(len, self._buf))

    def set_min_speech_ms(self, ms: float) -> None:
        """Change how much voiced audio confirms speech (the turn manager lowers it for barge-in)."""
        self._min_w = _windows(ms)

    def utterance_audio(self) -> tuple[np.ndarray, float] | None:
        """The confirmed utterance so far (16 kHz, with pre-roll) and the media time it ends at; None
        outside speech. A copy, for interim transcription; read-only for the segmenter."""
        if self._state != "speech" or not self._buf:
            return None
        return np.concatenate(self._buf), self._t_end

    def process(self, frame: AudioFrame) -> list[VADEvent]:
        """Feed one frame; return the events it completed (usually none)."""
        samples = frame.samples
        if samples.ndim == 2 or samples.dtype != np.float32:
            samples = to_mono(samples)
        samples, _ = sanitize(samples)  # before resampling: one NaN would smear over the filter length
        events: list[VADEvent] = []
        if self._resampler is None or self._resampler.from_rate != frame.sample_rate:
            if self._resampler is not None:  # rate changed mid-stream: drain the old filter first
                events += self._feed(self._resampler(np.zeros(0, np.float32), last=True))
            self._in_pos = float(self._pos + len(self._pending))
            self._resampler = StreamResampler(frame.sample_rate, STT_RATE)
        self._anchors.append((self._in_pos, frame.timestamp))
        self._in_pos += len(samples) * STT_RATE / frame.sample_rate
        return events + self._feed(self._resampler(samples))

    def flush(self, now: float | None = None) -> list[VADEvent]:
        """End of stream: judge the last partial window and end speech in progress (at `now` if given)."""
        events: list[VADEvent] = []
        if self._resampler is not None:
            events += self._feed(self._resampler(np.zeros(0, np.float32), last=True))
        if len(self._pending) and self._anchors:
            events += self._feed(np.zeros(WINDOW - len(self._pending), np.float32))
        if self._state == "speech":
            events.append(self._end(self._t_end if now is None else now))
        self.reset()
        return events

    def _feed(self, samples: np.ndarray) -> list[VADEvent]:
        events: list[VADEvent] = []
        buf = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        n = len(buf) // WINDOW
        for i in range(n):
            events += self._window(np.array(buf[i * WINDOW : (i + 1) * WINDOW], dtype=np.float32))
        self._pending = np.array(buf[n * WINDOW :], dtype=np.float32)
        return events

    def _time(self, pos: float) -> float:
        while len(self._anchors) > 1 and self._anchors[1][0] <= pos:
            self._anchors.popleft()
        p0, t0 = self._anchors[0]
        return t0 + (pos - p0) / STT_RATE

    def _prob(self, x: np.ndarray) -> float:
        peak = float(np.abs(x).max())
        if math.sqrt(float(np.dot(x, x)) / WINDOW) < self._floor:
            # Digital silence (a muted track, the echo canceller muting the agent's voice): no speech,
            # and no CPU spent on it. The reset matters: over WebRTC, echo residue that slips through
            # the canceller's gate between muted frames would otherwise add up to a self-interruption
            # (3 in 18 echo replies without it, 0 with it); the price is 1–3 windows of onset lag
            # for a user cutting in over the agent.
            self.vad.reset()
            return 0.0
        # quiet input is boosted for the model only; the gain follows a slowly decaying peak, and the
        # current window's own peak caps it so a sudden loud onset is never driven into clipping
        self._peak = max(peak, self._peak * 0.995)
        gain = min(self._max_gain, 0.1 / max(self._peak, 1e-9)) if self._max_gain > 1 else 1.0
        return self.vad(x * gain if gain > 1.0 else x)

    def _window(self, x: np.ndarray) -> list[VADEvent]:
        o = self.options
        # DC offset: subtract a running mean (time constant ~0.6 s), seeded by the first window so a
        # constant offset is gone from the very first sample
        m = float(x.mean())
        self._dc = m if self._dc is None else self._dc + 0.05 * (m - self._dc)
        x = np.clip(x - np.float32(self._dc), -1.0, 1.0)
        t, pos = self._time(self._pos), self._pos
        self._pos += WINDOW
        self._t_end = t + WINDOW_S
        p = self._prob(x)
        self.windows += 1
        self.speech_windows += int(p >= o.threshold)
        # hysteresis: once silence has begun, only a confident window counts as speech again
        voiced = p >= o.threshold or (self._state != "idle" and self._silent_w == 0 and p >= o.neg_threshold)
        events: list[VADEvent] = []
        if self._state == "idle":
            if not voiced:
                self._preroll.append(x)
                return events
            self._state, self._started, self._voiced_w, self._silent_w = "pending", t, 0, 0
            pre = np.concatenate(self._preroll)[-self._pad :] if self._preroll and self._pad else x[:0]
            self._buf, self._buf_pos = [pre], pos - len(pre)
            self._preroll.clear()
        self._buf.append(x)
        if voiced:
            if self._paused:
                events.append(SpeechResumed(t))
                self._paused = False
            self._voiced_w += 1
            self._silent_w = 0
            self._last_voiced, self._last_voiced_pos = t + WINDOW_S, pos + WINDOW
            if self._state == "pending" and self._voiced_w >= self._min_w:
                self._state = "speech"
                events.append(SpeechStarted(self._started))
        else:
            self._silent_w += 1
            if self._state == "speech" and not self._paused and self._silent_w >= self._pause_w:
                self._paused = True
                events.append(SpeechPaused(self._last_voiced, np.concatenate(self._buf)))
            if self._silent_w >= self._hang_w:
                if self._state == "speech":
                    events.append(self._end(self._t_end))
                else:  # too short to be a turn: forget it, but keep its tail as pre-roll
                    self._to_idle()
        # cut before the next window would push the utterance past max_utterance_s
        if self._state == "speech" and self._pos - self._buf_pos + WINDOW > self._max:
            if voiced:  # still talking: carry on in a new utterance, split where it is quietest
                events += self._split()
            else:
                events.append(self._end(self._t_end, cut=True))
        return events

    def _split(self) -> list[VADEvent]:
        """Cut a monologue at its quietest window of the last second (likely between two words,
        so no word is torn across two transcripts); the rest starts the next utterance at once."""
        audio = np.concatenate(self._buf)
        last = audio[max(0, len(audio) - STT_RATE) :]
        n = len(last) // WINDOW
        energy = np.mean(last[len(last) - n * WINDOW :].reshape(n, WINDOW) ** 2, axis=1)
        k = len(audio) - (n - int(np.argmin(energy))) * WINDOW  # samples kept in this utterance
        at = self._time(self._buf_pos + k)
        ended = SpeechEnded(self._started, at, self._t_end, audio[:k], continued=True)
        self._state, self._started, self._voiced_w, self._silent_w = "speech", at, self._min_w, 0
        self._buf, self._buf_pos = [audio[k:]], self._buf_pos + k
        self._last_voiced, self._last_voiced_pos = self._t_end, self._pos
        self._preroll.clear()
        self._paused = False
        return [ended, SpeechStarted(at)]

    def _end(self, decided_at: float, cut: bool = False) -> SpeechEnded:
        audio = np.concatenate(self._buf)
        if not cut:
            audio = audio[: self._last_voiced_pos + self._pad - self._buf_pos]
        ended = SpeechEnded(self._started, self._last_voiced, decided_at, audio)
        self._to_idle()
        return ended

    def _to_idle(self) -> None:
        tail = np.concatenate(self._buf)[-self._pad :] if self._buf and self._pad else None
        self._preroll.clear()
        if tail is not None and len(tail):
            self._preroll.append(tail)
        self._state, self._buf, self._paused, self._silent_w, self._voiced_w = "idle", [], False, 0, 0
