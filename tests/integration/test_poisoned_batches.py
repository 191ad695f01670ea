"""A batch with a valid CRC whose records do not decode is refused by the leader:
it never moves the log end, and the partition stays readable for every consumer."""

from __future__ import annotations

import pytest
from batch_vectors import POISON

from edge.client import Admin, Consumer, Offset, Producer
from edge.net.connection import ClientConnection
from edge.protocol.errors import CorruptMessage
from edge.protocol.messages import ApiKey
from edge.testing import LocalCluster


async def test_poisoned_batches_are_refused_and_the_partition_stays_readable(
        cluster: LocalCluster) -> None:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic("clean", partitions=1)
        await admin.wait_ready("clean")
    async with Producer(cluster.sc_addr) as p:
        await (await p.send("clean", b"before"))
    async with ClientConnection(cluster.spu_addr()) as conn:
        for name, data in POISON.items():
            with pytest.raises(CorruptMessage):
                await conn.request(ApiKey.PRODUCE, data, topic="clean", partition=0, acks=1)
            end, _ = await conn.request(ApiKey.LIST_OFFSETS, topic="clean", partition=0,
                                        at="end")
            assert end["offset"] == 1, name
        status, _ = await conn.request(ApiKey.PARTITION_STATUS)
    assert status["stats"]["corrupt_batches"] == len(POISON)
    async with Producer(cluster.sc_addr) as p:
        await (await p.send("clean", b"after"))
    async with Consumer(cluster.sc_addr, "clean", offset=Offset.beginning()) as c:
        assert [r.value for r in await c.fetch_until_end()] == [b"before", b"after"]
