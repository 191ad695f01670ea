"""An in-memory partition log with the SPU's real idempotence rules, for writer tests.

It decides every idempotent batch with ``edge.storage.producer_state`` (the
table the SPU itself uses), so the writer's handling of duplicates, gaps and
epochs is tested against the real rules; only sockets and disks are left out.
Failures can be scripted per call to test retries.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.client import ProduceResult
from edge.protocol.errors import HeadwaterError
from edge.storage.producer_state import ProducerStateTable


@dataclass
class Stored:
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] | None


@dataclass
class MemoryLog:
    """Topics → partitions → records, with one producer-state table per partition."""

    partitions: int = 1
    logs: dict[tuple[str, int], list[Stored]] = field(default_factory=dict)
    states: dict[tuple[str, int], ProducerStateTable] = field(default_factory=dict)
    fail_next: list[BaseException] = field(default_factory=list)
    # Call number (1 = the first send or send_batch) -> the error it raises.
    fail_calls: dict[int, BaseException] = field(default_factory=dict)
    calls: int = 0

    def records(self, topic: str) -> list[Stored]:
        out: list[Stored] = []
        for (name, _), records in sorted(self.logs.items()):
            if name == topic:
                out.extend(records)
        return out

    def _partition(self, key: bytes | None) -> int:
        return zlib.crc32(key) % self.partitions if key is not None else 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls in self.fail_calls:
            raise self.fail_calls.pop(self.calls)
        if self.fail_next:
            raise self.fail_next.pop(0)

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None,
                   headers: dict[str, bytes] | None = None, partition: int | None = None,
                   timestamp_ms: int | None = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._maybe_fail()
        except HeadwaterError as exc:
            future.set_exception(exc)
            return future
        log = self.logs.setdefault((topic, self._partition(key)), [])
        log.append(Stored(len(log), key, value, headers))
        future.set_result(len(log) - 1)
        return future

    async def send_batch(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *,
        partition: int | None = None, partition_key: bytes | None = None,
        producer_id: int, producer_epoch: int, base_sequence: int,
        timestamps_ms: Sequence[int] | None = None,
        headers: Sequence[dict[str, bytes] | None] | None = None, timeout_s: float = 30.0,
    ) -> ProduceResult:
        await asyncio.sleep(0)
        self._maybe_fail()
        where = (topic, self._partition(partition_key))
        state = self.states.setdefault(where, ProducerStateTable())
        meta = state.check(producer_id, producer_epoch, base_sequence, len(records))
        if meta is not None:
            return ProduceResult(topic, where[1], meta.base_offset, meta.last_offset, True)
        log = self.logs.setdefault(where, [])
        base = len(log)
        for key, value in records:
            log.append(Stored(len(log), key, value, None))
        state.record(producer_id, producer_epoch, base_sequence, len(records),
                     base_offset=base, last_offset=len(log) - 1)
        return ProduceResult(topic, where[1], base, len(log) - 1, False)
