"""End to end, all real processes: MicroPython firmware <-> pty pair <-> gateway
(``python -m gateway.serial``) <-> SPU, read back with ``headwater consume``.

While records flow the line gets garbage and flipped bits, the gateway is
SIGKILLed and restarted, the SPU is killed and restarted and the port is
unplugged; afterwards every record the device was told is safe is in the topic
exactly once, in device order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ptyline import PtyLine
from serial_harness import (
    Device,
    build_firmware,
    consume_all,
    kill,
    last_stats,
    reading_index,
    start_gateway,
    tool,
)

from edge.client import Admin
from edge.testing import LocalCluster

TOPIC = "readings"


async def _setup(tmp_path: Path) -> tuple[Path, PtyLine]:
    build = build_firmware(tmp_path / "mpy")
    line = PtyLine(tmp_path)
    line.start()
    return build, line


async def _create_topic(sc: str) -> None:
    async with Admin(sc) as admin:
        await admin.create_topic(TOPIC, partitions=1, replication=1)


def _assert_exactly_once(rows: list[dict[str, object]], device: Device, total: int) -> None:
    got = [reading_index(r) for r in rows]
    delivered = device.delivered_seqs()
    assert delivered == list(range(len(delivered))), "device acknowledged out of order"
    assert len(got) == len(set(got)), f"duplicates in the topic: {len(got) - len(set(got))}"
    assert got == sorted(got), "topic is not in device order"
    assert set(delivered) <= set(got), "an acknowledged record is missing"
    assert got == list(range(total))


async def test_records_flow_end_to_end(tmp_path: Path) -> None:
    build, line = await _setup(tmp_path)
    log = tmp_path / "gateway.log"
    async with LocalCluster(tmp_path / "cluster") as cluster:
        await _create_topic(cluster.sc_addr)
        gw = start_gateway(line.gateway_path, cluster.sc_addr, TOPIC, log)
        dev = await Device.start(build, line.device_path, count=300, rate=0, workdir=tmp_path)
        try:
            await asyncio.wait_for(dev.done.wait(), 60)
            await asyncio.sleep(1.5)
            stats = last_stats(log)
            rows = await consume_all(cluster.sc_addr, TOPIC)
        finally:
            await dev.stop()
            await kill(gw)
            line.close()
    _assert_exactly_once(rows, dev, 300)
    assert rows[0]["key"] == "dev-1"
    assert stats["produced"] == 300
    assert stats["bad_frames"] == 0


async def test_exactly_once_through_noise_crashes_and_unplug(tmp_path: Path) -> None:
    total = 1500
    build, line = await _setup(tmp_path)
    log = tmp_path / "gateway.log"
    async with LocalCluster(tmp_path / "cluster") as cluster:
        await _create_topic(cluster.sc_addr)
        gw = start_gateway(line.gateway_path, cluster.sc_addr, TOPIC, log)
        dev = await Device.start(build, line.device_path, count=total, rate=150, workdir=tmp_path)
        try:
            await dev.wait_delivered(150, 30)
            line.garbage_rate, line.flip_rate = 0.05, 0.05  # noise both ways
            await dev.wait_delivered(400, 60)
            await kill(gw)  # SIGKILL while frames are in flight
            await asyncio.sleep(0.5)
            gw = start_gateway(line.gateway_path, cluster.sc_addr, TOPIC, log)
            await dev.wait_delivered(650, 60)
            await cluster.kill_spu()
            await asyncio.sleep(1.0)  # the device keeps buffering, the gateway NAKs busy
            await cluster.start_spu()
            await dev.wait_delivered(900, 90)
            line.unplug()  # USB cable out and in again: the gateway reopens the port
            unplugged_at = dev.delivered_count
            # Seen before anything else happens (a backlog after the SPU's return can
            # carry the device past 1100 at once, and the kill below would race it).
            await _logged(log, "port went away", 30)
            await dev.wait_delivered(max(1100, unplugged_at + 100), 60)
            await kill(gw)
            gw = start_gateway(line.gateway_path, cluster.sc_addr, TOPIC, log)
            await dev.wait_delivered(1300, 60)
            line.garbage_rate = line.flip_rate = 0.0
            await asyncio.wait_for(dev.done.wait(), 90)
            rows = await consume_all(cluster.sc_addr, TOPIC)
        finally:
            await dev.stop()
            await kill(gw)
            line.close()
    assert line.damaged > 0
    text = log.read_text()
    # The unplug was seen (waited for above) and survived: deliveries went on after it.
    assert "port went away" in text
    # Whether noise made the device retransmit a frame the SPU already had is up to
    # chance (about four runs in five here); when it did, the exactly-once check
    # below is what proves it was deduplicated.
    _assert_exactly_once(rows, dev, total)


async def _logged(log: Path, text: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while text not in log.read_text():
            await asyncio.sleep(0.05)


async def test_two_ports_in_one_gateway_with_a_topic_map(tmp_path: Path) -> None:
    build = build_firmware(tmp_path / "mpy")
    lines = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        lines.append(PtyLine(tmp_path / name))
        lines[-1].start()
    log = tmp_path / "gateway.log"
    async with LocalCluster(tmp_path / "cluster") as cluster:
        async with Admin(cluster.sc_addr) as admin:
            await admin.create_topic("env-readings", partitions=1, replication=1)
            await admin.create_topic(TOPIC, partitions=1, replication=1)
        gw = start_gateway([ln.gateway_path for ln in lines], cluster.sc_addr, TOPIC, log,
                           maps=("env=env-readings",))  # fmt: skip
        devs = [
            await Device.start(
                build, ln.device_path, count=200, rate=0, workdir=tmp_path, device_id=f"dev-{i}"
            )
            for i, ln in enumerate(lines)
        ]
        try:
            for dev in devs:
                await asyncio.wait_for(dev.done.wait(), 60)
            rows = await consume_all(cluster.sc_addr, "env-readings")
            default_rows = await consume_all(cluster.sc_addr, TOPIC)
        finally:
            for dev in devs:
                await dev.stop()
            await kill(gw)
            for line in lines:
                line.close()
    assert default_rows == []
    for i, dev in enumerate(devs):
        mine = [r for r in rows if r["key"] == f"dev-{i}"]
        _assert_exactly_once(mine, dev, 200)


async def test_device_reset_with_flash_spool_keeps_exactly_once(tmp_path: Path) -> None:
    """SIGKILL the device twice mid-stream: a new boot epoch resends its spooled,
    unacknowledged records in the same frames, and the SPU keeps one copy."""
    total = 900
    build, line = await _setup(tmp_path)
    log = tmp_path / "gateway.log"
    spool = str(tmp_path / "device.spool")
    delivered: list[int] = []
    async with LocalCluster(tmp_path / "cluster") as cluster:
        await _create_topic(cluster.sc_addr)
        gw = start_gateway(line.gateway_path, cluster.sc_addr, TOPIC, log)
        try:
            for stop_at in (200, 550, None):
                dev = await Device.start(build, line.device_path, count=total, rate=200,
                                         workdir=tmp_path, spool=spool)  # fmt: skip
                try:
                    if stop_at is None:
                        await asyncio.wait_for(dev.done.wait(), 90)
                    else:
                        await dev.wait_delivered(stop_at - len(delivered), 60)
                finally:
                    await dev.stop()  # SIGKILL: a reset in the middle of whatever it did
                delivered += dev.delivered_seqs()
            rows = await consume_all(cluster.sc_addr, TOPIC)
        finally:
            await kill(gw)
            line.close()
    got = [reading_index(r) for r in rows]
    # A reset can fall between the spool write of an ACK and the line that reports
    # it, so the report may miss a record; it never reports one that is not safe.
    assert set(delivered) <= set(got)
    assert delivered == sorted(delivered)
    assert got == list(range(total)), f"{len(got)} rows, {len(got) - len(set(got))} duplicates"


@pytest.fixture(autouse=True)
def _tools() -> None:
    tool("micropython")
    tool("headwater")
