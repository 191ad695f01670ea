"""The uplink's link features through real processes: zstd on the wire, the site's
bandwidth limit, topic priorities with their floor, and reconnecting at once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_upstream import mirrored, raw_batches, register, site_map, wait_for, without_epochs

from edge.cli.site_cmds import upstream_toml
from edge.client import Acks, Admin, Producer
from edge.net.connection import ClientConnection
from edge.protocol import batch as codec
from edge.protocol import wirezstd
from edge.protocol.errors import CorruptMessage, InvalidRequest
from edge.protocol.messages import ApiKey
from edge.testing import LocalCluster, TcpProxy

TOPIC = "readings"


def uplink_file(path: Path, cloud_sc: str, site: str, token: str, **settings: object) -> Path:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    path.write_text(upstream_toml(cloud_sc, site, token) + extra)
    return path


async def make_topic(edge: LocalCluster, name: str, **config: object) -> None:
    async with Admin(edge.sc_addr) as admin:
        await admin.create_topic(name, config={"upstream": True, **config})
        await admin.wait_ready(name)


async def produce(edge: LocalCluster, topic: str, values: list[bytes]) -> None:
    async with Producer(edge.sc_addr, acks=Acks.ALL, linger_ms=5) as p:
        for v in values:
            await p.send(topic, v)
        await p.flush()


def telemetry(count: int) -> list[bytes]:
    return [json.dumps({"device": f"sensor-{i % 40}", "seq": i, "ts": 1_700_000_000_000 + i,
                        "temperature_c": 20 + (i % 70) / 10, "status": "ok"}).encode()
            for i in range(count)]


async def status(edge: LocalCluster) -> dict[str, dict]:
    async with Admin(edge.sc_addr) as admin:
        return {r["topic"]: r for r in await admin.upstream_status()}


async def cloud_stats(cloud: LocalCluster) -> dict:
    async with ClientConnection(cloud.spu_addr(1)) as conn:
        meta, _ = await conn.request(ApiKey.PARTITION_STATUS)
    return dict(meta["stats"])


async def test_zstd_on_the_wire_stores_the_edge_bytes(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "cloud") as cloud:
        token = await register(cloud, "kitchen", tmp_path / "k.toml")
        async with LocalCluster(tmp_path / "edge", extra_spu_args=["--upstream", str(
                uplink_file(tmp_path / "k.toml", cloud.sc_addr, "kitchen", token))]) as edge:
            await make_topic(edge, TOPIC)
            await make_topic(edge, "zipped", compression="zlib")
            values = telemetry(5000)
            await produce(edge, TOPIC, values)
            await produce(edge, "zipped", values[:500])
            await wait_for(lambda: mirrored(cloud, edge, "kitchen", 1))
            rows = await status(edge)
            assert rows[TOPIC]["codec"] == "zstd"
            assert rows[TOPIC]["raw_bytes"] / rows[TOPIC]["wire_bytes"] >= 3.0
            home = (await site_map(cloud, "kitchen"))[0]
            assert without_epochs(await raw_batches(cloud.sc_addr, TOPIC, home)) == \
                without_epochs(await raw_batches(edge.sc_addr, TOPIC, 0))
            # A topic's own compression is kept: the cloud has the edge's zlib batches.
            await wait_for(lambda: _acked(edge, "zipped", 500))
            async with Admin(cloud.sc_addr) as admin:
                info = await admin.describe_site("kitchen")
            zipped = next(m["cloud_partition"] for m in info["mirrors"]
                          if m["topic"] == "zipped")
            cloud_blob = await raw_batches(cloud.sc_addr, "zipped", zipped)
            assert {h.compression for h, _ in codec.split_batches(cloud_blob)} == {
                codec.Compression.ZLIB}
            assert without_epochs(cloud_blob) == without_epochs(
                await raw_batches(edge.sc_addr, "zipped", 0))
        stats = await cloud_stats(cloud)
        assert stats["mirror_raw_bytes"] > 2 * stats["mirror_wire_bytes"]


async def _acked(edge: LocalCluster, topic: str, count: int) -> bool:
    return (await status(edge)).get(topic, {}).get("cloud_acked") == count


async def test_old_and_hostile_appends_at_the_cloud(tmp_path: Path) -> None:
    """An edge speaking v0 (no compression) is served; a zstd bomb or a frame that
    lies about its size is refused, counted, and the SPU serves on."""
    async with LocalCluster(tmp_path / "cloud") as cloud:
        token = await register(cloud, "kitchen", tmp_path / "k.toml")
        async with ClientConnection(cloud.sc_addr) as sc:
            meta, _ = await sc.request(ApiKey.MIRROR_RESOLVE, site="kitchen", token=token,
                                       topic=TOPIC, partition=0, source="test/readings/1")
        owner = {"topic": TOPIC, "partition": meta["partition"], "site": "kitchen",
                 "token": token}
        blob = bytearray(codec.encode_batch([[0, None, b"a"], [0, None, b"b"]],
                                            first_timestamp=1))
        async with ClientConnection(meta["leader"]) as conn:
            assert conn.versions[int(ApiKey.MIRROR_APPEND)] == (0, 1)
            await wait_for(lambda: _offsets(conn, owner), timeout=20)
            ok, _ = await conn.request(ApiKey.MIRROR_APPEND, bytes(blob), v=0, **owner)
            assert ok["end"] == 2
            bomb = wirezstd.compress(bytes(64 * 1024 * 1024))
            # A claimed size over a frame is refused by the schema, a size the frame
            # does not declare by the codec: neither inflates a byte.
            with pytest.raises(InvalidRequest, match="raw_bytes"):
                await conn.request(ApiKey.MIRROR_APPEND, bomb, codec="zstd",
                                   raw_bytes=64 * 1024 * 1024, **owner)
            with pytest.raises(CorruptMessage):
                await conn.request(ApiKey.MIRROR_APPEND, bomb, codec="zstd", raw_bytes=100,
                                   **owner)
            with pytest.raises(CorruptMessage):
                await conn.request(ApiKey.MIRROR_APPEND, os.urandom(300), codec="zstd",
                                   raw_bytes=300, **owner)
            codec.set_base_offset(blob, 0, 2)
            ok, _ = await conn.request(ApiKey.MIRROR_APPEND, wirezstd.compress(bytes(blob)),
                                       codec="zstd", raw_bytes=len(blob), **owner)
            assert ok["end"] == 4
        # The over-sized claim never reached the codec: two corrupt blobs, not three.
        assert (await cloud_stats(cloud))["mirror_corrupt"] == 2


async def _offsets(conn: ClientConnection, owner: dict) -> bool:
    try:
        await conn.request(ApiKey.MIRROR_OFFSETS, **owner)
    except Exception:  # the assignment may not have reached the SPU yet
        return False
    return True


async def cloud_behind_proxy(tmp_path: Path) -> tuple[LocalCluster, TcpProxy]:
    """A cloud whose SPU is reached (and counted) through a proxy."""
    cloud = LocalCluster(tmp_path / "cloud")
    proxy = TcpProxy(cloud.spu_addr(1))
    await proxy.start()
    cloud.spu_settings["advertise_public"] = proxy.addr
    await cloud.start()
    return cloud, proxy


async def test_the_bandwidth_limit_holds_within_5_percent(tmp_path: Path) -> None:
    rate = 300_000
    cloud, proxy = await cloud_behind_proxy(tmp_path)
    try:
        token = await register(cloud, "barn", tmp_path / "b.toml")
        path = uplink_file(tmp_path / "b.toml", cloud.sc_addr, "barn", token,
                           max_bytes_per_s=rate)
        async with LocalCluster(tmp_path / "edge", extra_spu_args=["--upstream", str(path)]
                                ) as edge:
            await make_topic(edge, TOPIC)
            await make_topic(edge, "other")
            # Random bytes: zstd cannot shrink them, the wire carries what the log holds.
            await produce(edge, TOPIC, [os.urandom(1000) for _ in range(2500)])
            await produce(edge, "other", [os.urandom(1000) for _ in range(2500)])
            measured = await steady_rate(proxy)
            assert abs(measured - rate) / rate < 0.05, measured
            rows = await status(edge)
            assert all(r["lag"] > 0 for r in rows.values())  # still limited, not done
    finally:
        await cloud.stop()
        await proxy.close()


async def test_the_limit_is_the_sites_whatever_its_spus(tmp_path: Path) -> None:
    """Two edge SPUs, each leading one upstream partition: the SC gives each half of
    the site's limit, so together they still send at the limit, not twice it."""
    rate = 300_000
    cloud, proxy = await cloud_behind_proxy(tmp_path)
    try:
        token = await register(cloud, "barn", tmp_path / "b.toml")
        path = uplink_file(tmp_path / "b.toml", cloud.sc_addr, "barn", token,
                           max_bytes_per_s=rate)
        async with LocalCluster(tmp_path / "edge", spus=2,
                                extra_spu_args=["--upstream", str(path)]) as edge:
            async with Admin(edge.sc_addr) as admin:
                await admin.create_topic(TOPIC, partitions=2, config={"upstream": True})
                await admin.wait_ready(TOPIC)
                leaders = {r["leader"] for r in await admin.list_partitions(TOPIC)}
            assert leaders == {1, 2}
            async with Producer(edge.sc_addr, acks=Acks.ALL, linger_ms=5) as p:
                for i in range(5000):
                    await p.send(TOPIC, os.urandom(1000), partition=i % 2)
                await p.flush()
            measured = await steady_rate(proxy)
            assert abs(measured - rate) / rate < 0.08, measured
    finally:
        await cloud.stop()
        await proxy.close()


async def steady_rate(proxy: TcpProxy, seconds: float = 8.0) -> float:
    """Bytes/s through ``proxy`` once the uplinks are past their first bursts."""
    await wait_for(lambda: _flowing(proxy), timeout=20)
    await asyncio.sleep(1.0)
    start, sent = time.monotonic(), proxy.forwarded
    await asyncio.sleep(seconds)
    return (proxy.forwarded - sent) / (time.monotonic() - start)


async def _flowing(proxy: TcpProxy) -> bool:
    return proxy.forwarded > 200_000


async def test_priorities_order_delivery_and_the_floor_moves_the_low_one(tmp_path: Path
                                                                        ) -> None:
    async with LocalCluster(tmp_path / "cloud") as cloud:
        token = await register(cloud, "farm", tmp_path / "f.toml")
        path = uplink_file(tmp_path / "f.toml", cloud.sc_addr, "farm", token,
                           max_bytes_per_s=400_000, probe_interval_s=0.5)
        await cloud.stop()  # both backlogs build up offline
        async with LocalCluster(tmp_path / "edge", extra_spu_args=["--upstream", str(path)]
                                ) as edge:
            await make_topic(edge, "bulk", upstream_priority=0)
            await make_topic(edge, "alerts", upstream_priority=9)
            await produce(edge, "bulk", [os.urandom(1000) for _ in range(3000)])
            await produce(edge, "alerts", [os.urandom(1000) for _ in range(1200)])
            await cloud.start()
            bulk_when_alerts_done = None
            async with asyncio.timeout(60):
                while bulk_when_alerts_done is None:
                    rows = await status(edge)
                    if rows["alerts"]["cloud_acked"] == 1200:
                        bulk_when_alerts_done = rows["bulk"]["cloud_acked"] or 0
                    await asyncio.sleep(0.1)
            assert rows["alerts"]["priority"] == 9
            # Alerts, produced last, are all there while bulk is mostly not (a fair
            # share would have sent as many bulk records as alerts, 1200) ...
            assert bulk_when_alerts_done < 600
            # ... yet bulk moved meanwhile: the floor (and the first burst).
            assert bulk_when_alerts_done > 50
            await wait_for(lambda: _acked(edge, "bulk", 3000), timeout=60)


async def test_reconnects_at_once_when_the_cloud_returns(tmp_path: Path) -> None:
    cloud = LocalCluster(tmp_path / "cloud")
    await cloud.start()
    try:
        token = await register(cloud, "shed", tmp_path / "s.toml")
        path = uplink_file(tmp_path / "s.toml", cloud.sc_addr, "shed", token,
                           probe_interval_s=1.0)
        await cloud.stop()
        async with LocalCluster(tmp_path / "edge", extra_spu_args=["--upstream", str(path)]
                                ) as edge:
            async with Admin(edge.sc_addr) as admin:
                await admin.create_topic(TOPIC, partitions=2, config={"upstream": True})
                await admin.wait_ready(TOPIC)
            await produce(edge, TOPIC, telemetry(200))
            # Long enough offline that the backoff waits 13-26 s between attempts.
            await asyncio.sleep(22)
            await cloud.start()
            back = time.monotonic()
            await wait_for(lambda: mirrored(cloud, edge, "shed", 2), timeout=60)
            assert time.monotonic() - back < 8.0
    finally:
        await cloud.stop()



async def test_cli_upstream_priority(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "edge") as edge:

        async def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "edge.cli.main", "--sc", edge.sc_addr,
                                 *args], capture_output=True, text=True, check=False)

        bad = await cli("topic", "create", "alerts", "--upstream", "--upstream-priority", "10")
        assert bad.returncode != 0
        assert "upstream_priority must be an integer 0..9" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        ok = await cli("topic", "create", "alerts", "--upstream", "--upstream-priority", "9")
        assert ok.returncode == 0
        described = await cli("topic", "describe", "alerts", "--output", "json")
        assert '"upstream_priority": 9' in described.stdout
