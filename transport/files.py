"""Files as an edge: a scripted microphone that plays WAV turns in (real) time, and a stereo
timeline recorder (user left, agent right) that places every sample at the media time it happened."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.audio import FRAME_MS, AudioFrame, frames_from_array, resample
from pipeline.clock import Clock

log = logging.getLogger(__name__)


class ScriptedMicrophone:
    """Streams user turns as a microphone would: 20 ms frames, paced on the clock, silence between.

    The next turn starts `gap_s` after the agent is done (`is_idle()`), never before `min_tail_s` of
    silence has passed (so the VAD can see the end of speech). A turn the agent never answers (no
    speech in it) does not block: after `max_wait_s` the script goes on.
    """

    def __init__(
        self,
        clock: Clock,
        turns: list[tuple[np.ndarray, int]],
        is_idle: Callable[[], bool],
        gap_s: float = 1.0,
        min_tail_s: float = 0.8,
        max_wait_s: float = 60.0,
        lead_in_s: float = 0.5,
        interrupt_after_s: float | None = None,
        speaking_since: Callable[[], float | None] = lambda: None,
        echo: "EchoPath | None" = None,
    ) -> None:
        self.clock, self.turns, self.is_idle = clock, turns, is_idle
        self.gap_s, self.min_tail_s, self.max_wait_s, self.lead_in_s = gap_s, min_tail_s, max_wait_s, lead_in_s
        # barge-in script: the next turn starts this long after the agent's first audio, over it
        self.interrupt_after_s = interrupt_after_s
        self.speaking_since = speaking_since
        self.echo = echo
        self.turn_starts: list[float] = []
        self.user_spans: list[tuple[float, float]] = []  # media times the user's audio was playing
        self.speech_onsets: list[float] = []  # media time each turn's speech begins (not its file)
        self.interrupting: list[bool] = []  # whether each turn was started over the agent's reply

    async def frames(self) -> AsyncIterator[AudioFrame]:
        t = self.clock.now()
        rate = self.turns[0][1] if self.turns else 16000
        step = rate * FRAME_MS // 1000
        silence = np.zeros(step, np.float32)

        async def emit(samples: np.ndarray, rate: int):
            nonlocal t
            for f in frames_from_array(samples, rate, t):
                await self.clock.sleep_until(f.timestamp)
                yield f if self.echo is None else self.echo.mix(f)
            t += len(samples) / rate

        async for f in emit(np.zeros(int(self.lead_in_s * rate), np.float32), rate):
            yield f
        interrupting = False
        if not self.is_idle():  # the agent greets first: wait for it like for any reply (or cut in)
            begin = t
            while (not self.is_idle() and t - begin < self.max_wait_s
                   and not (interrupting := self._time_to_interrupt(t))):
                async for f in emit(silence, rate):
                    yield f
            if not interrupting:
                async for f in emit(np.zeros(int(self.gap_s * rate), np.float32), rate):
                    yield f
        for i, (audio, rate) in enumerate(self.turns):
            step = rate * FRAME_MS // 1000
            silence = np.zeros(step, np.float32)
            onset = speech_onset(audio, rate)
            if interrupting:
                # a user cutting in starts talking at once: the clip's leading silence (or breath)
                # would otherwise land the words late, after a short reply had already ended
                lead = max(0, onset - rate * FRAME_MS // 1000)
                audio, onset = audio[lead:], onset - lead
            self.turn_starts.append(t)
            self.speech_onsets.append(t + onset / rate)
            self.interrupting.append(interrupting)
            async for f in emit(audio, rate):
                yield f
            self.user_spans.append((self.turn_starts[-1], t))
            last = i == len(self.turns) - 1
            waited = 0.0
            interrupting = False
            while waited < self.min_tail_s or (not self.is_idle() and waited < self.max_wait_s):
                if not last and self._time_to_interrupt(t):
                    interrupting = True
                    break
                async for f in emit(silence, rate):
                    yield f
                waited += step / rate
            else:
                if waited >= self.max_wait_s:
                    log.warning("turn %d: the agent did not finish within %.0f s; going on", i, self.max_wait_s)
                async for f in emit(np.zeros(int(self.gap_s * rate), np.float32), rate):
                    yield f

    def _time_to_interrupt(self, t: float) -> bool:
        if self.interrupt_after_s is None:
            return False
        since = self.speaking_since()
        return since is not None and t >= since + self.interrupt_after_s


def speech_onset(audio: np.ndarray, rate: int) -> int:
    """Sample index where speech begins: the first 50 ms whose 10 ms frames are all within 20 dB of
    the clip's loud frames (a click or a breath before the words does not count)."""
    f = max(1, rate // 100)
    n = len(audio) // f
    if n < 5:
        return 0
    energy = np.mean(audio[: n * f].reshape(n, f).astype(np.float64) ** 2, axis=1)
    loud = energy > np.percentile(energy, 90) * 0.01
    run = np.lib.stride_tricks.sliding_window_view(loud, 5).all(axis=1)
    return int(np.argmax(run)) * f if run.any() else 0


class TimelineRecorder:
    """Collects user frames (left) and agent frames (right) by media time; writes one stereo WAV."""

    def __init__(self, sample_rate: int = 24_000) -> None:
        self.sample_rate = sample_rate
        self._parts: list[tuple[int, float, np.ndarray, int]] = []  # channel, time, samples, rate
        self.t0: float | None = None

    def add(self, channel: int, frame: AudioFrame) -> None:
        if self.t0 is None or frame.timestamp < self.t0:
            self.t0 = frame.timestamp if self.t0 is None else min(self.t0, frame.timestamp)
        if frame.samples.size:
            self._parts.append((channel, frame.timestamp, frame.samples, frame.sample_rate))

    def user(self, frame: AudioFrame) -> None:
        self.add(0, frame)

    def agent(self, frame: AudioFrame) -> None:
        self.add(1, frame)

    def render(self) -> np.ndarray:
        if not self._parts or self.t0 is None:
            return np.zeros((0, 2), np.float32)
        sr = self.sample_rate
        end = max(t + len(s) / r for _, t, s, r in self._parts)
        out = np.zeros((int((end - self.t0) * sr) + sr // 10, 2), np.float32)
        # frames of one channel are contiguous runs; resample each run once (no per-frame edges)
        for ch in (0, 1):
            runs: list[tuple[float, list[np.ndarray], int]] = []
            for c, t, s, r in self._parts:
                if c != ch:
                    continue
                if runs and runs[-1][2] == r and abs(runs[-1][0] + sum(map(len, runs[-1][1])) / r - t) < 1e-3:
                    runs[-1][1].append(s)
                else:
                    runs.append((t, [s], r))
            for t, pieces, r in runs:
                audio = resample(np.concatenate(pieces), r, sr)
                i = int(round((t - self.t0) * sr))
                n = min(len(audio), len(out) - i)
                out[i : i + n, ch] += audio[:n]
        return np.clip(out, -1, 1)

    def write(self, path: str | Path) -> float:
        audio = self.render()
        sf.write(str(path), audio, self.sample_rate, subtype="PCM_16")
        return len(audio) / self.sample_rate


class EchoPath:
    """Simulates speakers without a headset: the agent's output leaks into the microphone,
    `delay_ms` later and `db` quieter (for `converse --echo-db/--echo-delay-ms`)."""

    def __init__(self, db: float = -10.0, delay_ms: float = 100.0, rate: int = 24_000, keep_s: float = 5.0) -> None:
        self.gain = 10 ** (db / 20)
        self.delay = delay_ms / 1000
        self.rate = rate
        self._ring = np.zeros(int(keep_s * rate), np.float32)
        self._end: float | None = None  # media time of the ring's last sample

    def played(self, frame: AudioFrame) -> None:
        x = frame.samples if frame.sample_rate == self.rate else resample(frame.samples, frame.sample_rate, self.rate)
        n = min(len(x), len(self._ring))
        if n:
            self._ring = np.roll(self._ring, -n)
            self._ring[-n:] = x[-n:]
            self._end = frame.timestamp + len(x) / self.rate

    def mix(self, frame: AudioFrame) -> AudioFrame:
        if self._end is None:
            return frame
        times = frame.timestamp - self.delay + np.arange(len(frame.samples)) / frame.sample_rate
        ring_times = self._end - (len(self._ring) - np.arange(len(self._ring))) / self.rate
        echo = np.interp(times, ring_times, self._ring, left=0.0, right=0.0).astype(np.float32)
        return AudioFrame(frame.samples + self.gain * echo, frame.sample_rate, frame.timestamp)
