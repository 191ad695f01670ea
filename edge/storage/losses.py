"""What a partition lost: the edge's tally of dropped data, the cloud's gap ledger.

Both are small CBOR files in the partition directory, replaced atomically when
they change, which happens once per eviction burst or per gap marker, never per
record::

    dropped.cbor   {"records": int, "bytes": int, "bursts": int}
                   edge: data deleted before the cloud acknowledged it
    gaps.cbor      {"count": int, "offsets": int, "ranges": [[start, end], ...]}
                   cloud: gap batches in this log, the newest MAX_RANGES ranges kept

A counter is not data: an unreadable file is logged and starts again from zero.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

import cbor2

from edge.storage.fileio import write_atomic

DROPPED_NAME: Final = "dropped.cbor"
GAPS_NAME: Final = "gaps.cbor"
# Gap markers come once per outage that overflowed a budget; thousands are years.
MAX_RANGES: Final = 1000

log = logging.getLogger(__name__)


def _load(path: Path) -> dict[str, Any]:
    try:
        raw = cbor2.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except Exception as exc:  # cbor2 raises several types for bad input
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return raw if isinstance(raw, dict) else {}


def _count(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class DropTally:
    """Records and bytes this partition deleted that the cloud had not acknowledged."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        raw = _load(directory / DROPPED_NAME)
        self.records = _count(raw, "records")
        self.bytes = _count(raw, "bytes")
        self.bursts = _count(raw, "bursts")

    def add(self, records: int, size: int, dir_fd: int) -> None:
        """Count one eviction burst (blocks: an atomic write with two fsyncs)."""
        self.records += records
        self.bytes += size
        self.bursts += 1
        data = cbor2.dumps({"records": self.records, "bytes": self.bytes,
                            "bursts": self.bursts})
        write_atomic(self._dir, dir_fd, DROPPED_NAME, data)


class GapLedger:
    """The gap batches of a cloud mirror log: how many, how many offsets, where."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        raw = _load(directory / GAPS_NAME)
        self.count = _count(raw, "count")
        self.offsets = _count(raw, "offsets")
        ranges = raw.get("ranges", [])
        self.ranges: list[tuple[int, int]] = [
            (r[0], r[1]) for r in ranges if isinstance(r, list) and len(r) == 2
            and all(isinstance(x, int) for x in r) and 0 <= r[0] < r[1]
        ] if isinstance(ranges, list) else []

    def add(self, start: int, end: int, dir_fd: int) -> None:
        """Record a gap batch for offsets ``start..end-1`` (blocks: an atomic write)."""
        self.count += 1
        self.offsets += end - start
        self.ranges = [*self.ranges, (start, end)][-MAX_RANGES:]
        self._save(dir_fd)

    def truncate(self, offset: int, dir_fd: int) -> None:
        """The log was cut at ``offset``: gap batches at or after it are gone."""
        gone = [r for r in self.ranges if r[0] >= offset]
        if not gone:
            return
        self.ranges = [r for r in self.ranges if r[0] < offset]
        self.count -= len(gone)
        self.offsets -= sum(end - start for start, end in gone)
        self._save(dir_fd)

    def _save(self, dir_fd: int) -> None:
        data = cbor2.dumps({"count": self.count, "offsets": self.offsets,
                            "ranges": [list(r) for r in self.ranges]})
        write_atomic(self._dir, dir_fd, GAPS_NAME, data)
