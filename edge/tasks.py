"""Stopping background tasks: cancel, then wait until each has finished.

A task's own failure is not the stopper's business (the task logged it, or it
was cancelled mid-way): waiting for it only makes sure it no longer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task given (None is skipped), then wait for each to end."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
