"""A partition replica on an SPU: its log, group commit and the high watermark.

Group commit: the first append after a flush starts a flush task; it runs one
tick later, so every batch that arrived in the same read (and every batch that
arrives while an fsync is running) shares the next fsync. Acks wait for the
fsync that covers them, so an acknowledged record survives power loss. The
window is thus one fsync long and needs no timer; ``always`` fsyncs each batch
on its own, ``never`` acknowledges from the page cache.

The high watermark is what consumers may read: with one replica it is the
durable end of the log (the flushed offset), so a consumer never sees a record
that a crash could take back. (``never`` has no durable point, so it exposes
the log end.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from edge.protocol.errors import NotLeader, StorageError
from edge.storage.log import AppendResult, PartitionLog

log = logging.getLogger(__name__)


class Partition:
    """Leader-side state of one partition replica."""

    def __init__(self, topic: str, index: int, plog: PartitionLog, *, durability: str,
                 leader_epoch: int, is_leader: bool) -> None:
        self.topic = topic
        self.index = index
        self.log = plog
        self.durability = durability
        self.leader_epoch = leader_epoch
        self.is_leader = is_leader
        self.failed: StorageError | None = None
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._flush_task: asyncio.Task[None] | None = None
        self._hw_event = asyncio.Event()
        self.closed = False
        if durability == "never":
            plog.set_high_watermark(plog.log_end_offset)
        else:
            plog.set_high_watermark(plog.flushed_offset)

    @property
    def name(self) -> str:
        return f"{self.topic}/{self.index}"

    @property
    def high_watermark(self) -> int:
        return self.log.high_watermark

    def status(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "partition": self.index, "leader": self.is_leader,
            "epoch": self.leader_epoch, "hw": self.high_watermark,
            "leo": self.log.log_end_offset, "start": self.log.log_start_offset,
            "size": self.log.size_bytes, "failed": self.failed is not None,
        }

    def append(self, batch: bytearray) -> AppendResult:
        """Append one verified batch as leader; call ``durable`` to await its ack point."""
        if self.failed is not None:
            raise self.failed
        if not self.is_leader:
            raise NotLeader(f"this SPU does not lead {self.name}", topic=self.topic,
                            partition=self.index)
        try:
            result = self.log.append(batch, leader_epoch=self.leader_epoch)
        except StorageError as exc:
            self._fail(exc)
            raise
        if result.duplicate:
            return result
        if self.durability == "never":
            self._set_hw(self.log.log_end_offset)
        elif self.durability == "always":
            self._flush_now()
        else:
            self._start_flush()
        return result

    def durable(self, end_offset: int) -> asyncio.Future[None] | None:
        """A future that resolves once every offset below ``end_offset`` is durable,
        or None if it already is."""
        if self.failed is not None:
            raise self.failed
        if self.durability == "never" or self.log.flushed_offset >= end_offset:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((end_offset, fut))
        return fut

    async def wait_for_data(self, offset: int, timeout: float) -> bool:
        """Wait until the high watermark passes ``offset``; False on timeout."""
        while self.high_watermark <= offset and not self.closed:
            event = self._hw_event
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                return False
        return not self.closed

    def _start_flush(self) -> None:
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(
                self._flush_loop(), name=f"flush-{self.name}")

    async def _flush_loop(self) -> None:
        try:
            while self.failed is None and self.log.flushed_offset < self.log.log_end_offset:
                ticket = self.log.prepare_flush()
                if ticket is None:
                    break
                try:
                    await asyncio.to_thread(ticket.run)
                    flushed = self.log.complete_flush(ticket)
                except (OSError, StorageError) as exc:
                    self._fail(exc)
                    return
                self._flushed(flushed)
        finally:
            self._flush_task = None

    def _flush_now(self) -> None:
        try:
            flushed = self.log.flush()
        except (OSError, StorageError) as exc:
            self._fail(exc)
            raise self.failed from None  # type: ignore[misc]
        self._flushed(flushed)

    def _flushed(self, flushed: int) -> None:
        while self._waiters and self._waiters[0][0] <= flushed:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        self._set_hw(flushed)

    def _set_hw(self, hw: int) -> None:
        if hw > self.log.high_watermark:
            self.log.set_high_watermark(hw)
            self._hw_event.set()
            self._hw_event = asyncio.Event()

    def _fail(self, exc: BaseException) -> None:
        # A failed fsync leaves the page cache in an unknown state: nothing
        # written since the last good flush may ever be acknowledged.
        if self.failed is None:
            log.error("partition %s failed: %s; it refuses writes until the SPU restarts",
                      self.name, exc)
            self.failed = StorageError(f"partition {self.name} failed: {exc}",
                                       topic=self.topic, partition=self.index)
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(self.failed)

    async def close(self) -> None:
        """Flush what is written, checkpoint and close the files."""
        self.closed = True
        self._hw_event.set()
        if self._flush_task is not None:
            with contextlib.suppress(Exception):
                await self._flush_task
        if self.failed is None:
            try:
                self._flushed(self.log.flush())
            except (OSError, StorageError) as exc:
                self._fail(exc)
        with contextlib.suppress(OSError, StorageError):
            self.log.close()
