"""The SPU's public API: produce, fetch, stream fetch, offsets, consumers.

Each handler validates its fields, does the synchronous part at once (an
append happens in arrival order) and returns either a response or an awaitable
that finishes the request (waiting for the fsync, or streaming batches).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from edge.net.server import Connection, Response
from edge.protocol import batch as batchcodec
from edge.protocol import messages, sc_api
from edge.protocol import spu_api as api
from edge.protocol.errors import (
    CorruptBatch,
    CorruptMessage,
    InvalidRequest,
    NotLeader,
    OffsetOutOfRange,
)
from edge.protocol.messages import Acks, ApiKey
from edge.protocol.schema import decode_request
from edge.spu.mirror import MirrorApi
from edge.spu.partition import Partition
from edge.spu.replicas import ReplicaSet
from edge.storage.offsets import ConsumerOffsets

log = logging.getLogger(__name__)

# Half the frame limit: a fetch answer of whole batches may overshoot max_bytes by
# one batch, and must still fit a frame.
MAX_FETCH_BYTES = 4 * 1024 * 1024
# Below this a plain read and write beats sendfile's setup (dup, wrapper, a
# second system call); live streams mostly push a batch or two.
SENDFILE_MIN_BYTES = 64 * 1024
# A stream with nothing new re-checks this often so it notices a closed partition.
STREAM_IDLE_CHECK_S = 1.0

Handler = Callable[[Connection, dict[Any, Any], bytes], Response | Awaitable[Response]]


class PublicApi:
    """Dispatch for the SPU public port."""

    def __init__(self, replicas: ReplicaSet, offsets: ConsumerOffsets, *,
                 upstream_rows: Callable[[], list[dict[str, Any]]] = list,
                 server_status: Callable[[], dict[str, Any]] = dict) -> None:
        self.replicas = replicas
        self.offsets = offsets
        self._upstream_rows = upstream_rows
        self._server_status = server_status
        self.stats = {"produce_batches": 0, "produce_records": 0, "duplicates": 0,
                      "corrupt_batches": 0, "fetches": 0, "streams": 0}
        self.mirror = MirrorApi(replicas, self.stats)
        self._handlers: dict[ApiKey, Handler] = {
            ApiKey.API_VERSIONS: self.api_versions,
            ApiKey.PRODUCE: self.produce,
            ApiKey.FETCH: self.fetch,
            ApiKey.STREAM_FETCH: self.stream_fetch,
            ApiKey.LIST_OFFSETS: self.list_offsets,
            ApiKey.OFFSET_COMMIT: self.offset_commit,
            ApiKey.OFFSET_FETCH: self.offset_fetch,
            ApiKey.LIST_CONSUMERS: self.list_consumers,
            ApiKey.PARTITION_STATUS: self.partition_status,
            ApiKey.LOGIN: self.login,
            ApiKey.UPSTREAM_STATUS: self.upstream_status,
            **self.mirror.handlers(),
        }

    def dispatch(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                 ) -> Response | Awaitable[Response]:
        key = messages.api_of(meta)
        handler = self._handlers.get(key)
        if handler is None:
            raise InvalidRequest(f"{key.name} is not served on the SPU public port")
        return handler(conn, meta, blob)

    def api_versions(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        versions = {int(k): list(messages.SUPPORTED[k]) for k in self._handlers}
        return messages.ok(meta["id"], versions=versions, role="spu",
                           spu=self.replicas.spu_id), b""

    def login(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = decode_request(sc_api.LOGIN, meta)
        return messages.ok(meta["id"], principal=self.replicas.tokens.login(conn, req.token)), b""

    def produce(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                ) -> Response | Awaitable[Response]:
        cid = meta["id"]
        req = decode_request(api.PRODUCE, meta)
        acks = req.acks
        p = self.replicas.leader(req.topic, req.partition)
        if p.mirror is not None:
            raise InvalidRequest(f"{p.name} mirrors site {p.mirror.site!r}: only its uplink "
                                 "writes it (MIRROR_APPEND)", topic=req.topic,
                                 partition=req.partition)
        try:
            header = batchcodec.validate(blob)
        except CorruptBatch as exc:
            self.stats["corrupt_batches"] += 1
            raise CorruptMessage(f"rejected batch for {p.name}: {exc}") from None
        if header.size != len(blob):
            raise CorruptMessage("a produce request carries exactly one batch")
        if header.is_gap:
            raise InvalidRequest("a gap batch is written by a cloud leader, never produced")
        if acks == Acks.ALL:
            p.check_min_isr()
        result = p.append(bytearray(blob))
        self.stats["produce_batches"] += 1
        if result.duplicate:
            self.stats["duplicates"] += 1
        else:
            self.stats["produce_records"] += header.record_count
        if acks == Acks.NONE:
            return None
        reply = messages.ok(cid, base=result.base_offset, last=result.last_offset,
                            dup=result.duplicate)
        pending = p.ack_future(result.last_offset + 1, acks)
        if pending is None:
            _check_may_ack(p)
            return reply, b""
        return _after(pending, p, reply)

    def fetch(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Awaitable[Response]:
        req = decode_request(api.FETCH, meta)
        p = self.replicas.leader(req.topic, req.partition)
        self.stats["fetches"] += 1
        return self._fetch(conn, meta["id"], p, req.offset,
                           max_bytes=min(req.max_bytes, MAX_FETCH_BYTES),
                           wait_ms=req.max_wait_ms)

    async def _fetch(self, conn: Connection, cid: int, p: Partition, offset: int, *,
                     max_bytes: int, wait_ms: int) -> Response:
        _check_range(p, offset)
        if wait_ms and p.high_watermark <= offset:
            await p.wait_for_data(offset, wait_ms / 1000)
        await self._send_slice(conn, cid, p, offset, max_bytes)
        return None

    async def _send_slice(self, conn: Connection, cid: int, p: Partition, offset: int,
                          max_bytes: int) -> int:
        """Send the batches at ``offset`` (or an empty frame); return the next offset."""
        hw = p.high_watermark
        sl = p.log.read(offset, max_bytes, max_offset=hw)
        if sl is None:
            await conn.send(_position(cid, p, offset))
            return offset
        meta = _position(cid, p, sl.next_offset)
        if conn.tls or sl.length < SENDFILE_MIN_BYTES:
            await conn.send(meta, p.log.read_bytes(offset, max_bytes, max_offset=hw))
        else:
            await conn.send_file(meta, sl.fd, sl.position, sl.length)
        return sl.next_offset

    def stream_fetch(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                     ) -> Awaitable[Response]:
        req = decode_request(api.STREAM_FETCH, meta)
        p = self.replicas.leader(req.topic, req.partition)
        self.stats["streams"] += 1
        return self._stream(conn, meta["id"], p, req.offset, min(req.max_bytes, MAX_FETCH_BYTES))

    async def _stream(self, conn: Connection, cid: int, p: Partition, offset: int,
                      max_bytes: int) -> Response:
        """Push batches as the high watermark advances.

        Flow control is TCP's: each push waits until the previous one left the
        socket buffer, so a slow consumer holds at most one push in memory here.
        """
        _check_range(p, offset)
        while not conn.closed:
            if p.closed or not p.is_leader:
                # Raises NotLeader / PartitionNotFound: the consumer re-routes.
                p = self.replicas.leader(p.topic, p.index)
            if p.high_watermark <= offset:
                await p.wait_for_data(offset, STREAM_IDLE_CHECK_S)
                continue
            offset = await self._send_slice(conn, cid, p, offset, max_bytes)
        return None

    def list_offsets(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = decode_request(api.LIST_OFFSETS, meta)
        p = self.replicas.leader(req.topic, req.partition)
        hw, start = p.high_watermark, p.log.log_start_offset
        if req.kind == "beginning":
            offset = start
        elif req.kind == "end":
            offset = hw
        else:
            if req.timestamp is None:
                raise InvalidRequest("missing field 'timestamp' (kind timestamp)",
                                     field="timestamp")
            found = p.log.offset_for_timestamp(req.timestamp)
            offset = hw if found is None else min(max(found, start), hw)
        return messages.ok(meta["id"], offset=offset, start=start, hw=hw,
                           leo=p.log.log_end_offset), b""

    def offset_commit(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = decode_request(api.OFFSET_COMMIT, meta)
        p = self.replicas.leader(req.topic, req.partition)
        if not p.log.log_start_offset <= req.offset <= p.high_watermark:
            raise OffsetOutOfRange(
                f"offset {req.offset} outside {p.log.log_start_offset}..{p.high_watermark}",
                offset=req.offset)
        self.offsets.commit(req.consumer, req.topic, req.partition, req.offset)
        p.consumer_positions_changed()
        return messages.ok(meta["id"]), b""

    def offset_fetch(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = decode_request(api.OFFSET_FETCH, meta)
        self.replicas.leader(req.topic, req.partition)
        offset = self.offsets.fetch(req.consumer, req.topic, req.partition)
        return messages.ok(meta["id"], offset=offset), b""

    def list_consumers(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        rows = []
        for consumer, topic, index, offset, updated in self.offsets.list():
            p = self.replicas.partitions.get((topic, index))
            if p is None or not p.is_leader:
                continue
            rows.append({"consumer": consumer, "topic": topic, "partition": index,
                         "offset": offset, "lag": max(p.high_watermark - offset, 0),
                         "updated_ms": updated})
        return messages.ok(meta["id"], consumers=rows), b""

    def partition_status(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                         ) -> Response:
        rows = [p.status() for p in self.replicas.partitions.values()]
        return messages.ok(meta["id"], partitions=rows, stats=dict(self.stats),
                           servers=self._server_status()), b""

    def upstream_status(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        return messages.ok(meta["id"], partitions=self._upstream_rows(),
                           spu=self.replicas.spu_id), b""


async def _after(pending: Awaitable[None], p: Partition, reply: dict[str, Any]) -> Response:
    await pending
    _check_may_ack(p)
    return reply, b""


def _check_may_ack(p: Partition) -> None:
    # Checked when the answer leaves, not when the batch arrived: a leader that was
    # paused in between may have been replaced, and its ack would be a lie.
    if not p.may_acknowledge():
        raise NotLeader(f"SPU {p.spu_id} cannot confirm it still leads {p.name}; retry",
                        topic=p.topic, partition=p.index)


def _position(cid: int, p: Partition, next_offset: int) -> dict[str, Any]:
    return messages.ok(cid, hw=p.high_watermark, leo=p.log.log_end_offset,
                       start=p.log.log_start_offset, next=next_offset)


def _check_range(p: Partition, offset: int) -> None:
    start, end = p.log.log_start_offset, p.log.log_end_offset
    if not start <= offset <= end:
        raise OffsetOutOfRange(f"offset {offset} of {p.name} outside {start}..{end}",
                               offset=offset, log_start_offset=start, log_end_offset=end)
