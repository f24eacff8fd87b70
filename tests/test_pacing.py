"""`transport.pacing.FramePacer` on the virtual clock (pure logic): frames are due `position / rate`
after the first one, a stall is caught up at once, or, with `reanchor_after_s`, a long stall moves
the anchor instead of bursting (the outgoing WebRTC track's choice)."""

from __future__ import annotations

import time

from pipeline.clock import VirtualClock
from transport.pacing import FramePacer

RATE, STEP, FRAME_S = 48_000, 960, 0.02


async def test_each_frame_waits_until_it_is_due_on_the_clock():
    clock = VirtualClock()
    pacer = FramePacer(RATE, clock)
    real0 = time.monotonic()
    first = await pacer.wait(0)  # the first frame anchors the stream: due at once
    assert pacer.start is not None and first - pacer.start < 0.05
    times = [await pacer.wait(k * STEP) for k in range(1, 51)]
    for k, at in enumerate(times, 1):
        assert at >= pacer.start + k * FRAME_S - 1e-9, f"frame {k} went out early"
    assert times[-1] - first >= 50 * FRAME_S - 1e-9  # one second of frames took one second of media time
    assert time.monotonic() - real0 < 0.5  # ... skipped on the virtual clock
    assert pacer.reanchors == 0


async def _stall(clock: VirtualClock, seconds: float) -> float:
    """The consumer stops pulling for `seconds` (the loop was busy elsewhere); returns when it resumes."""
    await clock.sleep_until(clock.now() + seconds)
    return clock.now()


async def test_after_a_stall_the_late_frames_go_at_once_and_pacing_resumes():
    clock = VirtualClock()
    pacer = FramePacer(RATE, clock)  # the scripted microphones: catch up
    for k in range(10):
        await pacer.wait(k * STEP)
    resumed = await _stall(clock, 1.0)
    assert pacer.start is not None
    late = [k for k in range(10, 200) if pacer.start + k * FRAME_S <= resumed]
    assert len(late) >= 45  # ~a second's worth of frames fell due during the stall
    for k in late:
        await pacer.wait(k * STEP)
    assert clock.now() - resumed < 0.25, "the late frames were paced instead of sent at once"
    nxt = late[-1] + 1
    assert await pacer.wait(nxt * STEP) >= pacer.start + nxt * FRAME_S - 1e-9  # on time again: waits
    assert pacer.reanchors == 0


async def test_a_stall_longer_than_reanchor_after_s_moves_the_anchor_instead_of_bursting():
    clock = VirtualClock()
    pacer = FramePacer(RATE, clock, reanchor_after_s=0.5)  # the outgoing WebRTC track
    for k in range(10):
        await pacer.wait(k * STEP)
    resumed = await _stall(clock, 1.0)
    at = await pacer.wait(10 * STEP)  # far behind: sent now, and the stream continues from here
    assert at - resumed < 0.25 and pacer.reanchors == 1
    after = [await pacer.wait(k * STEP) for k in range(11, 21)]
    assert after[-1] - at >= 10 * FRAME_S - 1e-9, "the frames after a re-anchor must not burst"
    # a stall shorter than the threshold is caught up, as without the option
    resumed = await _stall(clock, 0.3)
    for k in range(21, 31):
        await pacer.wait(k * STEP)
    assert clock.now() - resumed < 0.15 and pacer.reanchors == 1
