"""Consumer: read records of one or all partitions from a chosen offset.

Each partition is read over its own connection to the leader with a stream
fetch: the SPU pushes batches as the high watermark advances, and TCP flow
control keeps a slow consumer from being flooded (the client queues at most
``STREAM_QUEUE`` pushes per partition). A lost connection or a leader change is
retried from the last delivered offset, so records are neither skipped nor
repeated.

A batch that arrives unreadable (its CRC does not match: the disk under the
SPU changed it; or its records do not decode: written by an older version)
stops the consumer with CorruptBatch naming the partition and offset, since
skipping records silently would lose them. With ``skip_unreadable=True`` the
consumer instead continues at the next readable offset (the next batch in the
answer, else where the SPU says the answer ended), counts the skip in
``skipped``, logs it and hands it to ``on_skip``.

With ``group=`` the consumer is a member of a consumer group (``edge/client/
group.py``): it reads only the partitions the SC assigns it, starting at the
group's committed positions, and stops handing out a partition's records the
moment a rebalance takes it away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Sequence,
)
from typing import Any, NamedTuple

from edge.client.cluster import Backoff, ClusterClient
from edge.client.group import Assignment, GroupMember
from edge.net.connection import ClientConnection, Stream
from edge.protocol import batch as codec
from edge.protocol import spu_api
from edge.protocol.batch import Record
from edge.protocol.errors import (
    CorruptBatch,
    HeadwaterError,
    InvalidRequest,
    NotLeader,
    OffsetOutOfRange,
)
from edge.protocol.groups import DEFAULT_SESSION_TIMEOUT_MS
from edge.protocol.messages import ApiKey
from edge.protocol.schema import decode_response

log = logging.getLogger(__name__)

STREAM_QUEUE = 4
# How often an idle stream checks that its partition's leader has not moved.
LEADER_CHECK_S = 0.2
DEFAULT_MAX_BYTES = 256 * 1024


class Offset(NamedTuple):
    """Where a consumer starts: ``Offset.beginning()``, ``Offset.absolute(42)``, …"""

    kind: str
    value: int = 0

    @classmethod
    def beginning(cls) -> Offset:
        return cls("beginning")

    @classmethod
    def end(cls) -> Offset:
        return cls("end")

    @classmethod
    def absolute(cls, offset: int) -> Offset:
        if offset < 0:
            raise ValueError("an absolute offset is >= 0")
        return cls("absolute", offset)

    @classmethod
    def from_end(cls, count: int) -> Offset:
        if count < 0:
            raise ValueError("from_end takes a count >= 0")
        return cls("from_end", count)

    @classmethod
    def timestamp(cls, ms: int) -> Offset:
        return cls("timestamp", ms)


class PartitionRecords(NamedTuple):
    partition: int
    records: list[Record]
    # Where this partition's reading goes on: after the last record, or after an
    # unreadable batch that was skipped.
    next_offset: int = -1


class SkippedBatch(NamedTuple):
    """An unreadable batch a consumer passed over (``skip_unreadable=True``)."""

    topic: str
    partition: int
    offset: int  # the first offset not read
    next_offset: int  # where reading went on
    reason: str


class Consumer:
    """Read a topic.

    ``async with Consumer(sc, "t", offset=Offset.beginning()) as c:
    async for record in c: ...``; ``partition=None`` reads every partition.
    With ``consumer="name"`` the stored position wins over ``offset`` and
    ``commit()`` stores, per partition, the offset after the last record handed to
    the application (by iteration, or the last chunk from ``batches()``), never
    records fetched but not yet handed out. At-least-once: process a record, then
    commit; after a crash the records since the last commit are read again.

    With ``group="name"`` the partitions are shared with the group's other
    members (each read by one of them) and ``offset`` applies only where the
    group has no committed position; ``commit()`` stores positions with the SC
    for the partitions this member still holds. ``on_revoke(consumer)`` runs
    when a rebalance (or ``close()``) is about to take this member's partitions,
    after the last record was handed out and while ``commit()`` still stores
    them: commit there what has been processed, and the next owner starts right
    after it. A member silent for ``session_timeout_s`` loses its partitions;
    closing the consumer leaves the group at once.
    """

    def __init__(self, sc: str, topic: str, *, partition: int | Sequence[int] | None = None,
                 offset: Offset | None = None, consumer: str | None = None,
                 group: str | None = None,
                 session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_MS / 1000,
                 assignor: str = "range", client_label: str = "",
                 on_revoke: Callable[[Consumer], Awaitable[object]] | None = None,
                 stop_at_end: bool = False, end_offset: int | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, ssl: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, skip_unreadable: bool = False,
                 on_skip: Callable[[SkippedBatch], None] | None = None,
                 token: str | None = None) -> None:
        if group is not None and (partition is not None or consumer is not None
                                  or stop_at_end or end_offset is not None):
            raise ValueError("a group member reads the partitions the group assigns it: "
                             "group= does not combine with partition=, consumer=, "
                             "stop_at_end= or end_offset=")
        self.cluster = ClusterClient(sc, ssl_context=ssl, server_hostname=server_hostname,
                                     token=token)
        self.member = (GroupMember(self.cluster, group, topic,
                                   session_timeout_s=session_timeout_s, assignor=assignor,
                                   client=client_label)
                       if group is not None else None)
        if self.member is not None and on_revoke is not None:
            self.member.on_revoke = lambda: on_revoke(self)
        self._generation = -1
        self.topic = topic
        self.partition = partition
        self.start = offset or Offset.end()
        self.consumer = consumer
        self.stop_at_end = stop_at_end
        self.end_offset = end_offset
        self.max_bytes = max_bytes
        # Fetch position per partition (next offset to ask for) ...
        self.positions: dict[int, int] = {}
        # ... and the position after the last record handed to the application.
        self.delivered: dict[int, int] = {}
        self._limits: dict[int, int | None] = {}
        self.skip_unreadable = skip_unreadable
        self.on_skip = on_skip
        self.skipped = 0
        # Raised once the records before an unreadable batch were handed out.
        self._unreadable_at: dict[int, CorruptBatch] = {}

    async def __aenter__(self) -> Consumer:
        if self.member is not None:
            await self.member.start()
        else:
            await self.resolve()
        self.cluster.start_watch()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.member is not None:
            await self.member.leave()
        await self.cluster.close()

    async def resolve(self) -> dict[int, int]:
        """Find the partitions and the starting offset of each."""
        parts = await self.cluster.partitions(self.topic)
        indexes = ([p.partition for p in parts] if self.partition is None
                   else [self.partition] if isinstance(self.partition, int)
                   else list(self.partition))
        for i in indexes:
            if not 0 <= i < len(parts):
                raise InvalidRequest(f"{self.topic} has {len(parts)} partitions, no {i}")
            self.positions[i] = self.delivered[i] = await self._start_offset(i)
            limit = self.end_offset
            if self.stop_at_end:
                end = (await self._offsets(i, "end")).offset
                limit = end if limit is None else min(limit + 1, end)
            elif limit is not None:
                limit += 1
            self._limits[i] = limit
        return dict(self.positions)

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._records()

    async def _records(self) -> AsyncIterator[Record]:
        async for chunk in self._chunks():
            for record in chunk.records:
                if not self._holds():
                    break
                self.delivered[chunk.partition] = record.offset + 1
                yield record
            else:
                self.delivered[chunk.partition] = chunk.next_offset

    async def batches(self) -> AsyncIterator[PartitionRecords]:
        """Records as they arrive, a batch (or a few) at a time, with their partition
        (a chunk has no records when all it carried was a skipped unreadable batch)."""
        async for chunk in self._chunks():
            if not self._holds():
                continue
            self.delivered[chunk.partition] = chunk.next_offset
            yield chunk

    def _holds(self) -> bool:
        """False once a rebalance took this member's partitions (never without a group)."""
        return self.member is None or self.member.holds(self._generation)

    async def _chunks(self) -> AsyncIterator[PartitionRecords]:
        if self.member is not None:
            async for chunk in self._group_chunks(self.member):
                yield chunk
            return
        if not self.positions:
            await self.resolve()
        if len(self.positions) == 1:
            (index,) = self.positions
            async for chunk in self._partition_stream(index):
                yield chunk
            return
        async for chunk in self._merged(list(self.positions), None):
            yield chunk

    async def _group_chunks(self, member: GroupMember) -> AsyncIterator[PartitionRecords]:
        """The assigned partitions' records, generation after generation."""
        while True:
            await self._take(await member.wait_assignment())
            chunks = self._merged(list(self.positions), member.wait_revoked(self._generation))
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if not self._holds():
                        break
                    yield chunk
            if self.positions:
                log.info("stopped reading %s partitions %s", self.topic, sorted(self.positions))

    async def _take(self, assignment: Assignment) -> None:
        """Start each assigned partition at the group's position, else at ``offset``."""
        self.positions.clear()
        self.delivered.clear()
        self._limits.clear()
        self._generation = assignment.generation
        backoff = Backoff()
        for index, committed in sorted(assignment.offsets.items()):
            while True:
                try:
                    start = (await self._start_offset(index) if committed is None
                             else await self._within_log(index, committed))
                    break
                except HeadwaterError as exc:
                    if not exc.retriable:
                        raise
                    await backoff.sleep()
            self.positions[index] = self.delivered[index] = start
            self._limits[index] = None

    async def _within_log(self, index: int, committed: int) -> int:
        """A committed position, moved to the log start if retention removed it."""
        answer = await self._offsets(index, "end")
        start, leo = answer.start, answer.leo
        if committed < start:
            log.warning("%s/%d: committed position %d was removed by retention; "
                        "resuming at the log start %d", self.topic, index, committed, start)
            return start
        if committed > leo:
            log.warning("%s/%d: committed position %d is past the log end %d; resuming there",
                        self.topic, index, committed, leo)
            return leo
        return committed

    async def _merged(self, indexes: list[int], stop: Coroutine[Any, Any, None] | None
                      ) -> AsyncGenerator[PartitionRecords, None]:
        """Chunks of several partitions as they come, until each ends or ``stop`` returns.

        The first error of a partition's stream is raised as it is. No TaskGroup
        here: closing this generator throws GeneratorExit at the ``yield``, and a
        TaskGroup would turn that into an exception group."""
        queue: asyncio.Queue[PartitionRecords | None] = asyncio.Queue(STREAM_QUEUE * 4)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._pump(i, queue), name=f"consume-{self.topic}/{i}")
                 for i in indexes]
        expected = len(tasks)
        if stop is not None:
            tasks.append(loop.create_task(self._stop_when(stop, queue, tasks[:]),
                                          name=f"consume-{self.topic}-revoked"))
            expected = max(expected, 1)
        done = 0
        try:
            while done < expected:
                item = await queue.get()
                if item is not None:
                    yield item
                    continue
                done += 1
                failed = [t.exception() for t in tasks if t.done() and not t.cancelled()]
                for exc in failed:
                    if exc is not None:
                        raise exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _stop_when(stop: Coroutine[Any, Any, None],
                         queue: asyncio.Queue[PartitionRecords | None],
                         streams: list[asyncio.Task[None]]) -> None:
        await stop
        for task in streams:
            task.cancel()
        # The streams' ends wake the reader; with none running this one does.
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(None)

    async def _pump(self, index: int, queue: asyncio.Queue[PartitionRecords | None]) -> None:
        try:
            async for chunk in self._partition_stream(index):
                await queue.put(chunk)
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def fetch_until_end(self) -> list[Record]:
        """Every record from the start position up to the current end."""
        if self.member is not None:
            raise ValueError("a group member follows its partitions; it has no end")
        self.stop_at_end = True
        self.positions.clear()
        self.delivered.clear()
        await self.resolve()
        return [r async for r in self]

    async def _partition_stream(self, index: int) -> AsyncIterator[PartitionRecords]:
        backoff = Backoff()
        limit = self._limits.get(index)
        while limit is None or self.positions[index] < limit:
            conn: ClientConnection | None = None
            try:
                conn = await self.cluster.dedicated(self.topic, index)
                stream = conn.open_stream(ApiKey.STREAM_FETCH, maxsize=STREAM_QUEUE,
                                          topic=self.topic, partition=index,
                                          offset=self.positions[index],
                                          max_bytes=self.max_bytes)
                while limit is None or self.positions[index] < limit:
                    item = await self._next(stream, conn.addr, index)
                    if item is None:
                        break
                    before = self.positions[index]
                    records = self._decode(index, item, limit)
                    if self.positions[index] != before:
                        backoff.reset()
                        yield PartitionRecords(index, records, self.positions[index])
                    if (unreadable := self._unreadable_at.pop(index, None)) is not None:
                        raise unreadable  # after the records before it were handed out
            except HeadwaterError as exc:
                if not exc.retriable:
                    raise
                log.info("stream of %s/%d interrupted (%s); resuming at %d", self.topic, index,
                         exc, self.positions[index])
                await backoff.sleep()
                with contextlib.suppress(HeadwaterError):
                    await self.cluster.refresh()
            finally:
                if conn is not None:
                    await conn.close()

    async def _next(self, stream: Stream, addr: str, index: int
                    ) -> tuple[dict[Any, Any], bytes] | None:
        """The next push, or NotLeader once the metadata names another leader (a
        deposed leader that hangs would keep the stream silent forever)."""
        while True:
            try:
                async with asyncio.timeout(LEADER_CHECK_S):
                    return await stream.next()
            except TimeoutError:
                if self.cluster.leader_moved(self.topic, index, addr):
                    raise NotLeader(f"{self.topic}/{index} moved away from {addr}",
                                    topic=self.topic, partition=index) from None

    def _decode(self, index: int, item: tuple[dict[Any, Any], bytes], limit: int | None
                ) -> list[Record]:
        blob = item[1]
        position = self.positions[index]
        out: list[Record] = []
        pos = 0
        while pos < len(blob):
            try:
                header = codec.verify(blob, pos)
                records = (codec.decode_records(blob, pos, header)
                           if header.next_offset > position else [])
            except CorruptBatch as exc:
                if not self.skip_unreadable:
                    self._unreadable_at[index] = CorruptBatch(
                        f"{self.topic}/{index}: unreadable batch at offset {position}: {exc} "
                        "(skip it with --skip-unreadable, Consumer(skip_unreadable=True))",
                        topic=self.topic, partition=index, offset=position)
                    break
                pos, position = self._skip(index, item, pos, position, exc)
                continue
            pos += header.size
            if header.is_gap and header.next_offset > position:
                # Offsets a mirrored edge deleted before sending: nothing to hand out.
                position = (header.next_offset if limit is None
                            else min(header.next_offset, max(limit, position)))
                continue
            if records and records[0].offset < position:
                records = records[position - records[0].offset:]
            if records:
                out.extend(records)
                position = records[-1].offset + 1
        if limit is not None and out and out[-1].offset >= limit:
            out = [r for r in out if r.offset < limit]
            position = out[-1].offset + 1 if out else self.positions[index]
        self.positions[index] = position
        return out

    def _skip(self, index: int, item: tuple[dict[Any, Any], bytes], pos: int,
              position: int, exc: CorruptBatch) -> tuple[int, int]:
        """Skip the unreadable batch at ``pos``: ``(next position in the blob, next
        offset)``. Its own header is not trusted: the next offset is the next
        batch's, else the end of the SPU's answer."""
        meta, blob = item
        where = f"{self.topic}/{index}: unreadable batch at offset {position}"
        end = pos + _size_or_rest(blob, pos)
        resume = codec.batch_prefix(blob, end)[0] if end < len(blob) else meta.get("next")
        if not isinstance(resume, int) or resume <= position:
            raise CorruptBatch(f"{where}: {exc}; no readable offset after it",
                               topic=self.topic, partition=index, offset=position) from None
        skip = SkippedBatch(self.topic, index, position, resume, str(exc))
        self.skipped += 1
        log.warning("%s: skipped to offset %d: %s", where, resume, exc)
        if self.on_skip is not None:
            self.on_skip(skip)
        return end, resume

    async def commit(self) -> dict[int, int]:
        """Store, per partition, the offset after the last record handed out; returns
        the positions stored. A group member stores only those of partitions it still
        holds (a rebalance may have moved the others: their new reader re-reads them)."""
        if self.member is not None:
            return await self.member.commit(self._generation, dict(self.delivered))
        if self.consumer is None:
            raise InvalidRequest("commit needs a consumer name")
        for index, offset in self.delivered.items():
            conn = await self.cluster.leader(self.topic, index)
            await conn.request(ApiKey.OFFSET_COMMIT, consumer=self.consumer, topic=self.topic,
                               partition=index, offset=offset)
        return dict(self.delivered)

    async def _offsets(self, index: int, kind: str, **extra: Any) -> spu_api.Offsets:
        conn = await self.cluster.leader(self.topic, index)
        meta, _ = await conn.request(ApiKey.LIST_OFFSETS, topic=self.topic, partition=index,
                                     kind=kind, **extra)
        return decode_response(spu_api.OFFSETS, meta)

    async def _start_offset(self, index: int) -> int:
        if self.consumer is not None:
            conn = await self.cluster.leader(self.topic, index)
            meta, _ = await conn.request(ApiKey.OFFSET_FETCH, consumer=self.consumer,
                                         topic=self.topic, partition=index)
            committed = decode_response(spu_api.OFFSET_FETCHED, meta).offset
            if committed is not None:
                return committed
        kind, value = self.start
        if kind == "absolute":
            ends = await self._offsets(index, "end")
            if not ends.start <= value <= ends.leo:
                raise OffsetOutOfRange(
                    f"offset {value} of {self.topic}/{index} is outside "
                    f"{ends.start}..{ends.leo}", offset=value)
            return value
        if kind in ("beginning", "end"):
            return (await self._offsets(index, kind)).offset
        if kind == "timestamp":
            return (await self._offsets(index, "timestamp", timestamp=value)).offset
        ends = await self._offsets(index, "end")
        return max(ends.offset - value, ends.start)


def _size_or_rest(blob: bytes, pos: int) -> int:
    """Bytes of the batch at ``pos`` by its length field, or the rest of ``blob``
    when that length cannot be right (the answer holds whole batches only)."""
    try:
        _, size = codec.batch_prefix(blob, pos)
    except CorruptBatch:
        return len(blob) - pos
    if size < codec.HEADER_SIZE or pos + size > len(blob):
        return len(blob) - pos
    if pos + size < len(blob):
        try:
            codec.batch_prefix(blob, pos + size)
        except CorruptBatch:
            return len(blob) - pos
    return size
