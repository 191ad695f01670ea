"""Log-once: a cause is logged when it begins, counted while it lasts, not per event.

A full disk refuses every append, a peer that speaks garbage fails every frame,
a broker that is down fails every reconnect: one line per event would fill the
journal (and wear a Pi's SD card) while saying nothing new. ``LogOnce`` keeps a
bounded table of causes (a peer and a kind of error, ``"broker"``, a port's
``"open"``) and for each one:

* logs the first report and counts the rest;
* with ``repeat_s``, logs it again when it still happens that long after its last
  line, saying how many reports were counted meanwhile;
* on ``clear()`` (the cause is over) logs one line with how often it happened,
  and logs the next report again;
* with ``quiet_s``, holds back the first line of a cause that was cleared less
  than ``quiet_s`` ago, so a flapping cause costs at most two lines per ``quiet_s``.

The table holds at most ``max_keys`` causes; past that the one logged longest ago
is forgotten (it is logged again if it comes back), so a scan from many hosts
costs memory for ``max_keys`` causes only and a new cause is never silenced.
``StateLog`` is the same for a single condition.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

QUIET_S: Final = 60.0
# Causes a LogOnce remembers unless told otherwise: a few hundred peers and kinds.
MAX_KEYS: Final = 1024
_REPEAT_SUFFIX: Final = " (%d more since last report)"
_CLEAR_SUFFIX: Final = " (%d time(s) in %.1f s)"


@dataclass(slots=True)
class _Cause:
    active: bool = False
    logged: bool = False  # the line for this occurrence was written
    count: int = 0  # reports since it began
    skipped: int = 0  # reports since its last line
    since: float = 0.0
    last_line: float = -math.inf


class LogOnce:
    """Causes, each logged once while it lasts (see the module docstring)."""

    def __init__(
        self, logger: logging.Logger, *, repeat_s: float | None = None, quiet_s: float = 0.0,
        max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_keys < 1 or (repeat_s is not None and repeat_s < 0) or quiet_s < 0:
            raise ValueError("max_keys >= 1, repeat_s >= 0 and quiet_s >= 0 are required")
        self._log = logger
        self._repeat_s = repeat_s
        self._quiet_s = quiet_s
        self._max_keys = max_keys
        self._clock = clock
        self._causes: dict[Hashable, _Cause] = {}
        # Reports of every cause since the process started.
        self.total = 0

    # ``stacklevel`` as in ``logging``: the line names the caller's caller at 2.

    def warning(self, key: Hashable, message: str, *args: object, stacklevel: int = 1) -> bool:
        """Report ``key``; log ``message`` at WARNING if it is due. True if logged."""
        return self._report(logging.WARNING, key, message, args, exc_info=None,
                            stacklevel=stacklevel)

    def error(self, key: Hashable, message: str, *args: object,
              exc_info: BaseException | None = None, stacklevel: int = 1) -> bool:
        """Like ``warning`` at ERROR, with the traceback of ``exc_info`` when logged."""
        return self._report(logging.ERROR, key, message, args, exc_info=exc_info,
                            stacklevel=stacklevel)

    def clear(self, key: Hashable, message: str | None = None, *args: object,
              level: int = logging.INFO, stacklevel: int = 1) -> bool:
        """``key`` is over: log ``message`` (with how often and how long) if its
        begin was logged; its next report is logged again. True if it was active."""
        cause = self._causes.get(key)
        if cause is None or not cause.active:
            return False
        cause.active = False
        if cause.logged and message is not None:
            now = self._clock()
            self._log.log(level, message + _CLEAR_SUFFIX, *args, cause.count, now - cause.since,
                          stacklevel=stacklevel + 1)
            cause.last_line = now
        if not self._quiet_s:
            del self._causes[key]  # nothing to hold back: no need to remember it
        return True

    def active(self, key: Hashable) -> bool:
        """Whether ``key`` was reported and not cleared since."""
        cause = self._causes.get(key)
        return cause is not None and cause.active

    def count(self, key: Hashable) -> int:
        """Reports of ``key`` since it (last) began; 0 if it is unknown."""
        cause = self._causes.get(key)
        return cause.count if cause is not None else 0

    def _report(self, level: int, key: Hashable, message: str, args: tuple[object, ...], *,
                exc_info: BaseException | None, stacklevel: int) -> bool:
        self.total += 1
        now = self._clock()
        cause = self._cause(key)
        if not cause.active:
            cause.active, cause.logged, cause.count, cause.since = True, False, 0, now
            cause.skipped = 0
        cause.count += 1
        if cause.logged:
            due = self._repeat_s is not None and now - cause.last_line >= self._repeat_s
        else:
            due = now - cause.last_line >= self._quiet_s
        if not due:
            cause.skipped += 1
            return False
        if cause.logged and cause.skipped:
            message, args = message + _REPEAT_SUFFIX, (*args, cause.skipped)
        cause.logged, cause.last_line, cause.skipped = True, now, 0
        # Most recently logged last: the first one is the one to forget when full.
        self._causes[key] = self._causes.pop(key)
        self._log.log(level, message, *args, exc_info=exc_info, stacklevel=stacklevel + 2)
        return True

    def _cause(self, key: Hashable) -> _Cause:
        cause = self._causes.get(key)
        if cause is None:
            if len(self._causes) >= self._max_keys:
                del self._causes[next(iter(self._causes))]
            cause = self._causes[key] = _Cause()
        return cause


class StateLog:
    """One condition (``disk full on t-0``, ``connection limit``): logged when it
    begins and when it ends, counted in between, damped by ``quiet_s`` when it flaps."""

    _KEY: Final = "condition"

    def __init__(self, logger: logging.Logger, *, quiet_s: float = QUIET_S) -> None:
        self._once = LogOnce(logger, quiet_s=quiet_s, max_keys=1)

    @property
    def active(self) -> bool:
        return self._once.active(self._KEY)

    @property
    def count(self) -> int:
        """Events while active (the first included)."""
        return self._once.count(self._KEY)

    @property
    def total(self) -> int:
        """Events since the process started."""
        return self._once.total

    def begin(self, message: str, *args: object) -> None:
        """The condition holds (again): log if it just began, count always."""
        self._once.warning(self._KEY, message, *args, stacklevel=2)

    def end(self, message: str, *args: object) -> None:
        """The condition is over: log once (``message`` gets ``count`` and seconds)."""
        self._once.clear(self._KEY, message, *args, level=logging.WARNING, stacklevel=2)
