"""Leadership guard: a leader that may have been deposed must not acknowledge.

The SC deposes a leader that missed heartbeats for its timeout. A leader that
was itself frozen (SIGSTOP, a swap storm, a stalled SD card) cannot tell how
long it was gone, and the produce requests queued in its sockets would be
acknowledged the moment it runs again — after another SPU was elected.

The guard ticks every ``TICK_S``; a gap longer than ``pause_s`` between ticks,
or an acknowledgement attempted while the tick is overdue, means this process
was paused. From then on acknowledgements are refused (retriably) until a
heartbeat round trip with the SC confirms that this SPU has applied the SC's
latest assignment. An SC that is merely down does not stop a leader that was
never paused: the data plane keeps working without the control plane.

A freshly started SPU begins in the same state: the assignment it saved may
name it leader of a partition that the SC gave to another SPU while this one
was down. Partitions with a single replica never wait: no other SPU can lead
them, so there is no one to be deposed by.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)

TICK_S = 0.1


class LeadershipGuard:
    """Decides whether this SPU may acknowledge writes as a leader."""

    def __init__(self, *, pause_s: float) -> None:
        self.pause_s = pause_s
        self._last_tick = time.monotonic()
        self._suspect = True  # until the SC first confirms the assignment
        self._paused_at = float("-inf")
        self.pauses = 0

    def ok(self) -> bool:
        if self._suspect:
            return False
        if time.monotonic() - self._last_tick > self.pause_s:
            self._mark_paused()
            return False
        return True

    def token(self) -> float:
        """Taken when a heartbeat is sent, and handed to :meth:`confirmed` with its answer."""
        return time.monotonic()

    def confirmed(self, sent_at: float) -> None:
        """The SC answered the heartbeat sent at ``sent_at`` and our assignment is current.

        An answer to a heartbeat sent before a pause confirms nothing: the SC may have
        deposed this SPU after answering it. A pause not noticed yet is noticed here."""
        if time.monotonic() - self._last_tick > self.pause_s:
            self._mark_paused()
        if sent_at <= self._paused_at:
            return
        if self._suspect and self.pauses:
            log.info("leadership confirmed by the SC; acknowledging writes again")
        self._suspect = False

    def _mark_paused(self) -> None:
        self._paused_at = time.monotonic()
        if not self._suspect:
            self.pauses += 1
            log.warning("this SPU was paused for over %.1fs; holding acknowledgements until "
                        "the SC confirms its leadership", self.pause_s)
        self._suspect = True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            if now - self._last_tick > self.pause_s:
                self._mark_paused()
            self._last_tick = now
