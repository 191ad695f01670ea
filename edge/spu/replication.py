"""Replication between SPUs: followers pull from their leader's private port.

Pull, as in Kafka and Fluvio, rather than push: the follower knows exactly
what it has (its log end) and asks for the next bytes, so a follower that was
away, restarted or truncated needs no special path; the fetch offset doubles
as the acknowledgement the leader uses to advance the high watermark, and a
slow follower throttles only itself.

Before fetching, a follower asks the leader where its own latest leader epoch
ended (``OFFSET_FOR_EPOCH``) and truncates there: a tail written by a deposed
leader and never committed is dropped instead of diverging (KIP-101).

Every fetch carries the follower's view of the leader epoch. Only the SC issues
epochs, so a leader never steps down on a peer's word: a higher epoch from a
follower is refused and the leader waits for the SC's metadata, which deposes it
if the epoch is real (a forged epoch from one peer must not take a partition
offline). A follower that is told its epoch is old waits for the SC's new
assignment. Fetches from an SPU outside the partition's replica set are refused.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from edge.net.auth import require_spu
from edge.net.backoff import Backoff
from edge.net.connection import Authenticator, ClientConnection
from edge.net.server import Connection, Response
from edge.protocol import batch as codec
from edge.protocol import messages, peer_api
from edge.protocol.errors import (
    AuthenticationFailed,
    CorruptBatch,
    HeadwaterError,
    InvalidRequest,
    NotLeader,
    OffsetOutOfRange,
    PartitionNotFound,
    StaleEpoch,
)
from edge.protocol.messages import ApiKey
from edge.protocol.schema import decode_request, decode_response
from edge.spu.partition import Partition
from edge.storage.offsets import ConsumerOffsets
from edge.tasks import cancel

log = logging.getLogger(__name__)

FETCH_MAX_BYTES = 4 * 1024 * 1024
# Long poll: an idle follower's fetch waits this long for new records, so new
# records reach followers at once without a busy loop.
FETCH_WAIT_S = 0.5
BACKOFF_S = (0.05, 2.0)


class LeaderSide:
    """Serves followers' fetches on the private port."""

    def __init__(self, lookup: Callable[[str, int], Partition | None], spu_id: int) -> None:
        self._lookup = lookup
        self.spu_id = spu_id
        self.offsets: ConsumerOffsets | None = None

    def _partition(self, topic: str, index: int) -> Partition:
        p = self._lookup(topic, index)
        if p is None:
            raise PartitionNotFound(f"{topic}/{index} is not hosted by SPU {self.spu_id}")
        return p

    def _check_epoch(self, conn: Connection, p: Partition, epoch: int) -> None:
        if not p.is_leader:
            raise NotLeader(f"SPU {self.spu_id} does not lead {p.name}")
        if epoch != p.leader_epoch:
            if epoch > p.leader_epoch:
                conn.server.stats.log_once(conn.peer, "epoch from a peer",
                                           f"{p.name}: a follower claims epoch {epoch} > "
                                           f"{p.leader_epoch}; waiting for the SC")
            raise StaleEpoch(f"{p.name}: epoch {epoch} is not the leader's {p.leader_epoch}",
                             epoch=p.leader_epoch)

    def _check_replica(self, conn: Connection, p: Partition, replica: int) -> None:
        if replica != self.spu_id and replica in p.replicas:
            return
        conn.server.stats.log_once(conn.peer, "fetch from a non-replica",
                                   f"{p.name}: SPU {replica} is not in {p.replicas}")
        raise InvalidRequest(f"replica: SPU {replica} is not a replica of {p.name}",
                             field="replica", replica=replica, replicas=list(p.replicas))

    def offset_for_epoch(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                         ) -> Response:
        req = decode_request(peer_api.OFFSET_FOR_EPOCH, meta)
        p = self._partition(req.topic, req.partition)
        self._check_epoch(conn, p, req.leader_epoch)
        epoch, end = p.epochs.end_offset_for(req.epoch, p.log.log_end_offset)
        return messages.ok(meta["id"], epoch=epoch, end=end), b""

    def replica_fetch(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                      ) -> Awaitable[Response]:
        req = decode_request(peer_api.REPLICA_FETCH, meta)
        require_spu(conn, req.replica, "replica")
        p = self._partition(req.topic, req.partition)
        self._check_replica(conn, p, req.replica)
        self._check_epoch(conn, p, req.epoch)
        offset = req.offset
        if not p.log.log_start_offset <= offset <= p.log.log_end_offset:
            raise OffsetOutOfRange(
                f"follower offset {offset} outside {p.log.log_start_offset}.."
                f"{p.log.log_end_offset}", log_start_offset=p.log.log_start_offset,
                log_end_offset=p.log.log_end_offset)
        p.follower_fetched(req.replica, offset, req.durable)
        return self._answer(conn, meta["id"], p, offset, wait=req.max_wait_ms / 1000,
                            known=(req.cv_epoch, req.cv))

    def _consumers(self, p: Partition, known: tuple[int, int]) -> dict[str, Any]:
        """Committed consumer positions of ``p``, when the follower's copy is older."""
        current = (p.leader_epoch, p.consumer_version)
        if self.offsets is None or known == current:
            return {}
        rows = [[name, offset] for name, topic, index, offset, _ in self.offsets.list()
                if topic == p.topic and index == p.index]
        return {"consumers": rows, "cv_epoch": current[0], "cv": current[1]}

    async def _answer(self, conn: Connection, cid: int, p: Partition, offset: int, *,
                      wait: float, known: tuple[int, int]) -> Response:
        if p.log.log_end_offset <= offset:
            await p.wait_for_append(offset, wait)
        reply = {"hw": p.high_watermark, "leo": p.log.log_end_offset,
                 "start": p.log.log_start_offset, "epoch": p.leader_epoch,
                 **self._consumers(p, known)}
        if p.cloud_acked is not None:
            reply["cloud"] = p.cloud_acked
        if p.log.log_end_offset <= offset or p.closed:
            return messages.ok(cid, **reply), b""
        sl = p.log.read(offset, FETCH_MAX_BYTES)
        if sl is None:
            return messages.ok(cid, **reply), b""
        if conn.tls:
            return messages.ok(cid, **reply), p.log.read_bytes(offset, FETCH_MAX_BYTES)
        await conn.send_file(messages.ok(cid, **reply), sl.fd, sl.position, sl.length)
        return None


class Follower:
    """Keeps one follower replica in step with its leader."""

    def __init__(self, p: Partition, *, leader_addr: str, ssl_context: ssl.SSLContext | None,
                 authenticate: Authenticator, offsets: ConsumerOffsets | None = None) -> None:
        self.p = p
        self.leader_addr = leader_addr
        self._ssl = ssl_context
        self._authenticate = authenticate
        self._offsets = offsets
        self.epoch = p.leader_epoch
        # Version of the leader's consumer positions this replica holds a copy of.
        self._consumers_seen = (-1, -1)
        self._refused_corrupt = False
        self._refused_auth = False
        self._refused_hole = False
        # Every failed round waits (jittered, growing); a fetch answered resets it.
        self._backoff = Backoff(*BACKOFF_S)
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"follow-{p.name}")

    async def stop(self) -> None:
        await cancel(self._task)

    async def _run(self) -> None:
        backoff = self._backoff
        while not self.p.closed:
            conn = ClientConnection(self.leader_addr, ssl_context=self._ssl,
                                    authenticate=self._authenticate)
            try:
                await conn.connect()
                await self._truncate_by_epoch(conn)
                await self._fetch_loop(conn)
            except StaleEpoch:
                # Our epoch is not the leader's: the SC's next assignment replaces this
                # follower (a new epoch) or brings the leader to ours. Each try is a new
                # connection and handshake, so the wait grows: a disagreement that lasts
                # (an SC behind the SPUs' epochs) must not keep both SPUs busy.
                await backoff.sleep()
            except CorruptBatch as exc:
                # Never appended: this replica keeps only batches a consumer can read.
                if not self._refused_corrupt:
                    self._refused_corrupt = True
                    log.warning("%s: refusing a batch from leader %s: %s", self.p.name,
                                self.leader_addr, exc)
                await backoff.sleep()
            except AuthenticationFailed as exc:
                if not self._refused_auth:
                    self._refused_auth = True
                    log.warning("%s: leader %s: %s", self.p.name, self.leader_addr, exc)
                await backoff.sleep()
            except HeadwaterError as exc:
                log.debug("%s: fetch from %s failed: %s", self.p.name, self.leader_addr, exc)
                await backoff.sleep()
            finally:
                await conn.close()

    async def _truncate_by_epoch(self, conn: ClientConnection) -> None:
        mine = self.p.epochs.latest_epoch
        if mine < 0 or self.p.log.log_end_offset == self.p.log.log_start_offset:
            return
        meta, _ = await conn.request(ApiKey.OFFSET_FOR_EPOCH, topic=self.p.topic,
                                     partition=self.p.index, epoch=mine,
                                     leader_epoch=self.epoch)
        epoch, end = decode_response(peer_api.EPOCH_END, meta)
        if epoch < 0:
            end = min(end, self.p.high_watermark)
        self.p.truncate_to(max(min(end, self.p.log.log_end_offset), 0))

    async def _fetch_loop(self, conn: ClientConnection) -> None:
        p = self.p
        while not p.closed:
            try:
                meta, blob = await conn.request(
                    ApiKey.REPLICA_FETCH, topic=p.topic, partition=p.index, replica=p.spu_id,
                    epoch=self.epoch, offset=p.log.log_end_offset,
                    durable=p.durable_offset(), max_wait_ms=int(FETCH_WAIT_S * 1000),
                    cv_epoch=self._consumers_seen[0], cv=self._consumers_seen[1],
                    timeout=FETCH_WAIT_S + 10)
            except OffsetOutOfRange as exc:
                start = exc.data.get("log_start_offset")
                end = exc.data.get("log_end_offset")
                if isinstance(end, int) and p.log.log_end_offset > end:
                    p.truncate_to(end)
                else:
                    # The leader's retention removed records this replica still lacks.
                    log.error("%s: leader kept %s..%s, this replica ends at %d; it cannot "  # noqa: TRY400
                              "catch up by fetching (delete its directory to resync)",
                              p.name, start, end, p.log.log_end_offset)
                    await asyncio.sleep(5)
                continue
            answer = decode_response(peer_api.REPLICA_FETCHED, meta)
            if answer.cloud is not None:
                p.cloud_acked = answer.cloud
            appended = False
            misplaced: int | None = None
            for header, pos in _validated(blob):
                if header.base_offset != p.log.log_end_offset:
                    misplaced = None if appended else header.base_offset
                    break
                p.append_replica(bytearray(blob[pos:pos + header.size]), header.leader_epoch)
                appended = True
            p.follower_hw(answer.hw)
            self._copy_consumers(answer)
            if appended:
                # The leader's HW (and every acks=all answer) waits for this replica's
                # *durable* offset, reported in the next fetch; sent before the fsync,
                # that fetch would report the old one and then long-poll.
                await p.wait_durable()
            if misplaced is None:
                self._backoff.reset()
            else:
                await self._misplaced(misplaced)

    async def _misplaced(self, base: int) -> None:
        """The leader answered with a batch from ``base``, not from this replica's log
        end. The leader answers such a fetch at once, so asking again as is would keep
        both SPUs spinning on it."""
        p = self.p
        end = p.log.log_end_offset
        if base < end:
            # Our log ends inside one of the leader's batches: it holds batches the
            # leader does not (batches are copied whole), which diverged from the
            # leader's log; the leader's log is the one that stands.
            log.warning("%s: this replica ends at %d, inside leader %s's batch from %d: "
                        "its tail diverged from the leader's log", p.name, end,
                        self.leader_addr, base)
            p.truncate_to(base)
            return
        if not self._refused_hole:
            self._refused_hole = True
            log.warning("%s: leader %s has no batch at offset %d (its next starts at %d); "
                        "retrying with backoff", p.name, self.leader_addr, end, base)
        await self._backoff.sleep()


    def _copy_consumers(self, answer: peer_api.ReplicaFetchResponse) -> None:
        """Keep the leader's committed consumer positions, so a consumer resumes at
        the same place after a failover."""
        if self._offsets is None or answer.consumers is None:
            return
        for consumer, offset in answer.consumers:
            self._offsets.commit(consumer, self.p.topic, self.p.index, offset)
        self._consumers_seen = (
            -1 if answer.cv_epoch is None else answer.cv_epoch,
            -1 if answer.cv is None else answer.cv)


def _validated(blob: bytes) -> Iterator[tuple[codec.BatchHeader, int]]:
    """``(header, position)`` of each batch in a fetch answer, fully validated."""
    pos = 0
    while pos < len(blob):
        header = codec.validate(blob, pos)
        yield header, pos
        pos += header.size


class ReplicaManager:
    """Starts and stops followers as assignments change; proposes ISR changes."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None, authenticate: Authenticator,
                 propose_isr: Callable[[Partition, list[int]], Awaitable[bool]],
                 lag_s: float) -> None:
        self._ssl = ssl_context
        self._authenticate = authenticate
        self._propose = propose_isr
        self.offsets: ConsumerOffsets | None = None
        self.lag_s = lag_s
        self.followers: dict[tuple[str, int], Follower] = {}

    async def sync(self, partitions: dict[tuple[str, int], Partition],
                   addresses: dict[int, str]) -> None:
        """Follow the leader of every partition we do not lead."""
        for key in list(self.followers):
            f = self.followers[key]
            p = partitions.get(key)
            want = (p is not None and not p.is_leader and p.leader_id is not None
                    and addresses.get(p.leader_id) == f.leader_addr
                    and f.epoch == p.leader_epoch)
            if not want:
                await self.followers.pop(key).stop()
        for key, p in partitions.items():
            if p.is_leader or p.leader_id is None or key in self.followers:
                continue
            addr = addresses.get(p.leader_id)
            if addr is not None:
                self.followers[key] = Follower(p, leader_addr=addr, ssl_context=self._ssl,
                                               authenticate=self._authenticate,
                                               offsets=self.offsets)

    async def check_isr(self, partitions: dict[tuple[str, int], Partition]) -> None:
        for p in list(partitions.values()):
            proposal = p.isr_proposal(self.lag_s)
            if proposal is None:
                continue
            with p.proposing_isr():
                if await self._propose(p, proposal):
                    p.apply_isr(proposal)

    async def close(self) -> None:
        for f in list(self.followers.values()):
            await f.stop()
        self.followers.clear()
