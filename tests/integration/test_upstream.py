"""Edge → cloud mirror through real processes: a cloud cluster and an edge site on
127.0.0.1, each its own SC and SPUs, the edge's uplink in its SPU processes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edge.cli.site_cmds import upstream_toml
from edge.client import Acks, Admin, Consumer, Offset, Producer
from edge.net.connection import ClientConnection
from edge.protocol import batch as codec
from edge.protocol.errors import AuthenticationFailed, InvalidRequest, NotContiguous
from edge.protocol.messages import ApiKey
from edge.testing import LocalCluster

TOPIC = "readings"


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout: float = 40.0) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.1)


async def register(cloud: LocalCluster, site: str, path: Path) -> str:
    async with Admin(cloud.sc_addr) as admin:
        token = str((await admin.register_site(site))["token"])
    path.write_text(upstream_toml(cloud.sc_addr, site, token))
    return token


async def edge_topic(edge: LocalCluster, partitions: int = 2, replication: int = 1) -> None:
    async with Admin(edge.sc_addr) as admin:
        await admin.create_topic(TOPIC, partitions=partitions, replication=replication,
                                 config={"upstream": True})
        await admin.wait_ready(TOPIC)


async def produce(edge: LocalCluster, start: int, count: int) -> None:
    async with Producer(edge.sc_addr, acks=Acks.ALL, linger_ms=2) as p:
        for i in range(start, start + count):
            await p.send(TOPIC, b"r%d" % i, key=b"k%d" % (i % 7))
        await p.flush()


async def records_by_partition(sc: str, partitions: list[int] | None = None
                               ) -> dict[int, list[tuple[int, bytes]]]:
    async with Consumer(sc, TOPIC, partition=partitions, offset=Offset.beginning(),
                        stop_at_end=True) as c:
        out: dict[int, list[tuple[int, bytes]]] = {}
        async for chunk in c.batches():
            out.setdefault(chunk.partition, []).extend((r.offset, r.value)
                                                      for r in chunk.records)
    return out


async def site_map(cloud: LocalCluster, site: str) -> dict[int, int]:
    """edge partition → cloud partition"""
    async with Admin(cloud.sc_addr) as admin:
        info = await admin.describe_site(site)
    return {m["edge_partition"]: m["cloud_partition"] for m in info["mirrors"]
            if m["topic"] == TOPIC}


async def mirrored(cloud: LocalCluster, edge: LocalCluster, site: str, partitions: int
                   ) -> bool:
    """Whether every edge record is in the cloud, exactly once, at its edge offset."""
    mapping = await site_map(cloud, site)
    if len(mapping) < partitions:
        return False
    edge_records = await records_by_partition(edge.sc_addr)
    cloud_records = await records_by_partition(cloud.sc_addr, sorted(mapping.values()))
    return all(cloud_records.get(mapping[i], []) == edge_records.get(i, [])
               for i in range(partitions))


async def raw_batches(sc_addr: str, topic: str, partition: int) -> bytes:
    async with Admin(sc_addr) as admin:
        conn = await admin.cluster.leader(topic, partition)
        _, blob = await conn.request(ApiKey.FETCH, topic=topic, partition=partition,
                                     offset=0, max_bytes=4 * 1024 * 1024)
    return blob


def without_epochs(blob: bytes) -> list[bytes]:
    """Each batch with its leader epoch (a per-cluster field) blanked."""
    out = []
    for h, pos in codec.split_batches(blob):
        piece = bytearray(blob[pos:pos + h.size])
        codec.set_leader_epoch(piece, 0, 0)
        out.append(bytes(piece))
    return out


async def test_offline_from_first_boot_then_everything_once(tmp_path: Path) -> None:
    cloud = LocalCluster(tmp_path / "cloud")
    await cloud.start()
    try:
        await register(cloud, "kitchen", tmp_path / "kitchen.toml")
        await cloud.stop()  # the edge never sees this cloud until the end
        async with LocalCluster(tmp_path / "edge",
                                extra_spu_args=["--upstream",
                                                str(tmp_path / "kitchen.toml")]) as edge:
            await edge_topic(edge)
            await produce(edge, 0, 600)
            async with Admin(edge.sc_addr) as admin:
                rows = await admin.upstream_status()
            assert {r["state"] for r in rows} == {"offline"}
            await cloud.start()
            await wait_for(lambda: mirrored(cloud, edge, "kitchen", 2))
            mapping = await site_map(cloud, "kitchen")
            for edge_p, cloud_p in mapping.items():
                assert without_epochs(await raw_batches(cloud.sc_addr, TOPIC, cloud_p)) == \
                    without_epochs(await raw_batches(edge.sc_addr, TOPIC, edge_p))
            async with Admin(edge.sc_addr) as admin:
                rows = await admin.upstream_status()
            assert {r["state"] for r in rows} == {"connected"}
            assert sum(r["cloud_acked"] for r in rows) == 600
            assert all(r["lag"] == 0 for r in rows)
    finally:
        await cloud.stop()


async def test_uplink_killed_and_cloud_restarted_midway(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "cloud") as cloud:
        await register(cloud, "barn", tmp_path / "barn.toml")
        async with LocalCluster(tmp_path / "edge",
                                extra_spu_args=["--upstream", str(tmp_path / "barn.toml")]
                                ) as edge:
            await edge_topic(edge, partitions=1)
            await produce(edge, 0, 2000)
            await edge.kill_spu(1)  # the uplink dies with its SPU, mid-way or not
            await edge.start_spu(1)
            await produce(edge, 2000, 1000)
            await cloud.kill_spu(1)
            await produce(edge, 3000, 500)
            await cloud.start_spu(1)
            await edge.kill_spu(1)
            await edge.start_spu(1)
            await produce(edge, 3500, 500)
            await wait_for(lambda: mirrored(cloud, edge, "barn", 1))
            mapping = await site_map(cloud, "barn")
            cloud_records = (await records_by_partition(cloud.sc_addr, [mapping[0]]))[mapping[0]]
            assert [o for o, _ in cloud_records] == list(range(4000))
            assert [v for _, v in cloud_records] == [b"r%d" % i for i in range(4000)]


async def test_consume_site_reads_only_its_part(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "cloud") as cloud:
        await register(cloud, "kitchen", tmp_path / "kitchen.toml")
        async with LocalCluster(tmp_path / "edge",
                                extra_spu_args=["--upstream", str(tmp_path / "kitchen.toml")]
                                ) as edge:
            await edge_topic(edge, partitions=1)
            await produce(edge, 0, 50)
            await wait_for(lambda: mirrored(cloud, edge, "kitchen", 1))
        async with Admin(cloud.sc_addr) as admin:
            parts = await admin.site_partitions("kitchen", TOPIC)
            await admin.register_site("barn")
            assert await admin.site_partitions("barn", TOPIC) == []
        assert parts == [0]
        got = await records_by_partition(cloud.sc_addr, parts)
        assert [v for _, v in got[0]] == [b"r%d" % i for i in range(50)]


def one_batch(base: int, values: list[bytes]) -> bytes:
    blob = bytearray(codec.encode_batch([[0, None, v] for v in values], first_timestamp=1))
    codec.set_base_offset(blob, 0, base)
    return bytes(blob)


async def mirror_request(addr: str, api: ApiKey, blob: bytes = b"", **fields: object
                         ) -> dict:
    async with ClientConnection(addr) as conn:
        meta, _ = await conn.request(api, blob, **fields)
    return meta


async def test_forged_and_noncontiguous_appends_are_refused(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "cloud") as cloud:
        token = await register(cloud, "kitchen", tmp_path / "kitchen.toml")
        other = await register(cloud, "barn", tmp_path / "barn.toml")
        async with ClientConnection(cloud.sc_addr) as sc:
            meta, _ = await sc.request(ApiKey.MIRROR_RESOLVE, site="kitchen", token=token,
                                       topic=TOPIC, partition=0, source="test/readings/1")
        spu, index = meta["leader"], meta["partition"]
        owner = {"topic": TOPIC, "partition": index, "site": "kitchen"}
        await wait_for(lambda: _answers(spu, owner, token), timeout=20)
        for site, tok in (("kitchen", other), ("barn", other), ("kitchen", token + "x")):
            with pytest.raises(AuthenticationFailed):
                await mirror_request(spu, ApiKey.MIRROR_APPEND, one_batch(0, [b"x"]),
                                     **{**owner, "site": site, "token": tok})
        ok = await mirror_request(spu, ApiKey.MIRROR_APPEND, one_batch(0, [b"a", b"b"]),
                                  token=token, **owner)
        assert (ok["end"], ok["hw"]) == (2, 2)
        for base in (0, 1, 5):  # a replay, a batch from inside, a gap
            with pytest.raises(NotContiguous) as info:
                await mirror_request(spu, ApiKey.MIRROR_APPEND, one_batch(base, [b"c"]),
                                     token=token, **owner)
            assert info.value.data["log_end_offset"] == 2
        chained = one_batch(2, [b"c"]) + one_batch(4, [b"d"])  # the second leaves a hole
        with pytest.raises(NotContiguous):
            await mirror_request(spu, ApiKey.MIRROR_APPEND, chained, token=token, **owner)
        with pytest.raises(InvalidRequest, match="only its uplink"):
            async with Producer(cloud.sc_addr) as p:
                await (await p.send(TOPIC, b"direct", partition=index))
        got = await records_by_partition(cloud.sc_addr, [index])
        assert got[index] == [(0, b"a"), (1, b"b")]
        # A gap marker obeys the same rules: the owner only, where the log ends.
        with pytest.raises(AuthenticationFailed):
            await mirror_request(spu, ApiKey.MIRROR_GAP, start=2, end=5,
                                 **{**owner, "site": "barn", "token": other})
        for start in (0, 3):
            with pytest.raises(NotContiguous):
                await mirror_request(spu, ApiKey.MIRROR_GAP, start=start, end=start + 3,
                                     token=token, **owner)
        with pytest.raises(InvalidRequest, match="gap covers"):
            await mirror_request(spu, ApiKey.MIRROR_GAP, start=2, end=2, token=token, **owner)
        gap = await mirror_request(spu, ApiKey.MIRROR_GAP, start=2, end=5, token=token, **owner)
        assert (gap["end"], gap["hw"]) == (5, 5)
        ok = await mirror_request(spu, ApiKey.MIRROR_APPEND, one_batch(5, [b"f"]),
                                  token=token, **owner)
        assert ok["end"] == 6
        got = await records_by_partition(cloud.sc_addr, [index])
        assert got[index] == [(0, b"a"), (1, b"b"), (5, b"f")]  # readers skip the gap


async def _answers(spu: str, owner: dict, token: str) -> bool:
    try:
        await mirror_request(spu, ApiKey.MIRROR_OFFSETS, token=token, **owner)
    except Exception:  # the assignment may not have reached the SPU yet
        return False
    return True


async def test_a_new_edge_leader_continues_the_uplink(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "cloud") as cloud:
        await register(cloud, "field", tmp_path / "field.toml")
        async with LocalCluster(tmp_path / "edge", spus=2,
                                extra_spu_args=["--upstream", str(tmp_path / "field.toml")]
                                ) as edge:
            await edge_topic(edge, partitions=1, replication=2)
            await produce(edge, 0, 1500)
            async with Admin(edge.sc_addr) as admin:
                holder = (await admin.upstream_status())[0]["spu"]
            await edge.kill_spu(holder)
            await produce(edge, 1500, 1500)
            await wait_for(lambda: mirrored(cloud, edge, "field", 1), timeout=60)
            async with Admin(edge.sc_addr) as admin:
                rows = await admin.upstream_status()
            assert [(r["spu"], r["state"], r["cloud_acked"]) for r in rows] == [
                (3 - holder, "connected", 3000)]
            home = (await site_map(cloud, "field"))[0]
            got = (await records_by_partition(cloud.sc_addr, [home]))[home]
            assert got == [(i, b"r%d" % i) for i in range(3000)]


async def test_status_shows_the_lag_in_records_bytes_and_age(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "cloud") as cloud:
        await register(cloud, "shed", tmp_path / "shed.toml")
        async with LocalCluster(tmp_path / "edge",
                                extra_spu_args=["--upstream", str(tmp_path / "shed.toml")]
                                ) as edge:
            await edge_topic(edge, partitions=1)
            await produce(edge, 0, 100)
            await wait_for(lambda: mirrored(cloud, edge, "shed", 1))
            async with Admin(edge.sc_addr) as admin:
                (row,) = await admin.upstream_status()
            assert (row["lag"], row["lag_bytes"], row["lag_s"]) == (0, 0, 0.0)
            # The cloud shows the site from the uplink's reports: who holds it, no lag.
            async with Admin(cloud.sc_addr) as admin:
                await wait_for(lambda: _site_row(admin, "shed", lag=0, uplink_spus=[1],
                                                 dropped=0, oldest_unsent_s=0.0))
            await cloud.kill_spu(1)
            await produce(edge, 100, 300)
            await asyncio.sleep(1.5)
            async with Admin(edge.sc_addr) as admin:
                (row,) = await admin.upstream_status()
            assert row["cloud_acked"] == 100
            assert row["lag"] == 300
            unsent = [h.size for h, _ in codec.split_batches(await raw_batches(
                edge.sc_addr, TOPIC, 0)) if h.base_offset >= 100]
            assert row["lag_bytes"] == sum(unsent)
            assert 1.0 <= row["lag_s"] < 30


async def _site_row(admin: Admin, site: str, **expected: object) -> bool:
    (row,) = [r for r in await admin.list_sites() if r["name"] == site]
    return all(row.get(k) == v for k, v in expected.items())
