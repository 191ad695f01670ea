"""Stopping background tasks: cancel, then wait until each has finished.

A task's own failure is not the stopper's business (the task logged it, or it
was cancelled mid-way): waiting for it only makes sure it no longer runs.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task given (None is skipped), then wait for each to end.

    The tasks' own ends (cancelled, failed) are taken and dropped; a cancellation of
    the task calling this is not: it propagates, so a stopper that is itself being
    stopped stops (awaiting a cancelled task inside ``suppress(CancelledError)``
    would swallow it and leave the caller running on)."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)
    for task in running:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning


def raise_if_cancelled() -> None:
    """Raise CancelledError if the current task has a cancellation pending.

    Python 3.11's TaskGroup can swallow a cancellation that arrives while one of
    its children fails: the request stays counted (``Task.cancelling()``) but
    nothing is raised (CPython gh-116720, fixed in 3.12). A loop that retries
    after a TaskGroup failed calls this before it waits, so a task being stopped
    stops instead of retrying for ever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
