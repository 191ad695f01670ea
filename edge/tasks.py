"""Stopping background tasks: cancel, then wait until each has finished.

A task's own failure is not the stopper's business (the task logged it, or it
was cancelled mid-way): waiting for it only makes sure it no longer runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

# How long a cancelled task may take to end before it is cancelled again.
RECANCEL_S = 1.0


async def cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task given (None is skipped), then wait for each to end.

    The tasks' own ends (cancelled, failed) are taken and dropped; a cancellation of
    the task calling this is not: it propagates, so a stopper that is itself being
    stopped stops (awaiting a cancelled task inside ``suppress(CancelledError)``
    would swallow it and leave the caller running on)."""
    running = [task for task in tasks if task is not None]
    pending = set(running)
    while pending:
        # Cancelled again while still running: Python 3.11's TaskGroup can swallow a
        # cancellation that arrives while one of its children fails (CPython
        # gh-116720), and the task would carry on as if it had never been asked.
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
    for task in running:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning

