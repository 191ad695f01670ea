"""A queue workload against a real cluster that records a :class:`checker.History`.

Several idempotent producers send unique values (``"<producer>.<partition>:<sequence>"``)
to every partition of a topic, with a bounded window of unacknowledged records
per partition; consumers read every partition from the beginning for the whole run.
``stop()`` ends the sends, waits for the last answers, lets the consumers
catch up with the settled log and adds a final read of each partition.
Used by ``test_replication_faults.py`` and ``bench/failover_soak.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from checker import History

from edge.client import Acks, Admin, Consumer, Offset, Producer, RecordFuture
from edge.client.cluster import ClusterClient
from edge.protocol.errors import HeadwaterError
from edge.protocol.messages import ApiKey


@dataclass(slots=True)
class Ack:
    """When one acknowledged record was sent and acknowledged (monotonic seconds)."""

    producer: str
    partition: int
    sent: float
    acked: float


@dataclass
class Workload:
    sc: str
    topic: str
    partitions: int = 1
    producers: int = 3
    consumers: int = 2
    acks: Acks = Acks.ALL
    window: int = 64
    # Pause between two sends of one producer; 0 sends as fast as the window allows.
    interval_s: float = 0.0
    history: History = field(default_factory=History)
    acks_seen: list[Ack] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _sending: bool = True
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _consumer_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _positions: dict[tuple[str, int], int] = field(default_factory=dict)

    def start(self) -> None:
        for i in range(self.producers):
            self._tasks.append(asyncio.create_task(self._produce(f"{self.acks.name[0]}{i}"),
                                                   name=f"producer-{i}"))
        for i in range(self.consumers):
            for part in range(self.partitions):
                self._consumer_tasks.append(asyncio.create_task(
                    self._consume(f"c{i}", part), name=f"consumer-{i}/{part}"))

    def acked(self) -> int:
        return len(self.acks_seen)

    def acked_since(self, since: float) -> int:
        """How many records sent at or after ``since`` were acknowledged."""
        count = 0
        for a in reversed(self.acks_seen):
            if a.acked < since:  # acks are appended in time order
                break
            count += a.sent >= since
        return count

    async def wait_acked(self, count: int, *, since: float = 0.0,
                         partition: int | None = None, timeout: float = 30.0) -> float:
        """Wait until ``count`` records (of ``partition``, sent at or after ``since``)
        were acknowledged; returns when the first of them was."""
        async with asyncio.timeout(timeout):
            while True:
                self._raise_if_broken()
                got = []
                for a in reversed(self.acks_seen):
                    if a.acked < since:  # acks are appended in time order
                        break
                    if a.sent >= since and partition in (None, a.partition):
                        got.append(a)
                if len(got) >= count:
                    return min(a.acked for a in got)
                await asyncio.sleep(0.02)

    async def wait_consumed(self, partition: int, offset: int, timeout: float = 30.0) -> None:
        """Wait until every consumer has received ``offset`` of ``partition``."""
        async with asyncio.timeout(timeout):
            while any(self._positions.get((f"c{i}", partition), 0) <= offset
                      for i in range(self.consumers)):
                self._raise_if_broken()
                await asyncio.sleep(0.02)

    async def stop(self, settle_timeout: float = 60.0) -> History:
        self._sending = False
        await asyncio.gather(*self._tasks)
        ends = await settled_ends(self.sc, self.topic, self.partitions, settle_timeout)
        async with asyncio.timeout(settle_timeout):
            while any(self._positions.get((f"c{i}", p), 0) < ends[p]
                      for i in range(self.consumers) for p in range(self.partitions)):
                self._raise_if_broken()
                await asyncio.sleep(0.05)
        for task in self._consumer_tasks:
            task.cancel()
        await asyncio.gather(*self._consumer_tasks, return_exceptions=True)
        for part in range(self.partitions):
            self.history.final[part] = await read_all(self.sc, self.topic, part)
        return self.history

    async def cancel(self) -> None:
        """Tear down without checking (a failed test). A producer's close flushes, and
        against a broken cluster that waits out the delivery timeout: cancel again."""
        tasks = self._tasks + self._consumer_tasks
        for _ in range(3):
            pending = [t for t in tasks if not t.done()]
            if not pending:
                return
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=2.0)

    def _raise_if_broken(self) -> None:
        if self.errors:
            raise AssertionError(f"workload client failed: {self.errors}")

    async def _produce(self, name: str) -> None:
        try:
            async with Producer(self.sc, acks=self.acks, linger_ms=2,
                                request_timeout_s=10.0, delivery_timeout_s=90.0) as p:
                # One send loop per partition, each with its own window: a partition
                # that cannot take writes must not hold the others' slots.
                await asyncio.gather(*(self._produce_to(p, f"{name}.{part}", part)
                                       for part in range(self.partitions)))
        except Exception as exc:
            self.errors.append(f"producer {name}: {exc!r}")
            raise

    async def _produce_to(self, p: Producer, name: str, part: int) -> None:
        slots = asyncio.Semaphore(self.window)
        pending: set[asyncio.Task[None]] = set()
        seq = 0
        while self._sending:
            await slots.acquire()
            sent = time.monotonic()
            fut = await p.send(self.topic, f"{name}:{seq}".encode(), partition=part)
            task = asyncio.create_task(self._answer(name, seq, part, sent, fut, slots))
            pending.add(task)
            task.add_done_callback(pending.discard)
            seq += 1
            if self.interval_s:
                await asyncio.sleep(self.interval_s)
        with contextlib.suppress(HeadwaterError):
            await p.flush()
        await asyncio.gather(*pending)

    async def _answer(self, name: str, seq: int, part: int, sent: float, fut: RecordFuture,
                      slots: asyncio.Semaphore) -> None:
        try:
            meta = await fut
        except HeadwaterError:
            self.history.send(name, seq, part, "info")
        else:
            self.history.send(name, seq, part, "ok", meta.offset)
            self.acks_seen.append(Ack(name, part, sent, time.monotonic()))
        finally:
            slots.release()

    async def _consume(self, name: str, part: int) -> None:
        try:
            async with Consumer(self.sc, self.topic, partition=part,
                                offset=Offset.beginning()) as c:
                async for chunk in c.batches():
                    rows = [(r.offset, r.value.decode()) for r in chunk.records]
                    self.history.poll(name, part, rows)
                    self._positions[(name, part)] = rows[-1][0] + 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors.append(f"consumer {name}/{part}: {exc!r}")
            raise


async def settled_ends(sc: str, topic: str, partitions: int, timeout: float) -> dict[int, int]:
    """Wait until each partition's leader has HW == LEO (nothing uncommitted left)."""
    cluster = ClusterClient(sc)
    ends: dict[int, int] = {}
    try:
        async with asyncio.timeout(timeout):
            for part in range(partitions):
                while True:
                    with contextlib.suppress(HeadwaterError):
                        conn = await cluster.leader(topic, part)
                        meta, _ = await conn.request(ApiKey.LIST_OFFSETS, topic=topic,
                                                     partition=part, kind="end")
                        if meta["hw"] == meta["leo"]:
                            ends[part] = int(meta["hw"])
                            break
                    await asyncio.sleep(0.1)
                    with contextlib.suppress(HeadwaterError):
                        await cluster.refresh()
    finally:
        await cluster.close()
    return ends


async def read_all(sc: str, topic: str, part: int) -> list[tuple[int, str]]:
    """Every record of a partition, from its start up to its high watermark."""
    async with Consumer(sc, topic, partition=part, offset=Offset.beginning()) as c:
        return [(r.offset, r.value.decode()) for r in await c.fetch_until_end()]


async def partition_rows(sc: str, topic: str) -> list[dict[str, object]]:
    async with Admin(sc) as admin:
        return await admin.list_partitions(topic)
