"""Conditions that are logged when they begin and when they end, not per event.

A full disk refuses every append, a connection cap refuses every new client:
one line per refusal would fill the journal (and wear a Pi's SD card) while
saying nothing new. ``StateLog`` writes one line when the condition begins, one
when it ends with how often it happened meanwhile, and counts in between. A
condition that flaps (ends and begins again within ``quiet_s``) is counted
without new lines until it has been quiet that long, so a flapping condition
costs at most two lines per ``quiet_s``.
"""

from __future__ import annotations

import logging
import time
from typing import Final

QUIET_S: Final = 60.0


class StateLog:
    """One condition (``disk full on t-0``, ``connection limit``) and its log lines."""

    def __init__(self, logger: logging.Logger, *, quiet_s: float = QUIET_S) -> None:
        self._log = logger
        self._quiet_s = quiet_s
        self.active = False
        # Events while active (the first included); all since the process started.
        self.count = 0
        self.total = 0
        self._since = 0.0
        self._last_line = -quiet_s
        self._logged_begin = False

    def begin(self, message: str, *args: object) -> None:
        """The condition holds (again): log if it just began, count always."""
        self.total += 1
        now = time.monotonic()
        if self.active:
            self.count += 1
        else:
            self.active, self.count, self._since = True, 1, now
            self._logged_begin = False
        # A begin that was held back (it flapped) is logged once it has held for quiet_s.
        if not self._logged_begin and now - self._last_line >= self._quiet_s:
            self._logged_begin = True
            self._last_line = now
            self._log.warning(message, *args)

    def end(self, message: str, *args: object) -> None:
        """The condition is over: log once (``message`` gets ``count`` and seconds)."""
        if not self.active:
            return
        self.active = False
        if self._logged_begin:
            self._last_line = time.monotonic()
            self._log.warning(message + " (%d time(s) in %.1f s)", *args, self.count,
                              self._last_line - self._since)
