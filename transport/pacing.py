"""Pacing a pulled media track to a clock: aiortc calls `recv()` as fast as it likes, so a track that
makes its own frames (a scripted microphone, the agent's voice) must wait until each one is due.

`FramePacer.wait(position)` sleeps until the frame starting at `position` (in samples) is due: the
first call anchors the stream at the clock's now, and sample `position` is due `position / rate`
seconds after that anchor. After a stall (the loop was busy, the consumer stopped pulling) the
frames that are late come at once, to catch up; with `reanchor_after_s`, a stall longer than that
moves the anchor instead (those frames are not sent in a burst; the stream continues from now).
"""

from __future__ import annotations

from pipeline.clock import Clock, RealClock


class FramePacer:
    """Tracks when each frame of one stream is due on `clock` (the wall clock by default) and waits."""

    def __init__(self, rate: int, clock: Clock | None = None, reanchor_after_s: float | None = None) -> None:
        self.rate = rate
        self.clock: Clock = clock if clock is not None else RealClock()
        self.reanchor_after_s = reanchor_after_s
        self.start: float | None = None  # clock time at which sample 0 is due
        self.reanchors = 0  # stalls longer than `reanchor_after_s` that moved the anchor

    def due(self, position: int) -> float:
        """Clock time at which the frame starting at sample `position` is due (once anchored)."""
        assert self.start is not None, "the pacer anchors on its first wait()"
        return self.start + position / self.rate

    async def wait(self, position: int) -> float:
        """Wait until the frame starting at sample `position` is due; return the clock's time then.
        A frame already due returns at once, without yielding to the loop."""
        now = self.clock.now()
        if self.start is None:
            self.start = now - position / self.rate
        delay = self.due(position) - now
        if delay > 0:
            await self.clock.sleep_until(self.due(position))
        elif self.reanchor_after_s is not None and delay < -self.reanchor_after_s:
            self.start = now - position / self.rate  # far behind: re-anchor rather than burst
            self.reanchors += 1
        return self.clock.now()
