"""Producer: batching, partitioning, acks, retries and idempotence.

Records accumulate per partition until a batch reaches ``batch_bytes`` or
``linger_ms`` passes, then one sender per partition ships the batches in order,
up to ``max_in_flight`` at once. With idempotence (the default) every batch
carries the producer id, epoch and sequence, so a batch retried after a lost
response is answered with its original offsets instead of being written twice.
When more than ``buffer_bytes`` wait, ``send`` blocks: back-pressure reaches the
caller instead of the memory of a Pi.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple

from edge.client.cluster import Backoff, ClusterClient
from edge.net.connection import ClientConnection
from edge.protocol import batch as codec
from edge.protocol import sc_api, spu_api
from edge.protocol.errors import (
    ConnectionLost,
    DeliveryUnknown,
    HeadwaterError,
    InvalidRequest,
    NotLeader,
    OutOfOrderSequence,
    RequestTimeout,
)
from edge.protocol.messages import Acks, ApiKey, check_response
from edge.protocol.schema import decode_response

log = logging.getLogger(__name__)

SEQ_MOD = 2**31
# How often a request waiting for its answer checks that its partition's leader has
# not moved (the metadata watch says so at once; the old leader may never answer).
LEADER_CHECK_S = 0.2
# Per-record bookkeeping the byte count adds on top of key and value (CBOR headers).
RECORD_OVERHEAD = 8


class RecordMetadata(NamedTuple):
    topic: str
    partition: int
    offset: int


class ProduceResult(NamedTuple):
    topic: str
    partition: int
    base_offset: int
    last_offset: int
    duplicate: bool


class _Batch:
    """Records on their way to one partition."""

    __slots__ = ("attempts", "data", "deadline", "first_ts", "future", "partition", "records",
                 "sequence", "size", "timer", "topic")

    def __init__(self, topic: str, partition: int, first_ts: int) -> None:
        self.topic = topic
        self.partition = partition
        self.first_ts = first_ts
        self.records: list[list[Any]] = []
        self.size = 0
        self.future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.timer: asyncio.TimerHandle | None = None
        self.data = b""
        self.sequence = -1
        self.attempts = 0
        self.deadline = 0.0


class RecordFuture:
    """Awaitable offset of one sent record."""

    __slots__ = ("_batch", "_index")

    def __init__(self, b: _Batch, index: int) -> None:
        self._batch = b
        self._index = index

    def add_done_callback(self, fn: Callable[[asyncio.Future[int]], object]) -> None:
        """Call ``fn`` with the batch future once the record is acknowledged or failed."""
        self._batch.future.add_done_callback(fn)

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        base = yield from asyncio.shield(self._batch.future).__await__()
        return RecordMetadata(self._batch.topic, self._batch.partition,
                              base + self._index if base >= 0 else -1)


class Producer:
    """Send records to a Headwater cluster.

    ``async with Producer("127.0.0.1:9003") as p: await p.send("topic", b"value")``
    """

    def __init__(self, sc: str, *, acks: Acks = Acks.LEADER, linger_ms: float = 5.0,
                 batch_bytes: int = 64 * 1024, buffer_bytes: int = 32 * 1024 * 1024,
                 max_in_flight: int = 5, idempotent: bool = True,
                 delivery_timeout_s: float = 120.0, request_timeout_s: float = 30.0,
                 compression: str | None = None, ssl: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, token: str | None = None) -> None:
        if batch_bytes <= 0 or batch_bytes > codec.MAX_BATCH_BYTES // 2:
            raise ValueError(f"batch_bytes must be 1..{codec.MAX_BATCH_BYTES // 2}")
        if compression not in (None, "none", "zlib"):
            raise ValueError("compression must be none or zlib")
        self.cluster = ClusterClient(sc, ssl_context=ssl, server_hostname=server_hostname,
                                     token=token)
        self.acks = Acks(acks)
        self.linger_s = linger_ms / 1000
        self.batch_bytes = batch_bytes
        self.buffer_bytes = buffer_bytes
        self.max_in_flight = max(1, max_in_flight)
        self.idempotent = idempotent and self.acks != Acks.NONE
        self.delivery_timeout_s = delivery_timeout_s
        self.request_timeout_s = request_timeout_s
        self.compression = compression
        self.producer_id = codec.NO_PRODUCER
        self.producer_epoch = -1
        self._open: dict[tuple[str, int], _Batch] = {}
        self._senders: dict[tuple[str, int], _Sender] = {}
        self._partition_counts: dict[str, int] = {}
        self._sticky: dict[str, int] = {}
        self._buffered = 0
        self._space = asyncio.Event()
        self._outstanding: set[asyncio.Future[int]] = set()
        self._failure: HeadwaterError | None = None
        self._closed = False
        self.stats = {"records": 0, "batches": 0, "retries": 0, "failed_batches": 0}

    async def __aenter__(self) -> Producer:
        await self.cluster.sc()
        self.cluster.start_watch()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None,
                   headers: dict[str, bytes] | None = None, partition: int | None = None,
                   timestamp_ms: int | None = None) -> RecordFuture:
        """Queue one record; the returned future gives its offset once acknowledged."""
        value, key, headers = _as_bytes(value, key, headers)
        if self._closed:
            raise InvalidRequest("producer is closed")
        n = self._partition_counts.get(topic)
        if n is None:
            n = await self._learn_topic(topic)
        if partition is None:
            partition = (zlib.crc32(key) % n) if key is not None else self._sticky[topic]
        elif not 0 <= partition < n:
            raise InvalidRequest(f"{topic} has {n} partitions, no {partition}")
        ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        b = self._open.get((topic, partition))
        if b is None:
            b = self._start_batch(topic, partition, ts)
        index = len(b.records)
        if headers:
            b.records.append([ts - b.first_ts, key, value, headers])
        else:
            b.records.append([ts - b.first_ts, key, value])
        size = len(value) + (len(key) if key else 0) + RECORD_OVERHEAD
        b.size += size
        self._buffered += size
        if b.size >= self.batch_bytes:
            self._seal(b)
        if self._buffered > self.buffer_bytes:
            await self._wait_for_space()
        return RecordFuture(b, index)

    async def send_batch(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *,
        partition: int | None = None, partition_key: bytes | None = None,
        producer_id: int, producer_epoch: int, base_sequence: int,
        timestamps_ms: Sequence[int] | None = None,
        headers: Sequence[dict[str, bytes] | None] | None = None, timeout_s: float = 30.0,
    ) -> ProduceResult:
        """Send one batch now with caller-chosen idempotence ids (bridges use this
        for devices: a retry with the same ids ends as exactly one copy)."""
        if not records:
            raise InvalidRequest("send_batch needs at least one record")
        if not 0 <= producer_id < 2**63 or not 0 <= base_sequence < SEQ_MOD:
            raise InvalidRequest("producer_id must be 0..2**63-1 and base_sequence 0..2**31-1")
        n = self._partition_counts.get(topic) or await self._learn_topic(topic)
        if partition is None:
            partition = zlib.crc32(partition_key) % n if partition_key is not None else 0
        now = int(time.time() * 1000)
        stamps = list(timestamps_ms) if timestamps_ms is not None else [now] * len(records)
        first = min(stamps)
        rows: list[list[Any]] = []
        for i, (key, value) in enumerate(records):
            h = headers[i] if headers is not None else None
            rows.append([stamps[i] - first, key, value, h] if h else
                        [stamps[i] - first, key, value])
        data = codec.encode_batch(rows, first_timestamp=first, producer_id=producer_id,
                                  producer_epoch=producer_epoch, base_sequence=base_sequence,
                                  compression=self._compression_for(topic))
        meta = await self._request_with_retry(topic, partition, data, timeout_s)
        answer = decode_response(spu_api.PRODUCED, meta)
        return ProduceResult(topic, partition, answer.base, answer.last, answer.dup)

    async def flush(self) -> None:
        """Send everything queued and wait for the acks; raise the first failure since
        the previous flush, if any batch could not be delivered."""
        for b in list(self._open.values()):
            self._seal(b)
        if self._outstanding:
            await asyncio.gather(*self._outstanding, return_exceptions=True)
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            for sender in self._senders.values():
                sender.stop()
            await self.cluster.close()

    # internals ------------------------------------------------------------

    async def _learn_topic(self, topic: str) -> int:
        parts = await self.cluster.partitions(topic)
        self._partition_counts[topic] = len(parts)
        self._sticky[topic] = 0
        if self.idempotent and self.producer_id < 0:
            meta = await self.cluster.sc_request(ApiKey.INIT_PRODUCER_ID)
            given = decode_response(sc_api.PRODUCER_ID, meta)
            self.producer_id, self.producer_epoch = given.producer_id, given.epoch
        return len(parts)

    def _compression_for(self, topic: str) -> codec.Compression:
        name = self.compression
        if name is None and self.cluster.metadata is not None:
            name = self.cluster.metadata.compression.get(topic, "none")
        return codec.Compression.ZLIB if name == "zlib" else codec.Compression.NONE

    def _start_batch(self, topic: str, partition: int, ts: int) -> _Batch:
        b = _Batch(topic, partition, ts)
        self._open[(topic, partition)] = b
        b.timer = asyncio.get_running_loop().call_later(self.linger_s, self._seal, b)
        return b

    def _seal(self, b: _Batch) -> None:
        key = (b.topic, b.partition)
        if self._open.get(key) is not b:
            return
        del self._open[key]
        if b.timer is not None:
            b.timer.cancel()
        n = self._partition_counts.get(b.topic, 1)
        self._sticky[b.topic] = (self._sticky.get(b.topic, 0) + 1) % n
        sender = self._senders.get(key)
        if sender is None:
            sender = self._senders[key] = _Sender(self, b.topic, b.partition)
        producer_fields = {}
        if self.idempotent:
            b.sequence = sender.next_sequence
            sender.next_sequence = (sender.next_sequence + len(b.records)) % SEQ_MOD
            producer_fields = {"producer_id": self.producer_id,
                               "producer_epoch": self.producer_epoch,
                               "base_sequence": b.sequence}
        b.data = codec.encode_batch(b.records, first_timestamp=b.first_ts,
                                    compression=self._compression_for(b.topic),
                                    **producer_fields)
        b.deadline = time.monotonic() + self.delivery_timeout_s
        self.stats["records"] += len(b.records)
        self.stats["batches"] += 1
        b.records = []
        self._outstanding.add(b.future)
        b.future.add_done_callback(functools.partial(self._batch_done, b))
        sender.enqueue(b)

    def _batch_done(self, b: _Batch, fut: asyncio.Future[int]) -> None:
        self._outstanding.discard(fut)
        self._buffered -= b.size
        if self._buffered <= self.buffer_bytes:
            self._space.set()
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            self.stats["failed_batches"] += 1
            if self._failure is None and isinstance(exc, HeadwaterError):
                self._failure = exc

    async def _wait_for_space(self) -> None:
        for b in list(self._open.values()):
            if b.size >= self.batch_bytes // 4:
                self._seal(b)
        while self._buffered > self.buffer_bytes:
            self._space.clear()
            await self._space.wait()

    async def _request_with_retry(self, topic: str, partition: int, data: bytes,
                                  timeout_s: float) -> dict[Any, Any]:
        backoff = Backoff()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                conn = await self.cluster.leader(topic, partition)
                meta, _ = await conn.request(ApiKey.PRODUCE, data, topic=topic,
                                             partition=partition, acks=int(self.acks),
                                             timeout=self.request_timeout_s)
            except HeadwaterError as exc:
                if not exc.retriable or time.monotonic() > deadline:
                    raise
                self.stats["retries"] += 1
                await backoff.sleep()
                with contextlib.suppress(HeadwaterError):
                    await self.cluster.refresh()
            else:
                return meta


def _as_bytes(value: object, key: object, headers: dict[str, Any] | None
              ) -> tuple[bytes, bytes | None, dict[str, bytes] | None]:
    """The record's parts as ``bytes``; TypeError names the part that is not bytes-like."""
    return (_one_bytes("value", value),
            None if key is None else _one_bytes("key", key),
            None if headers is None else
            {str(k): _one_bytes(f"header {k!r}", v) for k, v in headers.items()})


def _outcome(b: _Batch, exc: HeadwaterError) -> HeadwaterError:
    """The error a batch's future gets: DeliveryUnknown where an earlier attempt was
    sent and may be stored (a lost answer, or a sequence error on a retry)."""
    maybe_stored = b.attempts > 1 and isinstance(exc, OutOfOrderSequence)
    lost_answer = b.attempts > 0 and isinstance(exc, RequestTimeout | ConnectionLost | NotLeader)
    if not (maybe_stored or lost_answer):
        return exc
    return DeliveryUnknown(f"batch for {b.topic}/{b.partition} may be stored: {exc}",
                           topic=b.topic, partition=b.partition, sequence=b.sequence,
                           attempts=b.attempts, cause=type(exc).__name__)


def _one_bytes(what: str, data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{what} must be bytes, bytearray or memoryview, not "
                    f"{type(data).__name__} (encode text first, e.g. s.encode())")


class _Sender:
    """Ships one partition's batches in order, ``max_in_flight`` at a time."""

    def __init__(self, producer: Producer, topic: str, partition: int) -> None:
        self.p = producer
        self.topic = topic
        self.partition = partition
        self.next_sequence = 0
        self.queue: deque[_Batch] = deque()
        self._wake = asyncio.Event()
        # State of the send round in progress (None between rounds).
        self._conn: ClientConnection | None = None
        self._in_flight: deque[tuple[_Batch, asyncio.Future[Any] | None]] = deque()
        self._retry: list[_Batch] = []
        self._error: HeadwaterError | None = None
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"sender-{topic}/{partition}")

    def enqueue(self, b: _Batch) -> None:
        self.queue.append(b)
        self._wake.set()
        # Mid-round, a new batch leaves at once instead of waiting for the oldest
        # ack: at low rates that wait would add a whole fsync to its latency.
        self._send_more()

    def _send_more(self) -> None:
        conn = self._conn
        if conn is None:
            return
        while (self.queue and len(self._in_flight) < self.p.max_in_flight
               and self._error is None):
            b = self.queue.popleft()
            b.attempts += 1
            try:
                if self.p.acks == Acks.NONE:
                    conn.send_oneway(ApiKey.PRODUCE, b.data, topic=self.topic,
                                     partition=self.partition, acks=0)
                    self._in_flight.append((b, None))
                else:
                    self._in_flight.append((b, conn.send_request(
                        ApiKey.PRODUCE, b.data, topic=self.topic, partition=self.partition,
                        acks=int(self.p.acks))))
            except ConnectionLost as exc:
                # Back to the head of the queue: batches still in flight before it
                # fail too and must be resent first, in order.
                self._error = exc
                b.attempts -= 1
                self.queue.appendleft(b)

    def stop(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            failed = await self._send_round()
            if failed:
                self.p.stats["retries"] += 1
                await backoff.sleep()
                with contextlib.suppress(HeadwaterError):
                    await self.p.cluster.refresh()
            else:
                backoff.reset()

    async def _send_round(self) -> bool:
        """Send queued batches pipelined; requeue (in order) those that must be retried.
        Returns True if anything is to be retried."""
        try:
            conn = await self.p.cluster.leader(self.topic, self.partition)
        except HeadwaterError as exc:
            return self._fail_or_retry(list(self.queue), exc, requeue=False)
        self._conn, self._error = conn, None
        in_flight, retry = self._in_flight, self._retry
        try:
            while self.queue or in_flight:
                self._send_more()
                if not in_flight:
                    break
                await self._complete_head(conn)
        finally:
            self._conn = None
        error, self._retry = self._error, []
        if retry:
            return self._fail_or_retry(retry, error or ConnectionLost("retry"), requeue=True)
        return error is not None  # a send failed before anything was in flight: back off

    async def _complete_head(self, conn: ClientConnection) -> None:
        """Wait for the oldest request in flight and settle its batch."""
        # The head stays counted in flight until its answer is settled: the SPU keeps
        # only the last max_in_flight batches per producer, and a sixth outstanding
        # one would make a retry of the oldest an OutOfOrderSequence.
        try:
            await self._settle_head(conn)
        finally:
            self._in_flight.popleft()

    async def _settle_head(self, conn: ClientConnection) -> None:
        in_flight, retry = self._in_flight, self._retry
        b, fut = in_flight[0]
        if fut is None:
            await conn.drain()
            if not b.future.done():
                b.future.set_result(-1)
            return
        try:
            async with asyncio.timeout(self.p.request_timeout_s):
                meta, _ = await self._answer(fut, conn)
            base = decode_response(spu_api.PRODUCED, check_response(meta)).base
        except TimeoutError:
            self._error = self._error or RequestTimeout(f"produce to {conn.addr} timed out")
            retry.append(b)
            return
        except HeadwaterError as exc:
            retriable = exc.retriable or (isinstance(exc, OutOfOrderSequence)
                                          and self._error is not None)
            if retriable:
                self._error = self._error or exc
                retry.append(b)
            else:
                b.future.set_exception(_outcome(b, exc))
            return
        if not b.future.done():
            b.future.set_result(base)

    async def _answer(self, fut: asyncio.Future[tuple[dict[Any, Any], bytes]],
                      conn: ClientConnection) -> tuple[dict[Any, Any], bytes]:
        """The response, or NotLeader once the metadata names another leader: the
        resend goes to the new one (idempotence makes it safe) instead of waiting
        ``request_timeout_s`` for a leader that may never answer."""
        while not fut.done():
            if self.p.cluster.leader_moved(self.topic, self.partition, conn.addr):
                raise NotLeader(f"{self.topic}/{self.partition} moved away from {conn.addr}",
                                topic=self.topic, partition=self.partition)
            await asyncio.wait({fut}, timeout=LEADER_CHECK_S)
        return fut.result()

    def _fail_or_retry(self, batches: list[_Batch], exc: HeadwaterError, *, requeue: bool
                       ) -> bool:
        now = time.monotonic()
        keep = []
        for b in batches:
            if now > b.deadline or not exc.retriable:
                if not b.future.done():
                    b.future.set_exception(_outcome(b, exc))
                log.warning("giving up on a batch for %s/%d after %d attempts: %s",
                            self.topic, self.partition, b.attempts, exc)
            else:
                keep.append(b)
        if requeue:
            self.queue.extendleft(reversed(keep))
        else:
            for b in batches:
                if b not in keep and b in self.queue:
                    self.queue.remove(b)
        return bool(keep)
