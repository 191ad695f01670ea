"""What the client promises an application, checked from the application's side:
what ``commit()`` stores, which partitions a ``Consumer`` reads, what ``send`` takes."""

from __future__ import annotations

import pytest

from edge.client import Admin, Consumer, Offset, Producer
from edge.testing import LocalCluster


async def make_topic(cluster: LocalCluster, name: str, partitions: int = 1) -> None:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic(name, partitions=partitions)
        await admin.wait_ready(name)


async def produce(cluster: LocalCluster, topic: str, count: int) -> None:
    # One flush: the records travel as a batch, so one fetch returns all of them.
    async with Producer(cluster.sc_addr, linger_ms=50) as p:
        for i in range(count):
            await p.send(topic, b"%d" % i, key=b"k%d" % i)
        await p.flush()


async def test_commit_stores_the_position_after_the_last_record_processed(
        cluster: LocalCluster) -> None:
    await make_topic(cluster, "at-least-once")
    await produce(cluster, "at-least-once", 30)
    processed: list[int] = []
    async with Consumer(cluster.sc_addr, "at-least-once", offset=Offset.beginning(),
                        consumer="app") as c:
        async for record in c:
            processed.append(record.offset)
            if record.offset == 9:
                break
        await c.commit()
    assert processed == list(range(10))
    async with Consumer(cluster.sc_addr, "at-least-once", offset=Offset.beginning(),
                        consumer="app", stop_at_end=True) as c:
        rest = [r.offset async for r in c]
    assert rest == list(range(10, 30))


async def test_commit_before_any_record_keeps_the_start(cluster: LocalCluster) -> None:
    await make_topic(cluster, "untouched")
    await produce(cluster, "untouched", 5)
    async with Consumer(cluster.sc_addr, "untouched", offset=Offset.beginning(),
                        consumer="idle") as c:
        await c.resolve()
        await c.commit()
    async with Consumer(cluster.sc_addr, "untouched", offset=Offset.end(),
                        consumer="idle", stop_at_end=True) as c:
        assert [r.offset async for r in c] == [0, 1, 2, 3, 4]


async def test_consumer_reads_every_partition_by_default(cluster: LocalCluster) -> None:
    await make_topic(cluster, "spread", partitions=3)
    await produce(cluster, "spread", 300)
    async with Consumer(cluster.sc_addr, "spread", offset=Offset.beginning()) as c:
        records = await c.fetch_until_end()
    assert sorted(int(r.value) for r in records) == list(range(300))


async def test_commit_per_partition_covers_only_what_was_handed_out(
        cluster: LocalCluster) -> None:
    await make_topic(cluster, "multi", partitions=2)
    await produce(cluster, "multi", 100)
    async with Consumer(cluster.sc_addr, "multi", offset=Offset.beginning(),
                        consumer="g") as c:
        async for chunk in c.batches():
            handed = chunk
            break
        await c.commit()
    async with Consumer(cluster.sc_addr, "multi", offset=Offset.beginning(),
                        consumer="g", stop_at_end=True) as c:
        rest = [chunk async for chunk in c.batches()]
    again = {(ch.partition, r.offset) for ch in rest for r in ch.records}
    first = {(handed.partition, r.offset) for r in handed.records}
    assert not again & first
    assert len(again) + len(first) == 100
    other = 1 - handed.partition
    assert min(o for p, o in again if p == other) == 0


@pytest.mark.parametrize(("value", "key", "headers", "what"), [
    ("a str value", None, None, "value"),
    (123, None, None, "value"),
    (b"ok", "str key", None, "key"),
    (b"ok", None, {"h": "text"}, "header 'h'"),
])
async def test_send_refuses_what_is_not_bytes(cluster: LocalCluster, value: object,
                                              key: object, headers: object,
                                              what: str) -> None:
    await make_topic(cluster, "typed")
    async with Producer(cluster.sc_addr) as p:
        with pytest.raises(TypeError, match=what):
            await p.send("typed", value, key=key, headers=headers)  # type: ignore[arg-type]
        await (await p.send("typed", bytearray(b"fine"), key=memoryview(b"k")))
    async with Consumer(cluster.sc_addr, "typed", offset=Offset.beginning()) as c:
        assert [r.value for r in await c.fetch_until_end()] == [b"fine"]
