"""Stopping tasks: a stopper that is itself stopped stops (edge.tasks)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from edge.tasks import cancel, raise_if_cancelled


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


async def test_a_pending_cancellation_is_raised() -> None:
    async def loop_that_lost_a_cancel() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # requested, and (as TaskGroup in 3.11 may do) never raised:
        task.uncancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, still counted
            await asyncio.sleep(0)
        raise_if_cancelled()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(loop_that_lost_a_cancel())
