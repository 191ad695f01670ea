"""The edge's disk budget with the uplink down: real SC and SPU processes.

An edge SPU with ``disk_budget`` takes data while its cloud is unreachable. Under
``drop-oldest`` it keeps taking writes, deletes its oldest unsent segments,
counts exactly what it dropped and, once the cloud is back, marks those offsets
as one gap in the cloud log before sending the rest. Under ``reject-new`` it
refuses writes with the retriable BUDGET_EXCEEDED instead, and takes them again
once the cloud has what the edge holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.client import Acks, Admin, Consumer, Offset, Producer
from edge.protocol.errors import BudgetExceeded
from edge.testing import LocalCluster
from tests.integration.test_upstream import TOPIC, register, site_map, wait_for

BUDGET = 256 * 1024
SEGMENT = 16 * 1024
VALUE = 200


def _value(i: int) -> bytes:
    return b"%08d" % i + b"x" * (VALUE - 8)


async def _topic(edge: LocalCluster, policy: str) -> None:
    async with Admin(edge.sc_addr) as admin:
        await admin.create_topic(TOPIC, partitions=1, config={
            "upstream": True, "segment_bytes": SEGMENT, "budget_policy": policy})
        await admin.wait_ready(TOPIC)


def _segment_bytes(edge: LocalCluster) -> int:
    """What the SPU's segment files hold on disk, as ``ls`` would add it up."""
    return sum(p.stat().st_size for p in (edge.data_dir / "spu-1").rglob("*.log"))


async def _status(edge: LocalCluster) -> dict[str, object]:
    async with Admin(edge.sc_addr) as admin:
        (row,) = await admin.upstream_status()
    return row


async def _read(sc: str, partition: int) -> list[tuple[int, bytes]]:
    async with Consumer(sc, TOPIC, partition=[partition], offset=Offset.beginning(),
                        stop_at_end=True) as c:
        return [(r.offset, r.value) async for r in c]


def _edge(tmp_path: Path) -> LocalCluster:
    return LocalCluster(tmp_path / "edge", spu_settings={"disk_budget": BUDGET},
                        extra_spu_args=["--upstream", str(tmp_path / "site.toml")])


async def test_drop_oldest_stays_in_budget_counts_the_loss_and_marks_it_upstream(
        tmp_path: Path) -> None:
    cloud = LocalCluster(tmp_path / "cloud")
    await cloud.start()
    try:
        await register(cloud, "field", tmp_path / "site.toml")
        await cloud.stop()  # the uplink is down from the first boot
        async with _edge(tmp_path) as edge:
            await _topic(edge, "drop-oldest")
            acked: dict[int, bytes] = {}
            async with Producer(edge.sc_addr, acks=Acks.ALL, linger_ms=2) as p:
                futures = [(i, await p.send(TOPIC, _value(i))) for i in range(4000)]
                for i, fut in futures:
                    acked[(await fut).offset] = _value(i)
            # Four times the budget went in; the node holds no more than its budget.
            assert len(acked) == 4000
            assert _segment_bytes(edge) <= BUDGET
            edge_records = await _read(edge.sc_addr, 0)
            start = edge_records[0][0]
            assert start > 0
            # Exactly what is gone is counted: every offset below the log start.
            row = await _status(edge)
            assert row["dropped_records"] == start
            # Nothing acknowledged outside the declared drop is lost.
            assert edge_records == sorted((o, v) for o, v in acked.items() if o >= start)

            await cloud.start()
            await wait_for(lambda: _cloud_has(cloud, 4000))
            (home,) = (await site_map(cloud, "field")).values()
            assert await _read(cloud.sc_addr, home) == edge_records
            row = await _status(edge)
            assert (row["gaps_marked"], row["gap_offsets"]) == (1, start)
            async with Admin(cloud.sc_addr) as admin:
                await wait_for(lambda: _gap_reported(admin, start))
                (m,) = (await admin.describe_site("field"))["mirrors"]
                assert (m["dropped"], m["uplink_spu"], m["lag"]) == (start, 1, 0)
    finally:
        await cloud.stop()


async def _cloud_has(cloud: LocalCluster, end: int) -> bool:
    async with Admin(cloud.sc_addr) as admin:
        info = await admin.describe_site("field")
    return bool(info["mirrors"]) and info["mirrors"][0]["hw"] == end


async def _gap_reported(admin: Admin, offsets: int) -> bool:
    (m,) = (await admin.describe_site("field"))["mirrors"]
    return (m["gaps"], m["gap_offsets"]) == (1, offsets)


async def _send_until_refused(edge: LocalCluster, acked: dict[int, bytes]) -> None:
    """Send one record at a time, noting each acknowledged one, until a send fails."""
    async with Producer(edge.sc_addr, acks=Acks.ALL, linger_ms=2, delivery_timeout_s=3) as p:
        for i in range(4000):
            acked[(await (await p.send(TOPIC, _value(i)))).offset] = _value(i)


async def test_reject_new_refuses_when_full_and_takes_writes_once_the_cloud_has_them(
        tmp_path: Path) -> None:
    cloud = LocalCluster(tmp_path / "cloud")
    await cloud.start()
    try:
        await register(cloud, "field", tmp_path / "site.toml")
        await cloud.stop()
        async with _edge(tmp_path) as edge:
            await _topic(edge, "reject-new")
            acked: dict[int, bytes] = {}
            with pytest.raises(BudgetExceeded, match="budget"):
                await _send_until_refused(edge, acked)
            full = len(acked)
            assert 0 < full < 4000
            assert _segment_bytes(edge) <= BUDGET
            row = await _status(edge)
            assert row["dropped_records"] == 0
            # Nothing was deleted: the edge still starts at offset 0.
            assert [o for o, _ in await _read(edge.sc_addr, 0)] == list(range(full))

            await cloud.start()
            await wait_for(lambda: _cloud_has(cloud, full))
            async with Producer(edge.sc_addr, acks=Acks.ALL, linger_ms=2) as p:
                for i in range(full, full + 500):
                    acked[(await (await p.send(TOPIC, _value(i)))).offset] = _value(i)
            await wait_for(lambda: _cloud_has(cloud, full + 500))
            assert _segment_bytes(edge) <= BUDGET
            (home,) = (await site_map(cloud, "field")).values()
            assert await _read(cloud.sc_addr, home) == sorted(acked.items())
            assert (await _status(edge))["gaps_marked"] == 0
    finally:
        await cloud.stop()
