"""Produce and consume through real SC and SPU processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.client import Acks, Admin, Consumer, Offset, Producer
from edge.net.connection import ClientConnection
from edge.protocol import batch as codec
from edge.protocol.errors import (
    CorruptMessage,
    InvalidProducerEpoch,
    OffsetOutOfRange,
    OutOfOrderSequence,
    TopicExists,
    TopicNotFound,
)
from edge.protocol.framing import encode_frame
from edge.protocol.messages import ApiKey
from edge.testing import LocalCluster


async def make_topic(cluster: LocalCluster, name: str, partitions: int = 1,
                     **config: object) -> None:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic(name, partitions=partitions, config=dict(config))
        await admin.wait_ready(name)


async def test_produce_then_consume_everything(cluster: LocalCluster) -> None:
    await make_topic(cluster, "t")
    async with Producer(cluster.sc_addr, linger_ms=1) as p:
        futs = [await p.send("t", f"v{i}".encode(), key=b"k") for i in range(5000)]
        await p.flush()
        offsets = [(await f).offset for f in futs]
    assert offsets == list(range(5000))
    async with Consumer(cluster.sc_addr, "t", offset=Offset.beginning()) as c:
        records = await c.fetch_until_end()
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(5000)]
    assert [r.offset for r in records] == list(range(5000))
    assert all(r.key == b"k" for r in records)


async def test_keys_route_to_stable_partitions(cluster: LocalCluster) -> None:
    await make_topic(cluster, "keyed", partitions=3)
    async with Producer(cluster.sc_addr) as p:
        futs = [await p.send("keyed", str(i).encode(), key=f"dev-{i % 7}".encode())
                for i in range(700)]
        await p.flush()
        metas = [await f for f in futs]
    by_key: dict[int, set[int]] = {}
    for i, m in enumerate(metas):
        by_key.setdefault(i % 7, set()).add(m.partition)
    assert all(len(parts) == 1 for parts in by_key.values())
    async with Consumer(cluster.sc_addr, "keyed", partition=None,
                        offset=Offset.beginning()) as c:
        records = await c.fetch_until_end()
    assert sorted(int(r.value) for r in records) == list(range(700))


async def test_consumer_follows_new_records(cluster: LocalCluster) -> None:
    await make_topic(cluster, "live")
    got: list[bytes] = []

    async def read() -> None:
        async with Consumer(cluster.sc_addr, "live", offset=Offset.end()) as c:
            async for r in c:
                got.append(r.value)
                if len(got) == 100:
                    return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.3)
    async with Producer(cluster.sc_addr, linger_ms=0) as p:
        for i in range(100):
            await p.send("live", b"%d" % i)
            if i % 10 == 0:
                await asyncio.sleep(0.01)
    await asyncio.wait_for(reader, 10)
    assert got == [b"%d" % i for i in range(100)]


async def test_start_offsets(cluster: LocalCluster) -> None:
    await make_topic(cluster, "offs")
    async with Producer(cluster.sc_addr) as p:
        for i in range(50):
            await p.send("offs", b"%d" % i, timestamp_ms=1_000_000 + i * 10)
    sc = cluster.sc_addr
    cases = {Offset.absolute(20): 20, Offset.from_end(5): 45, Offset.beginning(): 0,
             Offset.timestamp(1_000_000 + 255): None, Offset.end(): 50}
    for start, expected in cases.items():
        async with Consumer(sc, "offs", offset=start) as c:
            positions = await c.resolve()
        if expected is not None:
            assert positions[0] == expected, start
        else:
            # Timestamp lookup has batch granularity: at or before the first match.
            assert positions[0] <= 26
    async with Consumer(sc, "offs", offset=Offset.absolute(10), end_offset=14) as c:
        assert [r.offset for r in await c.fetch_until_end()] == [10, 11, 12, 13, 14]
    with pytest.raises(OffsetOutOfRange):
        async with Consumer(sc, "offs", offset=Offset.absolute(51)) as c:
            await c.fetch_until_end()


async def test_named_consumer_resumes(cluster: LocalCluster) -> None:
    await make_topic(cluster, "resume")
    async with Producer(cluster.sc_addr) as p:
        for i in range(30):
            await p.send("resume", b"%d" % i)
    async with Consumer(cluster.sc_addr, "resume", offset=Offset.beginning(),
                        consumer="app", end_offset=9) as c:
        first = await c.fetch_until_end()
        await c.commit()
    assert len(first) == 10
    async with Consumer(cluster.sc_addr, "resume", offset=Offset.beginning(),
                        consumer="app", stop_at_end=True) as c:
        rest = [r async for r in c]
    assert [r.offset for r in rest] == list(range(10, 30))
    async with Admin(cluster.sc_addr) as admin:
        rows = await admin.list_consumers()
    assert rows == [{"consumer": "app", "topic": "resume", "partition": 0, "offset": 10,
                     "lag": 20, "updated_ms": rows[0]["updated_ms"]}]


async def test_idempotent_batches_dedup_and_fence(cluster: LocalCluster) -> None:
    await make_topic(cluster, "idem")
    async with Producer(cluster.sc_addr) as p:
        kw = {"producer_id": 77, "producer_epoch": 3}
        a = await p.send_batch("idem", [(None, b"a"), (None, b"b")], base_sequence=0, **kw)
        b = await p.send_batch("idem", [(None, b"c")], base_sequence=2, **kw)
        again = await p.send_batch("idem", [(None, b"a"), (None, b"b")], base_sequence=0, **kw)
        assert (a.base_offset, a.last_offset, a.duplicate) == (0, 1, False)
        assert (b.base_offset, b.duplicate) == (2, False)
        assert (again.base_offset, again.last_offset, again.duplicate) == (0, 1, True)
        with pytest.raises(OutOfOrderSequence):
            await p.send_batch("idem", [(None, b"gap")], base_sequence=9, **kw)
        with pytest.raises(InvalidProducerEpoch):
            await p.send_batch("idem", [(None, b"old")], base_sequence=3, producer_id=77,
                               producer_epoch=2)
    async with Consumer(cluster.sc_addr, "idem", offset=Offset.beginning()) as c:
        assert [r.value for r in await c.fetch_until_end()] == [b"a", b"b", b"c"]


async def test_admin_errors_and_listing(cluster: LocalCluster) -> None:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic("x", partitions=2, config={"retention_ms": 3_600_000})
        with pytest.raises(TopicExists):
            await admin.create_topic("x")
        with pytest.raises(TopicNotFound):
            await admin.delete_topic("nope")
        topics = await admin.list_topics()
        assert [(t["name"], t["partitions"]) for t in topics] == [("x", 2)]
        await admin.wait_ready("x")
        info = await admin.describe_topic("x")
        assert [p["leader"] for p in info["partition_status"]] == [1, 1]
        status = await admin.cluster_status()
        assert status["spus_online"] == 1
        await admin.delete_topic("x")
        assert await admin.list_topics() == []


async def test_acks_none_is_fire_and_forget(cluster: LocalCluster) -> None:
    await make_topic(cluster, "nack")
    async with Producer(cluster.sc_addr, acks=Acks.NONE) as p:
        fut = await p.send("nack", b"x")
        await p.flush()
        assert (await fut).offset == -1
    async with Consumer(cluster.sc_addr, "nack", offset=Offset.beginning()) as c:
        for _ in range(50):
            if await c.fetch_until_end():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("record sent with acks=none never arrived")


async def test_garbage_clients_do_not_disturb_others(cluster: LocalCluster) -> None:
    await make_topic(cluster, "calm")
    host, port = cluster.spu_addr().split(":")

    def abuse() -> None:
        payloads = [
            os.urandom(4096),                                  # noise
            struct.pack(">II", 0xFFFFFFF0, 4),                 # absurd frame length
            struct.pack(">II", 100, 200),                      # meta longer than frame
            encode_frame({"api": 1, "v": 0, "id": 1})[:9],     # vanish mid-frame
            encode_frame({"api": 999, "id": 2}),               # unknown api
            encode_frame({"api": 1, "v": 0, "id": 3, "topic": "calm", "partition": 0},
                         b"\x00" * 80),                        # corrupt batch
        ]
        for data in payloads:
            with socket.create_connection((host, int(port))) as s:
                s.sendall(data)
                s.settimeout(0.5)
                with contextlib.suppress(TimeoutError, ConnectionResetError):
                    s.recv(65536)

    async with Producer(cluster.sc_addr, linger_ms=1) as p:
        writer = asyncio.create_task(_write_n(p, "calm", 3000))
        await asyncio.to_thread(abuse)
        await writer
    async with Consumer(cluster.sc_addr, "calm", offset=Offset.beginning()) as c:
        assert [int(r.value) for r in await c.fetch_until_end()] == list(range(3000))
    async with ClientConnection(cluster.spu_addr()) as conn:
        bad = codec.encode_batch([[0, None, b"x"]], first_timestamp=1)
        flipped = bad[:-1] + bytes([bad[-1] ^ 1])
        with pytest.raises(CorruptMessage):
            await conn.request(ApiKey.PRODUCE, flipped, topic="calm", partition=0, acks=1)
        meta, _ = await conn.request(ApiKey.PARTITION_STATUS)
    assert meta["stats"]["corrupt_batches"] >= 2


async def _write_n(p: Producer, topic: str, n: int) -> None:
    for i in range(n):
        await p.send(topic, b"%d" % i)
        if i % 100 == 0:
            await asyncio.sleep(0.001)
    await p.flush()


async def test_many_producers_and_consumers(cluster: LocalCluster) -> None:
    await make_topic(cluster, "busy", partitions=4)
    n_producers, per = 8, 2000

    async def produce(pid: int) -> None:
        async with Producer(cluster.sc_addr, linger_ms=2) as p:
            for i in range(per):
                await p.send("busy", f"{pid}:{i}".encode(), key=f"p{pid}".encode())

    async def consume() -> list[bytes]:
        async with Consumer(cluster.sc_addr, "busy", partition=None,
                            offset=Offset.beginning()) as c:
            out = []
            async for r in c:
                out.append(r.value)
                if len(out) == n_producers * per:
                    return out
        return out

    consumers = [asyncio.create_task(consume()) for _ in range(4)]
    await asyncio.gather(*(produce(i) for i in range(n_producers)))
    results = await asyncio.wait_for(asyncio.gather(*consumers), 60)
    for got in results:
        assert len(got) == n_producers * per
        per_producer: dict[str, list[int]] = {}
        for v in got:
            pid, i = v.decode().split(":")
            per_producer.setdefault(pid, []).append(int(i))
        # One key per producer: one partition, so its order holds.
        assert all(seq == list(range(per)) for seq in per_producer.values())


async def test_sigterm_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "c", durability="never") as cluster:
        await make_topic(cluster, "keep")
        async with Producer(cluster.sc_addr) as p:
            for i in range(1000):
                await p.send("keep", b"%d" % i)
        assert await cluster.stop_spu() == 0
        await cluster.start_spu()
        async with Consumer(cluster.sc_addr, "keep", offset=Offset.beginning()) as c:
            assert len(await c.fetch_until_end()) == 1000


async def test_spu_serves_while_sc_is_down(cluster: LocalCluster) -> None:
    await make_topic(cluster, "nosc")
    await cluster.kill_sc()
    # The SPU and its assignment survive; clients that know the leader keep working.
    async with ClientConnection(cluster.spu_addr()) as conn:
        data = codec.encode_batch([[0, None, b"while-sc-down"]], first_timestamp=1)
        meta, _ = await conn.request(ApiKey.PRODUCE, data, topic="nosc", partition=0, acks=1)
        assert meta["base"] == 0
    await cluster.kill_spu()
    await cluster.start_spu()  # restarts from its saved assignment with no SC at all
    async with ClientConnection(cluster.spu_addr()) as conn:
        meta, blob = await conn.request(ApiKey.FETCH, topic="nosc", partition=0, offset=0)
    assert [r.value for r in codec.decode_records(blob)] == [b"while-sc-down"]
    await cluster.start_sc()
    await cluster.wait_spu_online(1)


def headwater(cluster: LocalCluster, *args: str, input: bytes | None = None
              ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "edge.cli.main", "--sc", cluster.sc_addr,
                           *args], input=input, capture_output=True, timeout=60, check=False)


async def test_cli_round_trip(cluster: LocalCluster, tmp_path: Path) -> None:
    def cli() -> None:
        r = headwater(cluster, "topic", "create", "cli", "-p", "2", "--retention-time", "2d")
        assert r.returncode == 0, r.stderr
        r = headwater(cluster, "topic", "create", "cli")
        assert r.returncode == 1
        assert b"already exists" in r.stderr
        lines = b"".join(b"k%d=v%d\n" % (i % 3, i) for i in range(200))
        r = headwater(cluster, "produce", "cli", "--key-separator", "=", input=lines)
        assert r.returncode == 0, r.stderr
        src = tmp_path / "in.txt"
        src.write_bytes(b"".join(b"file-%d\n" % i for i in range(100)))
        r = headwater(cluster, "produce", "cli", "-f", str(src), "-p", "0")
        assert r.returncode == 0, r.stderr
        r = headwater(cluster, "consume", "cli", "-B", "-d", "--output", "json")
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        values = sorted(row["value"] for row in rows)
        assert values == sorted([f"v{i}" for i in range(200)] +
                                [f"file-{i}" for i in range(100)])
        r = headwater(cluster, "consume", "cli", "-p", "0", "-T", "3", "-d", "-k",
                      "--format", "{offset}:{key}:{value}")
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.splitlines()) == 3
        r = headwater(cluster, "partition", "list")
        assert r.returncode == 0
        assert b"cli" in r.stdout
        r = headwater(cluster, "topic", "describe", "cli")
        assert b"2d" in r.stdout
        r = headwater(cluster, "consume", "missing", "-d")
        assert r.returncode == 1
        assert b"does not exist" in r.stderr

    await asyncio.to_thread(cli)


def test_cli_unreachable_cluster_says_what_to_do() -> None:
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "edge.cli.main", "--sc", "127.0.0.1:1",
                        "topic", "list"], capture_output=True, timeout=30, check=False)
    assert r.returncode == 1
    assert b"cannot connect to 127.0.0.1:1" in r.stderr
    assert b"--sc" in r.stderr
    assert r.stderr.count(b"\n") == 1  # one line, no traceback
    assert time.monotonic() - started < 20


async def test_cli_negative_offset_counts_from_the_end(cluster: LocalCluster) -> None:
    def cli() -> None:
        assert headwater(cluster, "topic", "create", "neg").returncode == 0
        lines = b"".join(b"%d\n" % i for i in range(20))
        assert headwater(cluster, "produce", "neg", input=lines).returncode == 0
        r = headwater(cluster, "consume", "neg", "-o", "-5", "-d")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [b"15", b"16", b"17", b"18", b"19"]
        r = headwater(cluster, "consume", "neg", "-o", "17", "-d")
        assert r.stdout.split() == [b"17", b"18", b"19"]

    await asyncio.to_thread(cli)


async def test_cli_message_key_header_count_and_create_options(cluster: LocalCluster) -> None:
    def cli() -> None:
        assert headwater(cluster, "topic", "create", "opts").returncode == 0
        again = headwater(cluster, "topic", "create", "opts", "--if-not-exists")
        assert again.returncode == 0, again.stderr
        assert b"exists already" in again.stdout
        wide = headwater(cluster, "topic", "create", "wide", "-r", "3")
        assert wide.returncode == 1
        assert b"needs 3 online SPUs, the cluster has 1" in wide.stderr
        assert headwater(cluster, "topic", "create", "wide", "-r", "3", "--wait").returncode == 0
        r = headwater(cluster, "produce", "opts", "-m", "one", "-m", "two", "--key", "k1",
                      "--header", "src=cli", "-H", "v=2")
        assert r.returncode == 0, r.stderr
        assert headwater(cluster, "produce", "opts", "-m", "x", "--header", "bad").returncode == 2
        r = headwater(cluster, "consume", "opts", "-B", "-d", "-O", "json")
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        assert [(x["key"], x["value"], x["headers"]) for x in rows] == [
            ("k1", "one", {"src": "cli", "v": "2"}), ("k1", "two", {"src": "cli", "v": "2"})]
        lines = b"".join(b"%d\n" % i for i in range(50))
        assert headwater(cluster, "produce", "opts", input=lines).returncode == 0
        r = headwater(cluster, "consume", "opts", "-B", "--count", "3")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [b"one", b"two", b"0"]
        refused = headwater(cluster, "consume", "opts", "-n", "3", "--consumer", "app")
        assert refused.returncode == 2

    await asyncio.to_thread(cli)
