"""Writing one round of messages to the SPU: idempotent device streams, plain records,
dead letters.

Idempotence
-----------
A device stream is one MQTT topic of one device in one boot epoch; its producer id
is derived from (MQTT topic, boot epoch) and its payload sequence ``s`` is the
batch sequence. The SPU accepts a batch whose base sequence follows the last one,
answers an exact retry of one of its last 5 batches as a duplicate, and otherwise
refuses with ``OutOfOrderSequence`` carrying the sequence it ``expected``. The
writer settles every case from that answer:

* records *behind* ``expected`` are already in the log (the SPU accepts a stream
  only in order): they count as duplicates and are not written again. This covers
  a gateway that crashed after the SPU acknowledged and before the PUBACKs went
  out, however the redelivered messages now fall into batches;
* a first record *ahead* of ``expected`` is a gap (the device or the broker lost
  messages, or one went to the dead-letter topic): the writer moves the stream
  to the next producer epoch, which the SPU lets start at any sequence, and logs
  the gap;
* ``InvalidProducerEpoch`` after a gateway restart says which epoch the stream is
  at (``stored``); the writer adopts it and tries again.

All of this works per reading: the readings of a multi-reading message are parts
of their stream like single-reading messages are, and a redelivered message whose
readings now fall into other batches (a device that re-packed its buffer after a
reconnect) is settled reading by reading the same way. A reading the SPU refuses
for good goes to the dead-letter topic on its own, with its epoch and sequence.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from typing import Any, Final, Protocol

from edge.logstate import LogOnce
from edge.protocol.errors import (
    CorruptMessage,
    HeadwaterError,
    InvalidProducerEpoch,
    InvalidRequest,
    MessageTooLarge,
    OutOfOrderSequence,
)
from gateway.mqtt.decode import Readings, Reason, Rejected, dead_letter_headers
from gateway.mqtt.pipeline import Entry, Part, Round, Sequenced, first_run, seq_behind

log = logging.getLogger(__name__)

MAX_PRODUCER_EPOCH: Final = 2**15 - 1  # i16 in the batch header
# Epochs learned per producer id; forgetting one only costs a retry to learn it again.
EPOCH_CACHE: Final = 65536


class ProduceResultLike(Protocol):
    @property
    def duplicate(self) -> bool: ...


class ProducerLike(Protocol):
    """The part of ``edge.client.Producer`` the bridge uses."""

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = ...,
        headers: dict[str, bytes] | None = ..., partition: int | None = ...,
        timestamp_ms: int | None = ...,
    ) -> Awaitable[Any]: ...

    async def send_batch(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *,
        partition: int | None = ..., partition_key: bytes | None = ...,
        producer_id: int, producer_epoch: int, base_sequence: int,
        timestamps_ms: Sequence[int] | None = ...,
        headers: Sequence[dict[str, bytes] | None] | None = ..., timeout_s: float = ...,
    ) -> ProduceResultLike: ...


class Counts:
    """What a round did, added to the bridge's counters."""

    __slots__ = ("dead_lettered", "duplicates", "gaps", "produced")

    def __init__(self) -> None:
        self.produced = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.gaps = 0


class RoundWriter:
    """Writes rounds; every entry it finishes is marked ``done``. Errors propagate
    with the unfinished entries left as they were, so the caller can retry them."""

    def __init__(
        self, producer: ProducerLike, *, dead_letter_topic: str, max_batch_bytes: int,
        timeout_s: float, max_payload_bytes: int,
    ) -> None:
        self._producer = producer
        self._dead_letter_topic = dead_letter_topic
        self._max_batch_bytes = max_batch_bytes
        self._timeout_s = timeout_s
        self._max_payload_bytes = max_payload_bytes
        self._epochs: OrderedDict[int, int] = OrderedDict()
        self._gaps = LogOnce(log)

    async def write(self, plan: Round, counts: Counts) -> None:
        """Write everything in ``plan`` that is not done yet, concurrently per kind."""
        jobs = [self._stream(topic, items, counts) for (topic, _), items in plan.streams.items()]
        if plan.plain:
            jobs.append(self._plain(plan.plain, counts))
        if plan.dead:
            jobs.append(self._dead(plan.dead, counts))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _stream(self, topic: str, items: list[Sequenced], counts: Counts) -> None:
        pending = [item for item in items if not item.done]
        while pending:
            run = first_run(pending, max_bytes=self._max_batch_bytes)
            try:
                duplicate = await self._send_run(topic, run)
            except InvalidProducerEpoch as exc:
                if not self._adopt_epoch(run[0], exc):
                    await self._reject(run, exc, counts)
                    pending = pending[len(run):]
                continue
            except OutOfOrderSequence as exc:
                pending = await self._settle(pending, exc, counts)
                continue
            except HeadwaterError as exc:
                if not is_payload_error(exc):
                    raise
                await self._reject(run, exc, counts)
                pending = pending[len(run):]
                continue
            _finish(run, counts, duplicate=duplicate)
            pending = pending[len(run):]

    async def _send_run(self, topic: str, run: list[Sequenced]) -> bool:
        """Write one batch; True when the SPU already had it."""
        pid = run[0].sequence.producer_id
        result = await self._producer.send_batch(
            topic, [(item.reading.key, item.reading.value) for item in run],
            partition_key=run[0].reading.key, producer_id=pid, producer_epoch=self._epoch(pid),
            base_sequence=run[0].sequence.seq,
            timestamps_ms=[item.entry.received_ms for item in run], timeout_s=self._timeout_s,
        )
        return result.duplicate

    def _adopt_epoch(self, head: Sequenced, exc: InvalidProducerEpoch) -> bool:
        pid = head.sequence.producer_id
        stored = exc.data.get("stored")
        if not isinstance(stored, int) or stored <= self._epoch(pid):
            return False
        self._set_epoch(pid, stored)
        return True

    async def _settle(
        self, pending: list[Sequenced], exc: OutOfOrderSequence, counts: Counts
    ) -> list[Sequenced]:
        """Resolve a refused batch from the sequence the SPU expected (see the module doc)."""
        expected = exc.data.get("expected")
        head = pending[0]
        if not isinstance(expected, int):
            await self._reject(pending, exc, counts)
            return []
        behind = 0
        while behind < len(pending) and seq_behind(pending[behind].sequence.seq, expected):
            behind += 1
        if behind:
            _finish(pending[:behind], counts, duplicate=True)
            return pending[behind:]
        pid = head.sequence.producer_id
        epoch = self._epoch(pid)
        counts.gaps += 1
        self._gaps.warning(
            head.entry.topic, "sequence gap on %s: expected %d, got %d; going on in producer "
            "epoch %d (logged once per MQTT topic)", head.entry.topic, expected,
            head.sequence.seq, epoch + 1,
        )
        if epoch >= MAX_PRODUCER_EPOCH:
            # Out of epochs for this boot of the device: keep the data, lose exactly-once.
            await self._plain(pending, counts)
            return []
        self._set_epoch(pid, epoch + 1)
        return pending

    def _epoch(self, pid: int) -> int:
        epoch = self._epochs.get(pid, 0)
        self._epochs[pid] = epoch
        self._epochs.move_to_end(pid)
        return epoch

    def _set_epoch(self, pid: int, epoch: int) -> None:
        self._epochs[pid] = epoch
        self._epochs.move_to_end(pid)
        while len(self._epochs) > EPOCH_CACHE:
            self._epochs.popitem(last=False)

    async def _plain(self, parts: Sequence[Part | Sequenced], counts: Counts) -> None:
        todo = [part for part in parts if not part.done]
        futures = [
            await self._producer.send(
                part.reading.topic, part.reading.value, key=part.reading.key,
                timestamp_ms=part.entry.received_ms,
            )
            for part in todo
        ]
        failed: list[tuple[Part | Sequenced, BaseException]] = []
        for part, error in zip(todo, await _errors(futures), strict=True):
            if error is None:
                part.finish()
                counts.produced += 1
            else:
                failed.append((part, error))
        fatal = [(part, exc) for part, exc in failed if is_payload_error(exc)]
        if fatal:
            await self._reject([part for part, _ in fatal], fatal[0][1], counts)
        other = next((exc for _, exc in failed if not is_payload_error(exc)), None)
        if other is not None:
            raise other

    async def _dead(self, items: list[tuple[Entry, Rejected]], counts: Counts) -> None:
        todo = [(entry, rejected) for entry, rejected in items if not entry.done]
        futures = [
            await self._producer.send(
                self._dead_letter_topic, entry.payload[: self._max_payload_bytes],
                key=entry.topic.encode("utf-8", "replace"),
                headers=dead_letter_headers(rejected, entry.topic, len(entry.payload)),
                timestamp_ms=entry.received_ms,
            )
            for entry, rejected in todo
        ]
        first: BaseException | None = None
        for (entry, _), error in zip(todo, await _errors(futures), strict=True):
            if error is None:
                entry.done = True
                counts.dead_lettered += 1
            elif first is None:
                first = error
        if first is not None:
            raise first

    async def _reject(
        self, parts: Sequence[Part | Sequenced], exc: BaseException, counts: Counts
    ) -> None:
        """Send readings the SPU refused for good to the dead-letter topic, each on its own
        (the other readings of its message may well be in the log)."""
        rejected = Rejected(Reason.SPU_REJECTED, f"{type(exc).__name__}: {exc}")
        todo = [part for part in parts if not part.done]
        futures = [
            await self._producer.send(
                self._dead_letter_topic, part.reading.value[: self._max_payload_bytes],
                key=part.entry.topic.encode("utf-8", "replace"),
                headers=_refused_headers(rejected, part), timestamp_ms=part.entry.received_ms,
            )
            for part in todo
        ]
        first: BaseException | None = None
        for part, error in zip(todo, await _errors(futures), strict=True):
            if error is None:
                part.finish()
                counts.dead_lettered += 1
            elif first is None:
                first = error
        if first is not None:
            raise first


async def _errors(futures: list[Awaitable[Any]]) -> list[BaseException | None]:
    """Wait for every future; the error of each, None for those that landed."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    return [result if isinstance(result, BaseException) else None for result in results]


def _refused_headers(rejected: Rejected, part: Part | Sequenced) -> dict[str, bytes]:
    entry = part.entry
    headers = dead_letter_headers(rejected, entry.topic, len(entry.payload))
    sequence = part.reading.sequence
    if isinstance(entry.outcome, Readings) and sequence is not None:
        # The reading's bytes alone do not say which reading of its message it was.
        headers["device-epoch"] = str(sequence.epoch).encode()
        headers["device-seq"] = str(sequence.seq).encode()
    return headers


def _finish(items: Sequence[Sequenced], counts: Counts, *, duplicate: bool) -> None:
    for item in items:
        item.finish()
    if duplicate:
        counts.duplicates += len(items)
    else:
        counts.produced += len(items)


def is_payload_error(exc: BaseException) -> bool:
    """Errors that retrying the same records cannot cure: the records go to the
    dead-letter topic instead (anything else is retried with backoff)."""
    return isinstance(exc, MessageTooLarge | InvalidRequest | CorruptMessage)
