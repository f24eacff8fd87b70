"""The virtual clock (pure logic): waiting is skipped, working is not, sleepers wake in order.

Real: `VirtualClock` and `RealClock` themselves. No fakes, no models."""

from __future__ import annotations

import asyncio
import time

from pipeline.clock import RealClock, VirtualClock


async def test_sleepers_wake_in_deadline_order_without_waiting():
    clock = VirtualClock()
    t0 = clock.now()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, at: float) -> None:
        await clock.sleep_until(t0 + at)
        woke.append((name, round(clock.now() - t0, 2)))

    start = time.monotonic()
    await asyncio.gather(sleeper("b", 20.0), sleeper("a", 10.0), sleeper("c", 30.0))
    assert woke == [("a", 10.0), ("b", 20.0), ("c", 30.0)]
    assert time.monotonic() - start < 1.0


async def test_time_does_not_jump_while_work_is_in_flight():
    clock = VirtualClock()
    t0 = clock.now()

    async def work() -> float:
        async with clock.working():
            await asyncio.sleep(0.2)  # stands for real compute in a thread
        return clock.now() - t0

    async def sleeper() -> float:
        await clock.sleep_until(t0 + 0.1)
        return clock.now() - t0

    worked, slept = await asyncio.gather(work(), sleeper())
    # the sleeper's deadline passed in real time while work was in flight: no jump beyond it
    assert 0.1 <= slept < 0.19
    assert 0.2 <= worked < 0.5


async def test_real_clock_really_waits():
    clock = RealClock()
    t0 = clock.now()
    await clock.sleep_until(t0 + 0.05)
    assert clock.now() - t0 >= 0.045
