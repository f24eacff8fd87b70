"""One clock for media time. Real time for live use; a virtual clock for `--fast` runs and tests.

The virtual clock skips *waiting*, never *working*: `sleep_until` jumps forward at once, but only
while no stage is computing (inside `clock.working()`). So in a fast run a turn's compute still
costs its real duration in media time, and the latency figures keep their meaning; only the idle
pacing (real-time input, playout) is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import AsyncIterator
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...

    def working(self) -> contextlib.AbstractAsyncContextManager[None]: ...


class RealClock:
    """Monotonic wall clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, t: float) -> None:
        delay = t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        yield


class VirtualClock:
    """Real time plus skipped idle time (see the module docstring).

    Sleepers wake in deadline order: when nothing is computing, time jumps to the earliest pending
    deadline only, after letting ready tasks run for a few loop iterations.
    """

    _SETTLE_HOPS = 4  # loop iterations granted to ready tasks before a jump

    def __init__(self) -> None:
        self._offset = 0.0
        self._busy = 0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._tick_pending = False

    def now(self) -> float:
        return time.monotonic() + self._offset

    async def sleep_until(self, t: float) -> None:
        if t <= self.now():
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (t, self._seq, fut))
        self._schedule_tick()
        try:
            while not fut.done():
                remaining = t - self.now()
                if remaining <= 0:
                    break
                await asyncio.wait({fut}, timeout=remaining)
        finally:
            if not fut.done():
                fut.cancel()  # dropped lazily from the heap

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._schedule_tick()

    def _schedule_tick(self, hops: int = _SETTLE_HOPS) -> None:
        if self._tick_pending and hops == self._SETTLE_HOPS:
            return
        self._tick_pending = True
        loop = asyncio.get_running_loop()
        if hops > 0:
            loop.call_soon(self._schedule_tick, hops - 1)
        else:
            loop.call_soon(self._advance)

    def _advance(self) -> None:
        self._tick_pending = False
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        if self._busy or not self._sleepers:
            return
        first = self._sleepers[0][0]
        now = self.now()
        if first > now:
            self._offset += first - now
            now = first
        while self._sleepers and self._sleepers[0][0] <= now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
        if self._sleepers:
            self._schedule_tick()
