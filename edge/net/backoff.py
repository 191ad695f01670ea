"""Jittered exponential backoff: the one helper every reconnecting link uses."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Jittered exponential backoff (each wait is 50-100 % of the current delay)."""

    def __init__(self, initial: float = 0.05, maximum: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_wait())

    def next_wait(self) -> float:
        """The next wait (jittered), doubling the delay for the one after."""
        wait = self.delay * random.uniform(0.5, 1.0)
        self.delay = min(self.delay * 2, self.maximum)
        return wait

    def reset(self) -> None:
        self.delay = self.initial
