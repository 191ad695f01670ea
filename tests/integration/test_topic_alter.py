"""ALTER_TOPIC through real SC and SPU processes: the SPUs apply new settings to the
live logs, refusals change nothing, and the change survives restarts of both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from edge.client import Admin, Consumer, Offset
from edge.net.connection import ClientConnection
from edge.protocol import batch as codec
from edge.protocol.errors import InvalidConfig, NotEnoughReplicas, TopicNotFound
from edge.protocol.messages import ApiKey
from edge.spu.replicas import ASSIGNMENT_FILE
from edge.testing import LocalCluster

# One record of this size is one batch of a little under 300 bytes: three to a
# 1 KiB segment.
VALUE = 200
SEGMENT = 1024
# Retention runs this often on the test SPUs (60 s by default).
RETENTION_PASS_S = 0.2


@pytest.fixture
async def fast(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(tmp_path / "cluster",
                            spu_settings={"retention_check_interval_s": RETENTION_PASS_S}
                            ) as c:
        yield c


async def make_topic(cluster: LocalCluster, name: str, **config: Any) -> None:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic(name, config=config)
        await admin.wait_ready(name)


async def produce(cluster: LocalCluster, topic: str, count: int, *, first: int = 0) -> None:
    """``count`` one-record batches, straight to the SPU (works while the SC is down)."""
    async with ClientConnection(cluster.spu_addr()) as conn:
        for i in range(first, first + count):
            data = codec.encode_batch([[0, None, b"%06d" % i + b"x" * (VALUE - 6)]],
                                      first_timestamp=int(time.time() * 1000))
            await conn.request(ApiKey.PRODUCE, data, topic=topic, partition=0, acks=1)


async def consumed(cluster: LocalCluster, topic: str) -> list[int]:
    """Offsets a consumer reads from the beginning to the end."""
    async with Consumer(cluster.sc_addr, topic, offset=Offset.beginning()) as c:
        return [r.offset for r in await c.fetch_until_end()]


def segments(cluster: LocalCluster, topic: str) -> list[int]:
    """Sizes of the partition's segment files, oldest first."""
    directory = cluster.data_dir / "spu-1" / "partitions" / f"{topic}-0"
    return [p.stat().st_size for p in sorted(directory.glob("*.log"))]


async def partition_status(cluster: LocalCluster, topic: str) -> dict[str, Any]:
    async with ClientConnection(cluster.spu_addr()) as conn:
        meta, _ = await conn.request(ApiKey.PARTITION_STATUS)
    row: dict[str, Any] = next(r for r in meta["partitions"] if r["topic"] == topic)
    return row


async def spu_applied(cluster: LocalCluster, topic: str, config: dict[str, Any],
                      spu: int = 1) -> None:
    """Wait until the SPU saved an assignment with ``config`` for ``topic`` (it applies
    an assignment to its partitions before it saves it)."""
    path = cluster.data_dir / f"spu-{spu}" / ASSIGNMENT_FILE

    async def saved() -> bool:
        replicas = cbor2.loads(path.read_bytes())["replicas"]
        return any(r["topic"] == topic and r["config"] == config for r in replicas)

    await wait_for(saved)


async def wait_for(check: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_tighter_retention_bytes_removes_old_segments(fast: LocalCluster) -> None:
    await make_topic(fast, "ret", segment_bytes=SEGMENT)
    await produce(fast, "ret", 60)
    assert len(segments(fast, "ret")) >= 15
    await asyncio.sleep(5 * RETENTION_PASS_S)
    assert await consumed(fast, "ret") == list(range(60))  # the default keeps it all
    async with Admin(fast.sc_addr) as admin:
        config = await admin.alter_topic("ret", set={"retention_bytes": 4 * SEGMENT})
    assert config == {"segment_bytes": SEGMENT, "retention_bytes": 4 * SEGMENT}

    async def trimmed() -> bool:
        return (await partition_status(fast, "ret"))["start"] > 0

    await wait_for(trimmed)
    status = await partition_status(fast, "ret")
    assert status["size"] <= 4 * SEGMENT
    assert sum(segments(fast, "ret")) <= 4 * SEGMENT
    offsets = await consumed(fast, "ret")
    assert offsets == list(range(status["start"], 60))
    assert offsets[0] >= 30  # 4 KiB of 60 records of about 300 bytes
    async with Consumer(fast.sc_addr, "ret", offset=Offset.beginning()) as c:
        assert (await c.resolve())[0] == status["start"]


async def test_smaller_segment_bytes_rolls_new_segments(cluster: LocalCluster) -> None:
    await make_topic(cluster, "roll")
    await produce(cluster, "roll", 20)
    assert len(segments(cluster, "roll")) == 1
    written = segments(cluster, "roll")[0]
    async with Admin(cluster.sc_addr) as admin:
        await admin.alter_topic("roll", set={"segment_bytes": SEGMENT})
        info = await admin.describe_topic("roll")
    assert info["config"] == {"segment_bytes": SEGMENT}
    await spu_applied(cluster, "roll", {"segment_bytes": SEGMENT})
    await produce(cluster, "roll", 30, first=20)
    sizes = segments(cluster, "roll")
    assert sizes[0] == written > SEGMENT
    assert len(sizes) >= 10
    assert all(size <= SEGMENT for size in sizes[1:])
    assert await consumed(cluster, "roll") == list(range(50))


@pytest.mark.parametrize(("changes", "reset", "words"), [
    ({"retention_bytes": 0}, [], "retention_bytes must be >= 1"),
    ({"segment_bytes": "big"}, [], "segment_bytes must be an integer"),
    ({"retention_ms": 2**64}, [], "'set'"),
    ({"compression": "lz4"}, [], "compression must be one of"),
    ({"min_insync_replicas": 2}, [], "exceeds replication 1"),
    ({"partitions": 3}, [], "partitions cannot change after creation"),
    ({"replication": 2}, [], "replication cannot change after creation"),
    ({"upstream": True}, [], "upstream cannot change after creation"),
    ({}, ["partitions"], "partitions cannot change after creation"),
    ({"colour": "red"}, [], "unknown topic setting(s): colour"),
    ({"segment_ms": 60_000}, ["segment_ms"], "both set and reset"),
])
async def test_refused_changes_are_invalid_config_and_change_nothing(
        cluster: LocalCluster, changes: dict[str, Any], reset: list[str], words: str) -> None:
    await make_topic(cluster, "fixed", retention_ms=3_600_000)
    async with Admin(cluster.sc_addr) as admin:
        version = (await admin.cluster_status())["version"]
        with pytest.raises(InvalidConfig) as refused:
            await admin.alter_topic("fixed", set=changes, unset=reset)
        assert words in str(refused.value)
        info = await admin.describe_topic("fixed")
        assert info["config"] == {"retention_ms": 3_600_000}
        assert (info["partitions"], info["replication"]) == (1, 1)
        assert (await admin.cluster_status())["version"] == version
        with pytest.raises(TopicNotFound):
            await admin.alter_topic("missing", set={"retention_ms": 3_600_000})


async def test_dry_run_answers_and_changes_nothing(cluster: LocalCluster) -> None:
    await make_topic(cluster, "dry", retention_ms=3_600_000)
    async with Admin(cluster.sc_addr) as admin:
        would = await admin.alter_topic("dry", set={"retention_bytes": 1 << 30},
                                        unset=["retention_ms"], validate_only=True)
        assert would == {"retention_bytes": 1 << 30}
        assert (await admin.describe_topic("dry"))["config"] == {"retention_ms": 3_600_000}


async def test_the_change_survives_sc_and_spu_restarts(cluster: LocalCluster) -> None:
    await make_topic(cluster, "kept", retention_ms=3_600_000)
    await produce(cluster, "kept", 10)
    async with Admin(cluster.sc_addr) as admin:
        await admin.alter_topic("kept", set={"segment_bytes": SEGMENT},
                                unset=["retention_ms"])
    await spu_applied(cluster, "kept", {"segment_bytes": SEGMENT})
    await cluster.stop_sc()
    await cluster.start_sc()
    await cluster.wait_spu_online(1)
    async with Admin(cluster.sc_addr) as admin:
        assert (await admin.describe_topic("kept"))["config"] == {"segment_bytes": SEGMENT}
    # The SPU restarts with no SC to ask: it has the settings from its saved assignment.
    await cluster.kill_sc()
    assert await cluster.stop_spu() == 0
    await cluster.start_spu()
    before = len(segments(cluster, "kept"))
    await produce(cluster, "kept", 30, first=10)
    sizes = segments(cluster, "kept")
    assert len(sizes) >= before + 8
    assert all(size <= SEGMENT for size in sizes[before:])
    await cluster.start_sc()
    await cluster.wait_spu_online(1)
    assert await consumed(cluster, "kept") == list(range(40))


async def test_min_insync_replicas_applies_to_the_live_leader(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "c", spus=2, spu_settings={"replica_lag_s": 1.0}
                            ) as cluster, Admin(cluster.sc_addr) as admin:
        await admin.create_topic("isr", replication=2, prefer_leader=1)
        await admin.wait_ready("isr")
        await cluster.kill_spu(2)

        async def alone() -> bool:
            return [p["isr"] for p in await admin.list_partitions("isr")] == [[1]]

        await wait_for(alone)
        async with ClientConnection(cluster.spu_addr(1)) as conn:
            data = codec.encode_batch([[0, None, b"one"]],
                                      first_timestamp=int(time.time() * 1000))
            await conn.request(ApiKey.PRODUCE, data, topic="isr", partition=0, acks=-1)
            await admin.alter_topic("isr", set={"min_insync_replicas": 2})
            await spu_applied(cluster, "isr", {"min_insync_replicas": 2})
            with pytest.raises(NotEnoughReplicas):
                await conn.request(ApiKey.PRODUCE, data, topic="isr", partition=0, acks=-1)
