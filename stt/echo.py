"""Echo-safe listening: remove the agent's own voice from the microphone before the VAD hears it.

The agent knows exactly what it played and when (the playout's frames, in media time). Speakers
leak that signal back into the microphone, delayed and attenuated. This canceller keeps the played
reference, finds the echo path's delay and gain by cross-correlation while the agent speaks, and
subtracts the predicted echo, so the VAD sees the user alone: echo never counts as barge-in, while
a real interruption (which the reference cannot predict) passes through.

It models the echo path as one delay and one gain (a loudspeaker-to-microphone path without room
reverberation, or a browser that already ran its own AEC and left a residue). Subtraction alone
is not enough after a codec and a jitter buffer, so a double-talk gate decides on energy: while echo
is predicted, the microphone passes only when it is clearly louder than that echo (the user talking
over it). Before the first estimate, while the agent is audible, the microphone is held, not
muted: a voice louder than the agent's own output passes at once; the rest waits until an echo path
is found (then it is cancelled and gated like any other audio) or ruled out after `search_s` (a
headset, or a browser that cancelled its echo: then it passes as it is), or until a window shows
that the reference explains almost none of it (the user alone). Only a quiet microphone counts
toward "no echo": a user talking over the first reply must not make the canceller give up. A user
who cuts in at the first word of the first reply is heard, never lost.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from pipeline.audio import STT_RATE, AudioFrame, StreamResampler

log = logging.getLogger(__name__)


@dataclass
class EchoOptions:
    max_delay_ms: float = 1000.0  # longest echo path searched: device + jitter buffers + network both ways
    estimate_every_ms: float = 250.0
    search_every_ms: float = 60.0  # the same while no path is known: the user may cut in any moment
    window_ms: float = 1000.0  # audio used for each delay/gain estimate
    min_correlation: float = 0.7  # below this the estimate is not trusted (e.g. user talking over)
    min_echo_ms: float = 300.0  # voiced reference an estimate needs in its window (less: a wrong lag wins)
    # agent-audible time to find an echo path (> max delay); none found → no echo (headset, browser AEC)
    search_s: float = 1.5
    # ...counted only while the microphone is this far below the agent's output (-15 dB over a
    # search window): a quiet microphone is evidence of no echo; a loud one (echo, or the user
    # talking over) is evidence of nothing
    no_echo_ratio: float = 0.03
    max_hold_ms: float = 600.0  # longest a frame waits for a verdict before a path is known; then muted
    # before a path is known, microphone audio whose latest `user_window_ms` the agent's output (at
    # its best lag) explains less than this share of is the user alone (not the agent's voice): it passes
    user_fraction: float = 0.05
    user_window_ms: float = 250.0
    double_talk_ratio: float = 0.8  # mic and residual must both reach this × the predicted echo energy
    unknown_ratio: float = 2.0  # the same, where the reference for the echo is not known yet (+3 dB)
    lookahead_ms: float = 40.0  # longest the microphone is held for the played reference to come in
    tolerance_ms: float = 50.0  # timing slack of the echo path (jitter buffers drop, repeat and stretch frames)
    # after a silence the path may have moved (a jitter buffer grows or shrinks while nothing plays;
    # over WebRTC it moved +20 ms a reply): until an estimate confirms it, the gate looks this far
    unconfirmed_tolerance_ms: float = 100.0
    settle_s: float = 0.5  # agent silence after which the path counts as unconfirmed
    # the microphone's timestamps jumping this far from its sample count is a seam (a network edge
    # dropped stale or early audio, or re-anchored on the clock): positions re-anchor on the
    # timestamps, or the echo would be looked for that much too early from then on
    mic_resync_ms: float = 15.0


class EchoCanceller:
    """Reference in (`played`), microphone in (`process`), residual out; all 16 kHz internally."""

    def __init__(self, options: EchoOptions | None = None) -> None:
        self.o = options or EchoOptions()
        self.rate = STT_RATE
        self._max_lag = int(self.o.max_delay_ms * self.rate / 1000)
        self._tolerance = int(self.o.tolerance_ms * self.rate / 1000)
        self._wide = int(self.o.unconfirmed_tolerance_ms * self.rate / 1000)
        self._confirmed = False  # an estimate saw the current path since the agent last fell silent
        self._ref_quiet = 0  # samples of (near) silence at the end of the reference
        self._lookahead = int(self.o.lookahead_ms * self.rate / 1000)
        self._max_hold = int(self.o.max_hold_ms * self.rate / 1000)
        self._held: deque[_Held] = deque()
        self._held_samples = 0
        keep = self._max_lag + int(self.o.window_ms * self.rate / 1000) * 2
        self._ref = np.zeros(keep, np.float32)  # ring of the last `keep` samples of played audio
        self._ref_end: int | None = None  # absolute sample index (media time × rate) of the ring's end
        self._mic_hist: deque[np.ndarray] = deque()
        self._mic_end: int | None = None
        self._ref_rs: _Track | None = None
        self._mic_rs: _Track | None = None
        self._since_estimate = 0
        self._searched_s = 0.0  # agent-audible time with a quiet microphone and no echo estimate
        self.delay: int | None = None  # samples
        self.gain = 0.0
        self.correlation = 0.0

    # --- reference -----------------------------------------------------------------------------
    def played(self, frame: AudioFrame) -> None:
        self._ref_rs, start = _restart_if_needed(self._ref_rs, frame, self.rate)
        x = self._ref_rs.resampler(frame.samples)
        self._ref_rs.pos += len(x)
        end = start + len(x)
        if self._ref_end is not None and end < self._ref_end:
            return
        if len(x):
            self._ref_quiet = self._ref_quiet + len(x) if float(np.mean(x**2)) < 1e-6 else 0
        if self._ref_quiet > self.o.settle_s * self.rate:
            self._confirmed = False
        self._push_ref(x, end)

    def _push_ref(self, x: np.ndarray, end: int) -> None:
        if self._ref_end is not None and end - len(x) > self._ref_end:  # a gap: fill with silence
            self._push_ref(np.zeros(min(end - len(x) - self._ref_end, len(self._ref)), np.float32), end - len(x))
        n = min(len(x), len(self._ref))
        if n == 0:
            return
        self._ref = np.roll(self._ref, -n)
        self._ref[-n:] = x[-n:]
        self._ref_end = end

    def _ref_segment(self, start: int, n: int) -> np.ndarray:
        """Reference samples [start, start+n) in absolute sample time (zeros where unknown)."""
        out = np.zeros(n, np.float32)
        if self._ref_end is None:
            return out
        ring_start = self._ref_end - len(self._ref)
        a, b = max(start, ring_start), min(start + n, self._ref_end)
        if b > a:
            out[a - start : b - start] = self._ref[a - ring_start : b - ring_start]
        return out

    # --- microphone ----------------------------------------------------------------------------
    def process(self, frame: AudioFrame) -> AudioFrame:
        """Return the microphone at 16 kHz with the predicted echo removed, as soon as the played
        reference covers it (at most `lookahead_ms` late; may return several frames, or none).

        A short echo path (20 ms) can outrun the playout's next frame and the resampler's few ms:
        judged before its reference is in, the echo's onset would slip through. A long path (a
        network, a browser) never waits: its reference is in long before its echo comes back.
        """
        before = self._mic_rs
        self._mic_rs, start = _restart_if_needed(self._mic_rs, frame, self.rate, self.o.mic_resync_ms / 1000)
        if before is not None and self._mic_rs is not before:
            self._mic_hist.clear()  # not contiguous with what follows: no estimate may span the seam
        mic = self._mic_rs.resampler(frame.samples)
        self._mic_rs.pos += len(mic)
        self._held.append(_Held(mic, start, frame.timestamp))
        self._held_samples += len(mic)
        self._learn(mic, start)
        out: list[AudioFrame] = []
        while self._held:
            head = self._held[0]
            mic, start, timestamp = head.mic, head.start, head.timestamp
            if self._held_samples - len(mic) < self._lookahead and not self._reference_covers(start + len(mic)):
                break
            undecided = not head.user and self._undecided(mic, start)
            if undecided and self._mic_rs.pos - (start + len(mic)) < self._max_hold:
                break  # wait for an echo path, or for a sign that this is the user's voice
            self._held.popleft()
            self._held_samples -= len(mic)
            # held too long without a verdict: it may be echo, so it is muted (as it always was)
            out.append(AudioFrame(np.zeros_like(mic), self.rate, timestamp) if undecided
                       else self._cancel(mic, start, timestamp))
        if len(out) == 1:
            return out[0]
        samples = np.concatenate([f.samples for f in out]) if out else np.zeros(0, np.float32)
        return AudioFrame(samples, self.rate, out[0].timestamp if out else frame.timestamp)

    def _reference_covers(self, end: int) -> bool:
        """The reference is in for the echo that mic audio ending at `end` holds: up to `end - delay`
        on a known path; up to `end` while none is known."""
        if self._ref_end is None:
            return False
        return self._ref_end >= end - (self.delay if self.delay is not None and self.gain > 0 else 0)

    def _learn(self, mic: np.ndarray, start: int) -> None:
        """Every microphone frame, on arrival: keep it for the delay search, count the time spent
        searching while the agent is audible, and re-estimate the path when due."""
        self._remember_mic(mic, start)
        self._since_estimate += len(mic)
        every = self.o.estimate_every_ms if self.delay is not None and self._confirmed else self.o.search_every_ms
        if self._since_estimate >= every * self.rate / 1000:
            self._since_estimate = 0
            self._estimate()
            if self.delay is None:
                self._mark_user()
                self._count_search(every / 1000)

    def _count_search(self, seconds: float) -> None:
        """A search tick counts toward "no echo" only if the agent's voice is in the reference and
        the microphone stayed far quieter than it over the window, where an echo would have shown."""
        if self._mic_end is None:  # no microphone audio yet: nothing to judge
            return
        window = np.concatenate(self._mic_hist)
        ref = self._ref_segment(self._mic_end - len(window) - self._max_lag, len(window) + self._max_lag)
        ref_energy = float(np.mean(ref**2))
        if ref_energy > 1e-6 and float(np.mean(window**2)) < self.o.no_echo_ratio * ref_energy:
            self._searched_s += seconds

    def _mark_user(self) -> None:
        """No path yet: if the agent's output, at its best lag, explains almost none of the latest
        microphone audio, that audio is the user's voice (an echo to come is judged when it comes).
        Held frames inside that span may pass; a short span, so an echo right after the user's
        last words is not taken for them."""
        n = int(self.o.user_window_ms * self.rate / 1000)
        if self._mic_end is None or self._ref_end is None:
            return
        end = min(self._mic_end, self._ref_end)
        window = np.concatenate(self._mic_hist)
        mic = window[len(window) - (self._mic_end - end) - n : len(window) - (self._mic_end - end)]
        if len(mic) < n or float(np.mean(mic**2)) < 1e-8:
            return
        ref = self._ref_segment(end - n - self._max_lag, n + self._max_lag)
        if float(np.mean(ref**2)) < 1e-6:
            return  # the agent was silent: nothing is held for it
        corr = _best_correlation(mic, ref, self._max_lag)
        if corr**2 < self.o.user_fraction:
            for h in self._held:
                if h.start >= end - n and h.start + len(h.mic) <= end:
                    h.user = True

    def _agent_level(self, mic: np.ndarray, start: int) -> float:
        """Loudest the agent's output was over the longest echo path before this frame."""
        recent = self._ref_segment(start - self._max_lag, self._max_lag + len(mic))
        return float(np.max(_block_energy(recent, max(len(mic), 1))))

    def _undecided(self, mic: np.ndarray, start: int) -> bool:
        """No echo path known yet, the agent audible, the search not over: this frame may be echo
        of any gain. Only a voice louder than the agent's own output is surely the user."""
        if self.delay is not None or self._searched_s >= self.o.search_s or not mic.size:
            return False
        level = self._agent_level(mic, start)
        return level > 1e-6 and float(np.mean(mic**2)) < self.o.unknown_ratio * level

    def _cancel(self, mic: np.ndarray, start: int, timestamp: float) -> AudioFrame:
        out = mic
        if self.delay is not None and self.gain > 0 and mic.size:
            echo = self.gain * self._ref_segment(start - self.delay, len(mic))
            out = mic - echo
            # Double-talk gate on energy, not samples: codecs and jitter buffers bend the echo so that
            # subtraction leaves a speech-like residue. Unless the microphone is clearly louder than
            # the loudest echo the reference predicts around the estimated delay, it is echo alone.
            tol = self._tolerance if self._confirmed else self._wide
            around = self._ref_segment(start - self.delay - tol, len(mic) + 2 * tol)
            # the gain that explains the window's whole energy (LS gain / correlation): an estimate
            # from a window that held little echo is low, and a low gain lets echo through
            expected = (self.gain / self.correlation) ** 2 * _loudest(around, len(mic))
            # min(): a well-aligned echo leaves a small residual; a misaligned one (a jitter-buffer
            # jump) a large residual but a microphone no louder than predicted. Only a voice over
            # the echo raises both.
            if not self._reference_covers(start + len(mic)):
                # a short echo path can outrun the reference (the playout's next frame, or the
                # resampler's few ms, is not in yet): nothing to subtract, so only a voice clearly
                # louder than the latest echo passes
                if expected > 1e-7 and float(np.mean(mic**2)) < self.o.unknown_ratio * expected:
                    out = np.zeros_like(out)
            elif expected > 1e-7 and min(float(np.mean(out**2)), float(np.mean(mic**2))) < (
                    self.o.double_talk_ratio * expected):
                out = np.zeros_like(out)
        return AudioFrame(out.astype(np.float32, copy=False), self.rate, timestamp)

    def _remember_mic(self, mic: np.ndarray, start: int) -> None:
        self._mic_hist.append(mic)
        self._mic_end = start + len(mic)
        need = int(self.o.window_ms * self.rate / 1000)
        while sum(map(len, self._mic_hist)) - len(self._mic_hist[0]) > need:
            self._mic_hist.popleft()

    def _estimate(self) -> None:
        """Delay by cross-correlation of the last window of mic against the reference, gain by LS."""
        if self._mic_end is None or self._ref_end is None:
            return
        window = np.concatenate(self._mic_hist)
        start = self._mic_end - len(window)
        # only microphone audio whose reference is in at every lag: a missing tail of the reference
        # (played late) would read as "no echo there" and pull the gain down
        mic = window[: max(0, min(len(window), self._ref_end - start))]
        n = len(mic)
        if n < self.rate // 4:
            return
        ref = self._ref_segment(start - self._max_lag, n + self._max_lag)
        if float(np.mean(ref**2)) < 1e-6 or float(np.mean(mic**2)) < 1e-8:
            return  # agent silent or mic silent: nothing to learn from
        d, aligned = _best_lag(mic, ref, self._max_lag)
        denom = float(np.dot(aligned, aligned))
        if denom <= 0:
            return
        corr = float(np.dot(mic, aligned)) / (np.sqrt(denom * float(np.dot(mic, mic))) + 1e-12)
        if np.count_nonzero(_block_energy(aligned, self.rate // 50) > 1e-4) < self.o.min_echo_ms / 20:
            return  # too little of the agent's voice in this window (a reply's first words): unreliable
        gain = float(np.dot(mic, aligned)) / denom
        log.debug("echo estimate: delay %.0f ms, gain %.3f, correlation %.2f", d / 16, gain, corr)
        if corr < self.o.min_correlation or gain <= 0:
            return
        if self.delay is not None and abs(d - self.delay) <= self._tolerance:
            self._confirmed = True
        if self.delay is not None and d != self.delay:
            # A window that holds little echo (the onset of a reply, mostly silence before it) can
            # peak at a nearby wrong lag; a wrong path lets echo through the gate. The new path
            # replaces the known one only if it explains this window's microphone better.
            known = ref[self._max_lag - self.delay : self._max_lag - self.delay + n]
            if float(np.mean((mic - gain * aligned) ** 2)) >= float(np.mean((mic - self.gain * known) ** 2)):
                log.debug("echo estimate rejected: the known path (%.0f ms) explains the mic better", self.delay / 16)
                return
        self.delay, self.gain, self.correlation = d, gain, corr
        self._confirmed = True


@dataclass
class _Held:
    """A microphone frame waiting to be judged; `user` once it is known to be the user's voice."""

    mic: np.ndarray
    start: int
    timestamp: float
    user: bool = False


def _best_lag(mic: np.ndarray, ref: np.ndarray, max_lag: int) -> tuple[int, np.ndarray]:
    """The delay (0..max_lag samples; `ref` starts max_lag before `mic`) where the two correlate
    most, and `ref` aligned to `mic` at it."""
    n = len(mic)
    size = 1 << int(np.ceil(np.log2(len(ref) + n)))
    # corr[k] = sum_i mic[i] * ref[i + k]; a delay d means ref offset k = max_lag - d
    corr = np.fft.irfft(np.conj(np.fft.rfft(mic, size)) * np.fft.rfft(ref, size), size)[: max_lag + 1]
    d = int(np.argmax(corr[::-1]))
    return d, ref[max_lag - d : max_lag - d + n]


def _best_correlation(mic: np.ndarray, ref: np.ndarray, max_lag: int) -> float:
    """Normalized correlation of `mic` with `ref` at their best lag."""
    _, aligned = _best_lag(mic, ref, max_lag)
    denom = float(np.dot(aligned, aligned)) * float(np.dot(mic, mic))
    return float(np.dot(mic, aligned)) / np.sqrt(denom) if denom > 0 else 0.0


@dataclass
class _Track:
    """A streaming resampler plus the absolute 16 kHz sample position of its next output sample.

    soxr holds back a few ms at the start of a stream; counting output samples (rather than
    deriving positions from each frame's timestamp) keeps reference and microphone aligned.
    """

    resampler: StreamResampler
    from_rate: int
    pos: int
    next_ts: float


def _restart_if_needed(
    track: _Track | None, frame: AudioFrame, rate: int, max_gap_s: float = 0.5
) -> tuple[_Track, int]:
    """Return the track and the output position of this frame; restart on a rate change or a gap."""
    # Positions follow the sample count, and only a discontinuity of `max_gap_s` re-anchors them:
    # the reference is stamped when pulled (jittered, bunched after a stall), so half a second; the
    # microphone's timeline is contiguous but for real seams (`MicTimeline`), so `mic_resync_ms`.
    gap = track is not None and abs(frame.timestamp - track.next_ts) > max_gap_s
    if track is None or track.from_rate != frame.sample_rate or gap:
        track = _Track(StreamResampler(frame.sample_rate, rate), frame.sample_rate,
                       int(round(frame.timestamp * rate)), frame.timestamp)
    start = track.pos
    track.next_ts += len(frame.samples) / frame.sample_rate
    return track, start


def _loudest(x: np.ndarray, n: int) -> float:
    """Highest mean energy of any n consecutive samples of x (a sliding window, not fixed blocks)."""
    if len(x) <= n:
        return float(np.mean(x**2)) if len(x) else 0.0
    c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    return float(np.max(c[n:] - c[:-n]) / n)


def _block_energy(x: np.ndarray, block: int) -> np.ndarray:
    n = max(1, len(x) // block)
    return np.mean(x[: n * block].reshape(n, block) ** 2, axis=1) if len(x) >= block else np.array([np.mean(x**2)])
