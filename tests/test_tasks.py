"""Stopping tasks: a stopper that is itself stopped stops (edge.tasks)."""

from __future__ import annotations

import asyncio

import pytest

from edge.tasks import cancel


async def test_cancel_waits_for_the_tasks_and_keeps_their_errors_quiet() -> None:
    async def fails() -> None:
        raise RuntimeError("its own business")

    failing = asyncio.create_task(fails())
    sleeping = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    await cancel(failing, sleeping, None)
    assert failing.done()
    assert sleeping.cancelled()


async def test_a_cancelled_caller_of_cancel_is_not_swallowed() -> None:
    """The caller waits in cancel() for a task slow to end; the caller's own
    cancellation must reach it (a suppress(CancelledError) around the wait kept it
    running, and a daemon's stop hung)."""

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.5)  # cleanup that takes a while

    async def stopper(target: asyncio.Task[None]) -> str:
        await cancel(target)
        await asyncio.sleep(60)  # carried on: the bug
        return "carried on"

    target = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    outer = asyncio.create_task(stopper(target))
    await asyncio.sleep(0.05)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(outer, 2)



async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    """As Python 3.11's TaskGroup may: the first cancellation is lost."""
    rounds = 0

    async def swallows_the_first() -> None:
        nonlocal rounds
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                rounds += 1
                if rounds > 1:
                    raise

    task = asyncio.create_task(swallows_the_first())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel(task), 5)
    assert task.cancelled()
    assert rounds == 2
