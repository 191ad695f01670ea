"""Cloud side of the upstream mirror: MIRROR_OFFSETS, MIRROR_APPEND and MIRROR_GAP.

An edge site's uplink asks the cloud leader of its home partition where the
cloud log ends (at every connect), then sends stored edge batches unchanged
with their edge offsets, zstd-compressed on the wire when both sides speak
MIRROR_APPEND v1 (inflated here, bounded, back to the stored bytes). They are
validated like any produce and appended only where they continue the log
(``check_chain``); the answer waits until the high watermark covers them
(``acks=all``), so the edge counts a batch as delivered only once every in-sync
cloud replica has it on disk. MIRROR_GAP appends a gap batch where the edge
deleted data before the cloud had it (its disk budget), so the loss is a
visible, counted record in the cloud log, never a silent jump.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from edge.net.server import Connection, Response
from edge.protocol import batch as batchcodec
from edge.protocol import messages, wirezstd
from edge.protocol import spu_api as api
from edge.protocol.errors import (
    AuthenticationFailed,
    CorruptBatch,
    CorruptMessage,
    InvalidRequest,
    NotLeader,
)
from edge.protocol.framing import MAX_FRAME_BYTES
from edge.protocol.messages import Acks, ApiKey
from edge.protocol.schema import decode_request
from edge.spu.partition import Partition
from edge.spu.replicas import ReplicaSet

log = logging.getLogger(__name__)


class MirrorApi:
    """The mirror handlers of the SPU public port."""

    def __init__(self, replicas: ReplicaSet, stats: dict[str, int]) -> None:
        self.replicas = replicas
        self.stats = stats
        stats.update(mirror_batches=0, mirror_records=0, mirror_refused=0, mirror_corrupt=0,
                     mirror_wire_bytes=0, mirror_raw_bytes=0, mirror_gaps=0,
                     mirror_gap_offsets=0)

    def handlers(self) -> dict[ApiKey, Any]:
        return {ApiKey.MIRROR_OFFSETS: self.mirror_offsets,
                ApiKey.MIRROR_APPEND: self.mirror_append,
                ApiKey.MIRROR_GAP: self.mirror_gap}

    def _owned(self, req: api.MirrorOffsetsRequest | api.MirrorAppendRequest
               | api.MirrorGapRequest) -> Partition:
        """The led mirror partition the request names, if its site may write it."""
        p = self.replicas.leader(req.topic, req.partition)
        if p.mirror is None:
            raise InvalidRequest(f"{p.name} is not a mirror partition", topic=req.topic)
        if not p.mirror.admits(req.site, req.token):
            self.stats["mirror_refused"] += 1
            raise AuthenticationFailed(f"site {req.site!r} may not write {p.name}",
                                       topic=req.topic, partition=req.partition)
        if req.edge is not None:
            p.edge_report = ({k: req.edge[k] for k in api.EDGE_REPORT_KEYS if k in req.edge},
                             time.monotonic())
        return p

    def mirror_offsets(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                       ) -> Response:
        p = self._owned(decode_request(api.MIRROR_OFFSETS, meta))
        return messages.ok(meta["id"], **_position(p)), b""

    def mirror_append(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                      ) -> Response | Awaitable[Response]:
        req = decode_request(api.MIRROR_APPEND, meta)
        p = self._owned(req)
        wire = len(blob)
        try:
            blob = _inflated(req, blob)
            batches, chain, records = _split(blob, p.name)
        except CorruptMessage:
            self.stats["mirror_corrupt"] += 1
            raise
        self.stats["mirror_wire_bytes"] += wire
        self.stats["mirror_raw_bytes"] += len(blob)
        p.check_min_isr()
        end = p.append_mirrored(batches, chain)
        self.stats["mirror_batches"] += len(batches)
        self.stats["mirror_records"] += records
        pending = p.ack_future(end, Acks.ALL)
        return _confirm(pending, p, meta["id"])


    def mirror_gap(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                   ) -> Response | Awaitable[Response]:
        req = decode_request(api.MIRROR_GAP, meta)
        offsets = req.end - req.start
        if not 0 < offsets <= batchcodec.MAX_GAP_OFFSETS:
            raise InvalidRequest(f"a gap covers 1..{batchcodec.MAX_GAP_OFFSETS} offsets, "
                                 f"not {req.start}..{req.end}", field="end")
        p = self._owned(req)
        p.check_min_isr()
        gap = bytearray(batchcodec.encode_gap(offsets, timestamp=int(time.time() * 1000)))
        end = p.append_mirrored([gap], [(req.start, req.end)])
        self.stats["mirror_gaps"] += 1
        self.stats["mirror_gap_offsets"] += offsets
        log.warning("mirror %s: site %s lost offsets %d..%d before the cloud had them "
                    "(its disk budget); gap marked", p.name, req.site, req.start,
                    req.end - 1)
        return _confirm(p.ack_future(end, Acks.ALL), p, meta["id"])


def _inflated(req: api.MirrorAppendRequest, blob: bytes) -> bytes:
    """The stored batches a request carries, inflated if it came compressed.

    The inflated size is bounded by what one uncompressed request could carry
    (a frame), checked before inflating."""
    if req.codec == wirezstd.Codec.NONE:
        return blob
    if req.raw_bytes is None:
        raise InvalidRequest("missing field 'raw_bytes' (codec zstd)", field="raw_bytes")
    return wirezstd.decompress(blob, req.raw_bytes, MAX_FRAME_BYTES)


def _split(blob: bytes, name: str) -> tuple[list[bytearray], list[tuple[int, int]], int]:
    """Every batch of ``blob``, fully validated, with its (base, next) offsets."""
    if not blob:
        raise InvalidRequest("MIRROR_APPEND carries at least one batch")
    batches, chain, records, pos = [], [], 0, 0
    while pos < len(blob):
        try:
            h = batchcodec.validate(blob, pos)
        except CorruptBatch as exc:
            raise CorruptMessage(f"rejected mirrored batch for {name}: {exc}") from None
        if h.is_gap:
            raise InvalidRequest(f"rejected mirrored batch for {name}: a gap batch")
        batches.append(bytearray(blob[pos:pos + h.size]))
        chain.append((h.base_offset, h.next_offset))
        records += h.record_count
        pos += h.size
    return batches, chain, records


async def _confirm(pending: Awaitable[None] | None, p: Partition, cid: int) -> Response:
    if pending is not None:
        await pending
    if not p.may_acknowledge():
        raise NotLeader(f"SPU {p.spu_id} cannot confirm it still leads {p.name}; retry",
                        topic=p.topic, partition=p.index)
    return messages.ok(cid, **_position(p)), b""


def _position(p: Partition) -> dict[str, Any]:
    incarnation = p.mirror.incarnation if p.mirror is not None else ""
    return {"end": p.log.log_end_offset, "hw": p.high_watermark,
            "start": p.log.log_start_offset, "incarnation": incarnation}
