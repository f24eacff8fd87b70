"""A set of background tasks that one owner starts and, when it closes, cancels and awaits.

`asyncio.create_task` alone keeps only a weak reference (a task nobody holds can be garbage
collected mid-flight) and leaves the owner to remember what it started; every component that
starts side tasks (a peer, the transcriber, the turn manager) needs the same three lines, so they
live here once. Structured scopes (`asyncio.TaskGroup`) stay the rule for one reply; this is for
work whose end nobody awaits in line (a close, a judgment of a backchannel, an interim pass).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class TaskSet:
    """Tasks started by one owner; each leaves the set when it finishes."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        label = f"{self.prefix}-{name}" if self.prefix and name else (name or self.prefix or None)
        task = asyncio.create_task(coro, name=label)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    async def cancel_all(self, spare: asyncio.Task[Any] | None = None) -> None:
        """Cancel every task but `spare` (typically the caller itself) and wait for them to end."""
        others = [t for t in self._tasks if t is not spare]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
