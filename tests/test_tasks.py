"""`pipeline.tasks.TaskSet` (pure logic, no fakes needed): what one owner starts leaves the set when
done, `cancel_all` cancels and awaits everything but the spared task, and the set holds its tasks
strongly, so a task nobody else holds still runs to its end."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from pipeline.tasks import TaskSet


async def test_tasks_leave_the_set_when_they_end_however_they_end():
    tasks = TaskSet(prefix="peer")
    gate = asyncio.Event()

    async def wait_then(fail: bool) -> str:
        await gate.wait()
        if fail:
            raise RuntimeError("boom")
        return "ok"

    ok = tasks.spawn(wait_then(False), "ok")
    bad = tasks.spawn(wait_then(True), "bad")
    idle = tasks.spawn(asyncio.Event().wait())
    await asyncio.sleep(0)
    assert len(tasks) == 3 and tasks and set(tasks) == {ok, bad, idle}
    assert (ok.get_name(), bad.get_name(), idle.get_name()) == ("peer-ok", "peer-bad", "peer")
    gate.set()
    assert await ok == "ok"
    with pytest.raises(RuntimeError):
        await bad
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert set(tasks) == {idle}
    idle.cancel()
    await asyncio.gather(idle, return_exceptions=True)
    await asyncio.sleep(0)
    assert len(tasks) == 0 and not tasks


async def test_cancel_all_cancels_and_awaits_all_but_the_spared_one():
    tasks = TaskSet()
    cleaned: list[int] = []

    async def hold(i: int) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # a cleanup that takes a while: cancel_all must wait for it
            cleaned.append(i)

    async def close() -> str:  # like PeerSession.close: runs in the set, cancels the others
        await tasks.cancel_all(spare=asyncio.current_task())
        return "closed"

    held = [tasks.spawn(hold(i)) for i in range(3)]
    await asyncio.sleep(0)
    closer = tasks.spawn(close())
    await asyncio.wait({closer}, timeout=5)  # a close that cancelled itself would wait on itself for ever
    assert closer.done() and not closer.cancelled() and closer.result() == "closed"  # spared
    assert sorted(cleaned) == [0, 1, 2]  # and every other one had ended before cancel_all returned
    assert all(t.cancelled() for t in held)

    more = [tasks.spawn(hold(i)) for i in (3, 4)]
    await asyncio.sleep(0)
    await tasks.cancel_all()  # no spare: all of them
    assert sorted(cleaned) == [0, 1, 2, 3, 4] and all(t.cancelled() for t in more)


async def test_a_task_nobody_else_holds_is_not_collected_mid_flight():
    tasks = TaskSet()
    futures: list[weakref.ref[asyncio.Future[None]]] = []
    finished: list[str] = []

    async def orphan() -> None:
        # waits on a future only this coroutine holds: without the set, the task, its coroutine and
        # the future form a cycle nobody references, and the garbage collector may free them
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        futures.append(weakref.ref(fut))
        await fut
        finished.append("orphan")

    task_ref = weakref.ref(tasks.spawn(orphan()))
    await asyncio.sleep(0)
    for _ in range(3):
        gc.collect()
    assert task_ref() is not None, "the task was garbage-collected while it waited"
    fut = futures[0]()
    assert fut is not None
    fut.set_result(None)
    del fut
    for _ in range(3):
        await asyncio.sleep(0)
    assert finished == ["orphan"] and len(tasks) == 0
