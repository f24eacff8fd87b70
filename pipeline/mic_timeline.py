"""Media time for a microphone that arrives over a network: anchored to the clock, never ahead of it.

An edge that receives audio (WebRTC, a socket) only knows when each frame *arrived*. Stamping a frame
`max(now - duration, end of the last one)` keeps the stream contiguous, but after an uplink stall
the late packets arrive in a burst: laid end to end, they push the microphone's media time seconds
ahead of the clock for the rest of the call (negative voice-to-voice; the echo canceller, which lines
microphone audio up with the played reference by media time, then looks for the echo in the wrong
place). The rules here, per frame, on the frame's lag (how far its contiguous end trails `now`):

- *ahead* (it would end after `now`: a burst caught up, an unpaced sender): dropped, time unmoved;
- *a little late* (up to `max_behind_s`: jitter, a backlog the loop drains): placed contiguously;
  a lag that persists above `settle_s` for `settle_window_s` (audio lost in transit) is closed by
  jumping forward by the smallest lag seen, so media time stays on the clock;
- *stale* (later than `max_behind_s`): skipped on the sender's timeline (dropped, the timeline moves
  on by its length), so in a burst (frames arriving faster than real time) the burst's last
  `max_behind_s` join the live audio without a seam; stale frames that keep arriving at the pace of
  real time follow a true gap (lost packets, a muted sender): the second one re-anchors the timeline.

The timeline starts (and re-anchors) `anchor_slack_s` behind the arrival that anchors it: that frame
may itself have been delivered late (a busy loop, a scheduler tick), and with no slack every later
frame delivered with less delay than it would count as *ahead* and be lost (20 ms of the user's
speech at a time). The cost: media time trails real time by that much more (20 ms), so the server's
voice-to-voice reads up to 20 ms long (never short), and the echo path looks 20 ms shorter.

So timestamps are monotonic, a frame's end is never after `now`, and media time trails real time by
at most `max_behind_s` (in steady state by about the arrival jitter). Consumers that count samples
(the echo canceller) must re-anchor where the timestamps jump; the jumps are at least `settle_s`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

_EPS = 1e-9  # float slack on "end <= now"


class _Now(Protocol):
    def now(self) -> float: ...


@dataclass
class MicTimeline:
    """Stamps arriving microphone frames with media times (see the module docstring); pure but for
    the clock it reads and one log line per kind of trouble."""

    clock: _Now
    name: str = "microphone"
    max_behind_s: float = 0.2  # later than this, audio is stale: dropped (a burst) or re-anchored (a gap)
    settle_s: float = 0.06  # a lag above this that lasts `settle_window_s` is closed by a jump
    settle_window_s: float = 0.5
    anchor_slack_s: float = 0.02  # the anchoring frame's own delivery delay that later frames may undercut
    dropped: int = 0  # frames dropped (ahead of the clock, or stale in a burst)
    dropped_s: float = 0.0
    reanchors: int = 0  # forward jumps of the timeline (gaps closed)
    _next: float | None = field(default=None, repr=False)  # end of the last frame on the timeline
    _last_arrival: float | None = field(default=None, repr=False)
    _late_since: float | None = field(default=None, repr=False)
    _stale_paced: bool = field(default=False, repr=False)  # the last frame was stale and not in a burst
    _min_late: float = field(default=0.0, repr=False)
    _logged: set[str] = field(default_factory=set, repr=False)
    _dropped_by: dict[str, float] = field(default_factory=dict, repr=False)  # seconds, per kind

    def stamp(self, duration: float) -> float | None:
        """Media time of the first sample of a frame of `duration` seconds arriving now; None if the
        frame is dropped (the caller skips it)."""
        now = self.clock.now()
        burst = self._last_arrival is not None and now - self._last_arrival < duration / 2
        self._last_arrival = now
        if self._next is None:
            return self._place(now - duration - self.anchor_slack_s, duration)
        lag = now - (self._next + duration)
        if lag < -_EPS:
            self._drop(duration, "ahead", "%s: audio is arriving faster than real time (a burst after a stall, "
                       "or an unpaced sender); dropping what would run ahead of the clock")
            return None
        if lag > self.max_behind_s:
            # The first stale frame after a pause may head a burst or follow a gap: it is dropped
            # either way; a second one at the pace of real time settles it as a gap.
            if not burst and self._stale_paced:
                return self._reanchor(now - duration - self.anchor_slack_s, duration)
            self._stale_paced, self._late_since = not burst, None
            self._next += duration  # skipped on the sender's timeline: the burst's tail still fits
            self._drop(duration, "stale", "%s: audio arrived more than %.0f ms late (an uplink stall); "
                       "dropping the stale part", self.max_behind_s * 1000)
            return None
        self._stale_paced = False
        if lag > self.settle_s:
            if self._late_since is None:
                self._late_since, self._min_late = now, lag
            self._min_late = min(self._min_late, lag)
            if now - self._late_since >= self.settle_window_s:
                return self._reanchor(self._next + max(0.0, self._min_late - self.anchor_slack_s), duration)
        else:
            self._late_since = None
        return self._place(self._next, duration)

    def _place(self, t: float, duration: float) -> float:
        self._next = t + duration
        return t

    def _reanchor(self, t: float, duration: float) -> float:
        self.reanchors += 1
        self._late_since, self._stale_paced = None, False
        log.debug("%s: timeline re-anchored %.0f ms forward", self.name, (t - (self._next or t)) * 1000)
        return self._place(t, duration)

    def _drop(self, duration: float, kind: str, message: str, *args: object) -> None:
        self.dropped += 1
        self.dropped_s += duration
        self._dropped_by[kind] = self._dropped_by.get(kind, 0.0) + duration
        # once per kind (a stalling uplink must not flood the log), and not for the frame or two
        # that arrival jitter drops at the start of a call
        if kind not in self._logged and self._dropped_by[kind] > (0.1 if kind == "ahead" else 0.0):
            self._logged.add(kind)
            log.warning(message, self.name, *args)
