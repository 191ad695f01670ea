"""A partition replica on an SPU: its log, group commit, ISR and high watermark.

Group commit: the first append after a flush starts a flush task; it runs one
tick later, so every batch that arrived in the same read (and every batch that
arrives while an fsync is running) shares the next fsync. Acks wait for the
fsync that covers them, so an acknowledged record survives power loss. The
window is thus one fsync long and needs no timer; ``always`` fsyncs each batch
on its own, ``never`` acknowledges from the page cache.

As leader, the high watermark (what consumers may read, what ``acks=all``
waits for) is the smallest *durable* offset among the in-sync replicas: the
leader's flushed offset and each ISR follower's flushed offset as reported in
its fetches. A consumer therefore never sees a record that a crash of the ISR
could take back. (``never`` has no durable point; it uses log ends.)

A follower copies its leader's batches unchanged (offsets and epochs
included) and takes the leader's high watermark, capped at its own log end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from edge.logstate import StateLog
from edge.protocol.errors import DiskFull, NotEnoughReplicas, NotLeader, StorageError
from edge.protocol.messages import Acks
from edge.storage.budget import TopicBudget
from edge.storage.epochs import EpochCache
from edge.storage.log import AppendResult, PartitionLog
from edge.storage.mirror import MirrorOwner, check_chain

log = logging.getLogger(__name__)


@dataclass
class FollowerState:
    """What the leader knows of one follower, from its fetches."""

    leo: int = -1
    durable: int = -1
    last_caught_up: float = 0.0
    last_fetch: float = 0.0


def _unlimited(_p: Partition, _need: int) -> None:
    """No disk budget: every write fits."""


class Partition:
    """One partition replica: leader or follower."""

    def __init__(self, topic: str, index: int, plog: PartitionLog, *, spu_id: int,
                 durability: str, leader_epoch: int, leader_id: int | None,
                 replicas: list[int], isr: list[int], min_isr: int = 1,
                 ack_guard: Callable[[], bool] | None = None) -> None:
        self.topic = topic
        self.index = index
        self.log = plog
        self.spu_id = spu_id
        self.durability = durability
        self.leader_epoch = leader_epoch
        self.leader_id = leader_id
        self.replicas = list(replicas)
        self.isr = list(isr)
        self.min_isr = min_isr
        self.epochs = EpochCache(plog.directory)
        self.followers: dict[int, FollowerState] = {}
        self._isr_pending = False
        # Bumped on every consumer-position commit; followers copy positions when
        # (leader epoch, version) differs from the copy they hold.
        self._consumer_version = 0
        self.failed: StorageError | None = None
        # Disk full is a state, logged when it begins and when it ends, not per append.
        self.disk_full = StateLog(log)
        self.closed = False
        # Cloud side: the site that alone writes this partition (None: a normal one).
        self.mirror: MirrorOwner | None = None
        # Cloud side: what the site's uplink last said of its edge partition, and when.
        self.edge_report: tuple[dict[str, int], float] | None = None
        # Edge side: the edge log's identity when the topic is mirrored upstream.
        self.upstream_source: str | None = None
        self.upstream_priority = 0
        # What the cloud has of this log (its high watermark as the uplink last heard
        # it; on a follower, as the leader passed it on); None: unknown or not mirrored.
        self.cloud_acked: int | None = None
        self.budget = TopicBudget()
        # The SPU's disk budget: called with the bytes of every append before it.
        self.make_room: Callable[[Partition, int], None] = _unlimited
        self.fsync_observer: Callable[[float], None] | None = None
        self._ack_guard = ack_guard or (lambda: True)
        self._flush_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._hw_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._flush_task: asyncio.Task[None] | None = None
        self._hw_event = asyncio.Event()
        self._leo_event = asyncio.Event()
        if self.is_leader:
            self._start_leading()

    @property
    def name(self) -> str:
        return f"{self.topic}/{self.index}"

    @property
    def is_leader(self) -> bool:
        return self.leader_id == self.spu_id

    @property
    def high_watermark(self) -> int:
        return self.log.high_watermark

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "topic": self.topic, "partition": self.index, "leader": self.is_leader,
            "epoch": self.leader_epoch, "hw": self.high_watermark,
            "leo": self.log.log_end_offset, "start": self.log.log_start_offset,
            "size": self.log.size_bytes, "failed": self.failed is not None,
            "isr": self.isr if self.is_leader else None,
            **self._loss_status(), **self._edge_status(),
            "followers": {str(r): {"leo": f.leo, "lag": max(self.log.log_end_offset - f.leo, 0),
                                   "last_fetch_s": round(now - f.last_fetch, 3)
                                   if f.last_fetch else None}
                          for r, f in self.followers.items()} if self.is_leader else None,
        }

    def _room(self, size: int) -> None:
        self.make_room(self, size)

    def _loss_status(self) -> dict[str, Any]:
        """The budget's drops (edge) and the gap markers (cloud), when there are any:
        a heartbeat carries every partition's status, so zeros are left out."""
        out = {"dropped": self.log.dropped.records, "gaps": self.log.gaps.count,
               "gap_offsets": self.log.gaps.offsets}
        return {k: v for k, v in out.items() if v}

    def _edge_status(self) -> dict[str, Any]:
        if self.edge_report is None:
            return {}
        report, at = self.edge_report
        return {"edge": {**report, "age_ms": int((time.monotonic() - at) * 1000)}}

    # roles ------------------------------------------------------------------

    def update_role(self, *, epoch: int, leader_id: int | None, replicas: list[int],
                    isr: list[int], min_isr: int) -> bool:
        """Apply the SC's view; True if leadership or epoch changed. A view older than
        the epoch this replica knows changes nothing."""
        if epoch < self.leader_epoch:
            return False
        self.replicas, self.min_isr = list(replicas), min_isr
        changed = epoch != self.leader_epoch or leader_id != self.leader_id
        was_leader = self.is_leader
        self.leader_epoch, self.leader_id = epoch, leader_id
        if not self._isr_pending or changed:
            self.isr = list(isr)
        if changed:
            if self.is_leader:
                self._start_leading()
            elif was_leader:
                self.step_down(f"SPU {leader_id} now leads epoch {epoch}")
        elif self.is_leader:
            self._recompute_hw()
        return changed

    def _start_leading(self) -> None:
        # Followers get one lag period of grace to show up before the ISR drops them.
        now = time.monotonic()
        self.followers = {r: FollowerState(last_caught_up=now) for r in self.replicas
                          if r != self.spu_id}
        self._isr_pending = False
        self.epochs.assign(self.leader_epoch, self.log.log_end_offset)
        log.info("leading %s at epoch %d from offset %d (isr %s)", self.name,
                 self.leader_epoch, self.log.log_end_offset, self.isr)
        self._recompute_hw()

    def step_down(self, why: str) -> None:
        """Stop acting as leader; every waiting produce fails with a retriable error."""
        if self.leader_id == self.spu_id:
            self.leader_id = None
        log.warning("%s: no longer leader (%s)", self.name, why)
        err = NotLeader(f"SPU {self.spu_id} is no longer the leader of {self.name}: {why}",
                        topic=self.topic, partition=self.index)
        for waiters in (self._flush_waiters, self._hw_waiters):
            while waiters:
                _, fut = waiters.popleft()
                if not fut.done():
                    fut.set_exception(err)

    # leader: produce ----------------------------------------------------------

    def append(self, batch: bytearray) -> AppendResult:
        """Append one verified batch as leader; ``ack_future`` gives its ack point."""
        if self.failed is not None:
            raise self.failed
        if not self.is_leader:
            raise NotLeader(f"this SPU does not lead {self.name}", topic=self.topic,
                            partition=self.index)
        try:
            # The budget is asked only for a batch that is written: a producer's retry
            # of a stored batch is answered with its offsets even when the budget is full.
            result = self.log.append(batch, leader_epoch=self.leader_epoch,
                                     before_write=self._room)
        except DiskFull as exc:
            self._refused(exc)
            raise
        except StorageError as exc:
            self._fail(exc)
            raise
        self._disk_ok()
        if not result.duplicate:
            self._appended()
        return result

    def append_mirrored(self, batches: list[bytearray], chain: list[tuple[int, int]]
                        ) -> int:
        """Append an edge's verified batches at the edge's offsets, all or none:
        only if ``chain`` (base, next offset of each) continues this log exactly.
        Returns the new log end. The leader epoch field is this cluster's own, as for
        any batch (it drives the cloud's replica truncation); offsets and every
        CRC-covered byte stay the edge's."""
        if self.failed is not None:
            raise self.failed
        if not self.is_leader:
            raise NotLeader(f"this SPU does not lead {self.name}", topic=self.topic,
                            partition=self.index)
        check_chain(chain, self.log.log_end_offset)
        self._append_stored(batches, self.leader_epoch)
        return self.log.log_end_offset

    def check_min_isr(self) -> None:
        if len(self.isr) < self.min_isr:
            raise NotEnoughReplicas(
                f"{self.name} has {len(self.isr)} in-sync replicas, needs {self.min_isr}",
                isr=len(self.isr), min_isr=self.min_isr)

    def ack_future(self, end_offset: int, acks: int) -> asyncio.Future[None] | None:
        """A future for when ``end_offset`` is acknowledged under ``acks``, None if now."""
        if self.failed is not None:
            raise self.failed
        if acks == Acks.ALL:
            if self.high_watermark >= end_offset:
                return None
            return self._wait(self._hw_waiters, end_offset)
        if self.durability == "never" or self.log.flushed_offset >= end_offset:
            return None
        return self._wait(self._flush_waiters, end_offset)

    def may_acknowledge(self) -> bool:
        """False when this SPU cannot be sure it still leads (it was paused, or the
        SC has not confirmed its assignment since it started); the produce then fails
        retriably. A single replica cannot have been replaced, so it never waits."""
        return self.is_leader and (len(self.replicas) <= 1 or self._ack_guard())

    def _wait(self, waiters: deque[tuple[int, asyncio.Future[None]]], end: int
              ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append((end, fut))
        return fut

    # leader: followers ---------------------------------------------------------

    def follower_fetched(self, replica: int, offset: int, durable: int) -> None:
        """A follower asked for ``offset``: it has everything below, ``durable`` of it
        on disk."""
        state = self.followers.setdefault(replica, FollowerState())
        now = time.monotonic()
        state.leo, state.durable, state.last_fetch = offset, min(durable, offset), now
        if offset >= self.log.log_end_offset:
            state.last_caught_up = now
        self._recompute_hw()

    def isr_proposal(self, lag_s: float) -> list[int] | None:
        """A new ISR when a follower fell behind for ``lag_s`` or caught up again."""
        if not self.is_leader or self._isr_pending:
            return None
        now = time.monotonic()
        isr = [r for r in self.isr
               if r == self.spu_id or now - self.followers.get(r, FollowerState()).
               last_caught_up <= lag_s]
        for r, state in self.followers.items():
            if r not in isr and r in self.replicas and state.leo >= self.high_watermark \
                    and now - state.last_caught_up <= lag_s:
                isr.append(r)
        if self.spu_id not in isr:
            isr.insert(0, self.spu_id)
        return isr if sorted(isr) != sorted(self.isr) else None

    @property
    def isr_pending(self) -> bool:
        """An ISR proposal is on its way to the SC: the SC's older view must not undo
        the ISR meanwhile, and no second proposal starts."""
        return self._isr_pending

    @contextlib.contextmanager
    def proposing_isr(self) -> Iterator[None]:
        self._isr_pending = True
        try:
            yield
        finally:
            self._isr_pending = False

    @property
    def consumer_version(self) -> int:
        return self._consumer_version

    def consumer_positions_changed(self) -> None:
        """A consumer position of this partition was committed: followers copy them."""
        self._consumer_version += 1

    def apply_isr(self, isr: list[int]) -> None:
        log.info("%s: ISR %s -> %s", self.name, self.isr, isr)
        self.isr = list(isr)
        self._recompute_hw()

    def _recompute_hw(self) -> None:
        if not self.is_leader:
            return
        local = (self.log.log_end_offset if self.durability == "never"
                 else self.log.flushed_offset)
        hw = local
        for r in self.isr:
            if r == self.spu_id:
                continue
            state = self.followers.get(r)
            durable = -1 if state is None else (
                state.leo if self.durability == "never" else state.durable)
            hw = min(hw, durable)
        if hw >= 0:
            self._set_hw(hw)

    # follower ---------------------------------------------------------------

    def append_replica(self, batch: bytearray, epoch: int) -> None:
        """Append a batch copied from the leader, keeping its offsets and epoch."""
        if self.failed is not None:
            raise self.failed
        if epoch > self.epochs.latest_epoch:
            self.epochs.assign(epoch, self.log.log_end_offset)
        self._append_stored([batch], epoch)

    def _append_stored(self, batches: list[bytearray], epoch: int) -> None:
        """Append batches that keep their offsets (a leader's copy, an edge's mirror);
        a full disk refuses them, any other storage error fails the partition."""
        self.make_room(self, sum(map(len, batches)))
        try:
            for batch in batches:
                self.log.append(batch, leader_epoch=epoch, replica=True)
        except DiskFull as exc:
            self._refused(exc)
            raise
        except StorageError as exc:
            self._fail(exc)
            raise
        self._disk_ok()
        self._appended()

    def _refused(self, exc: DiskFull) -> None:
        self.disk_full.begin("%s: disk full, appends refused (%s); clients get DISK_FULL "
                             "until space is freed (counted; one line when it ends)",
                             self.name, exc)

    def _disk_ok(self) -> None:
        if self.disk_full.active:
            self.disk_full.end("%s: appends succeed again after disk full", self.name)

    def follower_hw(self, leader_hw: int) -> None:
        self._set_hw(min(leader_hw, self.log.log_end_offset))

    def truncate_to(self, offset: int) -> None:
        if offset < self.log.log_end_offset:
            log.warning("%s: truncating %d uncommitted record(s) from offset %d",
                        self.name, self.log.log_end_offset - offset, offset)
            self.log.truncate_to(offset)
            self.epochs.truncate_from(self.log.log_end_offset)

    async def wait_durable(self) -> None:
        """Wait until everything appended so far is on disk."""
        end = self.log.log_end_offset
        if self.durability != "never" and self.log.flushed_offset < end:
            await self._wait(self._flush_waiters, end)

    def durable_offset(self) -> int:
        return (self.log.log_end_offset if self.durability == "never"
                else self.log.flushed_offset)

    # shared -----------------------------------------------------------------

    def _appended(self) -> None:
        self._leo_event.set()
        self._leo_event = asyncio.Event()
        if self.durability == "never":
            self._flushed(self.log.log_end_offset)
        elif self.durability == "always":
            self._flush_now()
        else:
            self._start_flush()

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

    async def wait_for_append(self, offset: int, timeout: float) -> None:
        """Wait until the log end passes ``offset`` (followers long-poll with this)."""
        if self.log.log_end_offset > offset or self.closed:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._leo_event.wait()

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
                    started = time.perf_counter()
                    await asyncio.to_thread(ticket.run)
                    if self.fsync_observer is not None:
                        self.fsync_observer(time.perf_counter() - started)
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
        while self._flush_waiters and self._flush_waiters[0][0] <= flushed:
            _, fut = self._flush_waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        self._recompute_hw()

    def _set_hw(self, hw: int) -> None:
        if hw > self.log.high_watermark:
            self.log.set_high_watermark(hw)
            self._hw_event.set()
            self._hw_event = asyncio.Event()
        # The HW also moves when the ISR shrinks; a record it then covers is on fewer
        # replicas than acks=all promised (Kafka: NOT_ENOUGH_REPLICAS_AFTER_APPEND).
        # Retriable: the producer's retry is answered as a duplicate once the ISR is back.
        short = None if len(self.isr) >= self.min_isr else NotEnoughReplicas(
            f"{self.name} has {len(self.isr)} in-sync replicas, needs {self.min_isr}; "
            "the record is written but not acknowledged", isr=len(self.isr),
            min_isr=self.min_isr)
        while self._hw_waiters and self._hw_waiters[0][0] <= self.log.high_watermark:
            _, fut = self._hw_waiters.popleft()
            if fut.done():
                continue
            if short is None:
                fut.set_result(None)
            else:
                fut.set_exception(short)

    def _fail(self, exc: BaseException) -> None:
        # A failed fsync leaves the page cache in an unknown state: nothing
        # written since the last good flush may ever be acknowledged.
        if self.failed is None:
            log.error("partition %s failed: %s; it refuses writes until the SPU restarts",
                      self.name, exc)
            self.failed = StorageError(f"partition {self.name} failed: {exc}",
                                       topic=self.topic, partition=self.index)
        for waiters in (self._flush_waiters, self._hw_waiters):
            while waiters:
                _, fut = waiters.popleft()
                if not fut.done():
                    fut.set_exception(self.failed)

    async def close(self) -> None:
        """Flush what is written, checkpoint and close the files."""
        self.closed = True
        self._hw_event.set()
        self._leo_event.set()
        if self._flush_task is not None:
            with contextlib.suppress(Exception):
                await self._flush_task
        if self.failed is None:
            try:
                self._flushed(self.log.flush())
            except (OSError, StorageError) as exc:
                self._fail(exc)
        for waiters in (self._flush_waiters, self._hw_waiters):
            while waiters:
                _, fut = waiters.popleft()
                if not fut.done():
                    fut.set_exception(NotLeader(f"{self.name} closed"))
        with contextlib.suppress(OSError, StorageError):
            self.log.close()
