"""Configuration of one partition log, validated at construction."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

DURABILITY_MODES: Final = ("group", "always", "never")
# Index entries store file positions as u32; 2 GiB keeps every position (and a
# final batch that overshoots the limit) far below 2**32.
MAX_SEGMENT_BYTES: Final = 2 * 1024**3
# Below this an index entry per few batches costs more memory than it saves.
MIN_INDEX_INTERVAL: Final = 64
# Far beyond any real setting, far below what SQLite, CBOR and time arithmetic hold
# (a bignum here used to reach the database and fail as UNKNOWN).
MAX_DURATION_MS: Final = 100 * 365 * 24 * 3600 * 1000
MAX_LOG_BYTES: Final = 2**50

# A topic name becomes a directory name ``<topic>-<partition>``: letters, digits and
# ".", "_", "-" only, never starting with a dot. ``fullmatch``: with ``match`` and
# ``$``, "a\n" passed (``$`` matches before a final newline).
TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# The topic settings that are a partition log's own (the rest belong to the SC).
STORAGE_KEYS: Final = frozenset(
    {"retention_ms", "retention_bytes", "segment_bytes", "segment_ms", "index_interval_bytes"})


def is_topic_name(name: object) -> bool:
    """Whether ``name`` is a topic name the SC accepts and an SPU may make a directory of."""
    return isinstance(name, str) and TOPIC_NAME.fullmatch(name) is not None


def _check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        # ValueError for every bad setting: callers catch one type from a config file.
        raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """How one partition log rolls, keeps, indexes and syncs its data.

    The defaults suit a Raspberry Pi with an SD card: 64 MiB segments keep the
    number of files (and open descriptors) small, a week of retention matches
    the longest outage an edge site is expected to ride out, and group commit
    amortises one fsync over every batch of a few milliseconds.
    """

    segment_bytes: int = 64 * 1024**2
    """Roll the active segment before it would grow past this many bytes."""
    segment_ms: int = 7 * 24 * 3600 * 1000
    """Roll the active segment this long after its first write."""
    retention_ms: int | None = 7 * 24 * 3600 * 1000
    """Delete closed segments whose newest record is older; None keeps forever."""
    retention_bytes: int | None = None
    """Delete the oldest closed segments while the partition is larger; None = unbounded."""
    index_interval_bytes: int = 4096
    """Bytes of log between two sparse index entries (a read scans at most this much)."""
    durability: str = "group"
    """"group" (one fsync per commit window), "always" (fsync per request), "never" (page cache)."""
    checkpoint_interval_s: float = 5.0
    """How often the SPU writes checkpoints; bounds the log tail scanned on recovery."""

    def __post_init__(self) -> None:
        _check_int("segment_bytes", self.segment_bytes, minimum=1, maximum=MAX_SEGMENT_BYTES)
        _check_int("segment_ms", self.segment_ms, minimum=1, maximum=MAX_DURATION_MS)
        if self.retention_ms is not None:
            _check_int("retention_ms", self.retention_ms, minimum=1, maximum=MAX_DURATION_MS)
        if self.retention_bytes is not None:
            _check_int("retention_bytes", self.retention_bytes, minimum=1,
                       maximum=MAX_LOG_BYTES)
        _check_int(
            "index_interval_bytes", self.index_interval_bytes,
            minimum=MIN_INDEX_INTERVAL, maximum=MAX_SEGMENT_BYTES,
        )
        if self.durability not in DURABILITY_MODES:
            raise ValueError(
                f"durability must be one of {', '.join(DURABILITY_MODES)}, got {self.durability!r}"
            )
        interval = self.checkpoint_interval_s
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or interval <= 0
        ):
            raise ValueError(f"checkpoint_interval_s must be a positive number, got {interval!r}")
