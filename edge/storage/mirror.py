"""The pure rules of the upstream mirror: who owns a cloud partition, where a
mirrored batch may go, and where an uplink resumes.

The cloud holds each edge partition at the edge's own offsets. A mirrored
batch is appended only where it continues the cloud log exactly (its base
offset is the cloud's log end), so a retried or replayed batch can never be
stored twice, whoever sends it. These functions decide; the SPU acts.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import Enum
from typing import Any, NamedTuple

from edge.protocol.errors import NotContiguous


class MirrorOwner(NamedTuple):
    """The edge site that alone may write a cloud mirror partition."""

    site: str
    token_sha256: str
    incarnation: str
    edge_partition: int

    @classmethod
    def parse(cls, raw: object) -> MirrorOwner | None:
        """From the SC's replica assignment (``mirror`` map); None when absent or malformed."""
        if not isinstance(raw, dict):
            return None
        site, digest, inc, part = (raw.get("site"), raw.get("token_sha256"),
                                   raw.get("incarnation"), raw.get("edge_partition"))
        if not (isinstance(site, str) and isinstance(digest, str) and isinstance(inc, str)
                and isinstance(part, int) and not isinstance(part, bool)):
            return None
        return cls(site, digest, inc, part)

    def admits(self, site: str, token: str) -> bool:
        """Whether ``site`` with ``token`` is this partition's owner (constant time)."""
        return site == self.site and hmac.compare_digest(token_digest(token), self.token_sha256)

    def to_wire(self) -> dict[str, Any]:
        return self._asdict()


def token_digest(token: str) -> str:
    """What the SC stores of a site token: tokens are 256 random bits, so a plain
    SHA-256 is enough (a slow password hash protects guessable secrets)."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_chain(bases: list[tuple[int, int]], log_end: int) -> None:
    """Accept batches ``(base_offset, next_offset)`` only if the first starts at
    ``log_end`` and each starts where the one before ended; else NotContiguous
    carrying the cloud's log end, where the sender resumes."""
    expected = log_end
    for base, following in bases:
        if base != expected:
            raise NotContiguous(
                f"mirrored batch at offset {base} does not continue the log at {log_end}",
                log_end_offset=log_end, offset=base)
        expected = following


class Resume(Enum):
    SEND = "send"  # continue from the cloud's end
    GAP = "gap"  # the edge no longer has what the cloud lacks
    AHEAD = "ahead"  # the cloud has offsets the edge never had


class ResumeDecision(NamedTuple):
    kind: Resume
    offset: int
    reason: str = ""


def resume_from(cloud_end: int, log_start: int, log_end: int) -> ResumeDecision:
    """Where an uplink continues, from the cloud's own log end (never a local guess)."""
    if cloud_end < log_start:
        return ResumeDecision(Resume.GAP, cloud_end,
                              f"the cloud ends at {cloud_end} but the edge log starts at "
                              f"{log_start}: offsets {cloud_end}..{log_start - 1} are gone")
    if cloud_end > log_end:
        return ResumeDecision(Resume.AHEAD, cloud_end,
                              f"the cloud has offsets up to {cloud_end - 1} but the edge log "
                              f"ends at {log_end} (edge log replaced or truncated)")
    return ResumeDecision(Resume.SEND, cloud_end)
