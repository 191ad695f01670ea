"""What a careless or hostile client sends is refused where it enters: batches whose
records do not decode, topic names and settings no partition could hold."""

from __future__ import annotations

import pytest
from batch_vectors import POISON

from edge.client import Admin, Consumer, Offset, Producer
from edge.net.connection import ClientConnection
from edge.protocol.errors import CorruptMessage, InvalidConfig
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


@pytest.mark.parametrize(("name", "config", "replication"), [
    ("a\n", {}, 1),
    ("../etc", {}, 1),
    ("big", {"retention_ms": 2**65}, 1),
    ("big", {"segment_ms": 10**5000}, 1),
    ("big", {"retention_bytes": 2**64}, 1),
    ("big", {}, 2**64),
])
async def test_the_sc_refuses_names_and_settings_no_partition_could_hold(
        cluster: LocalCluster, name: str, config: dict[str, int], replication: int) -> None:
    async with Admin(cluster.sc_addr) as admin:
        with pytest.raises(InvalidConfig):
            await admin.create_topic(name, partitions=1, replication=replication,
                                     config=config)
        assert [t for t in await admin.list_topics() if t["name"] == name] == []
