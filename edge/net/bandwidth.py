"""One link shared by several senders: a token bucket granted by priority, with a floor.

Every uplink of an SPU asks :meth:`SharedLink.acquire` before it sends a request
of ``n`` bytes. With a rate, the bucket refills at ``rate`` bytes/s up to
``burst`` bytes; a grant may overdraw it (one request is larger than the
bucket on a slow link), and the next grant waits until the debt is repaid, so
over any long stretch the link carries ``rate`` bytes/s and never more than
``burst`` plus one request above it.

Waiting senders are served highest priority first, in arrival order within a
priority. So that a busy high priority cannot starve a low one, each waiting
priority is owed ``floor`` of every byte granted to another one (10 %: with
two priorities both busy, the lower gets about 1/11 of the link); a priority
owed at least its next request goes first. Debts are forgotten when a priority
has nobody waiting: an idle sender cannot bank the link. Without a rate nobody
waits and priorities do not matter.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Final

# Bytes of the bucket per byte/s of rate: a quarter of a second, enough to
# smooth the pauses between requests, small enough to hold the rate within 5 %
# over a few seconds.
BURST_S: Final = 0.25
FLOOR_SHARE: Final = 0.1
MIN_PRIORITY: Final = 0
MAX_PRIORITY: Final = 9


class SharedLink:
    """Grants bytes to senders of priorities ``MIN_PRIORITY..MAX_PRIORITY``."""

    def __init__(self, rate: float | None, *, floor: float = FLOOR_SHARE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0 bytes/s (None: unlimited)")
        self.rate = rate
        self.burst = rate * BURST_S if rate is not None else 0.0
        self.floor = floor
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._waiting: dict[int, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._owed: dict[int, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.granted: dict[int, int] = {}

    def set_rate(self, rate: float | None) -> None:
        """Change the rate from now on (the SC gave this SPU another share of the
        site's limit); what the bucket holds is kept, up to the new burst."""
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0 bytes/s (None: unlimited)")
        if rate == self.rate:
            return
        if self.rate is not None:
            self._refill(self.rate)
        self.rate = rate
        self.burst = rate * BURST_S if rate is not None else 0.0
        self._tokens = min(self._tokens, self.burst)
        self._stamp = self._clock()
        if rate is None:  # unlimited: everyone waiting may go
            for queue in self._waiting.values():
                for _, fut in queue:
                    if not fut.done():
                        fut.set_result(None)
            self._waiting.clear()
            self._owed.clear()
        self._grant()

    async def acquire(self, nbytes: int, priority: int) -> None:
        """Wait until ``nbytes`` may be sent at ``priority``."""
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be in {MIN_PRIORITY}..{MAX_PRIORITY}")
        if self.rate is None:
            self._account(priority, nbytes)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(priority, deque()).append((nbytes, fut))
        self._grant()
        try:
            await fut
        except asyncio.CancelledError:
            self._forget(priority, fut)
            raise

    def _forget(self, priority: int, fut: asyncio.Future[None]) -> None:
        queue = self._waiting.get(priority)
        if queue is not None:
            for entry in list(queue):
                if entry[1] is fut:
                    queue.remove(entry)
            if not queue:
                del self._waiting[priority]
                self._owed.pop(priority, None)
        self._grant()

    def _refill(self, rate: float) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * rate)
        self._stamp = now

    def _grant(self) -> None:
        """Hand out what the bucket holds, by priority; arm a timer for the rest."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rate = self.rate
        if rate is None:
            return
        self._refill(rate)
        while self._waiting and self._tokens >= 0:
            priority = self.next_priority()
            nbytes, fut = self._waiting[priority].popleft()
            if not self._waiting[priority]:
                del self._waiting[priority]
                self._owed.pop(priority, None)
            if fut.done():
                continue
            self._tokens -= nbytes
            self._account(priority, nbytes)
            fut.set_result(None)
        if self._waiting:
            delay = -self._tokens / rate
            self._timer = asyncio.get_running_loop().call_later(delay, self._grant)

    def next_priority(self) -> int:
        """The priority served next: one owed its next request, else the highest."""
        owed = [p for p, queue in self._waiting.items()
                if self._owed.get(p, 0.0) >= queue[0][0]]
        return max(owed) if owed else max(self._waiting)

    def _account(self, priority: int, nbytes: int) -> None:
        self.granted[priority] = self.granted.get(priority, 0) + nbytes
        if priority in self._owed:
            self._owed[priority] = max(0.0, self._owed[priority] - nbytes)
        for other in self._waiting:
            if other != priority:
                self._owed[other] = self._owed.get(other, 0.0) + nbytes * self.floor
