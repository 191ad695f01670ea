"""End to end with readings packed by the real firmware: MicroPython devices (the
MqttLink packing readings into multi-reading messages, 64 KB heap) → mosquitto →
``python -m gateway run`` → SPU, read back with ``headwater consume``, while the
gateway is SIGKILLed twice and the broker restarted. Every reading must be in the log
once, in the device's order, as its own record holding the bytes the device made."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import cbor2
import pytest
from firmware_device import Device
from mqtt_helpers import (
    DLQ,
    TOPIC,
    GatewayProcess,
    create_topics,
    drained_records,
    mqtt_counters,
    read_topic,
    write_gateway_toml,
)
from test_mqtt_firmware_e2e import require_firmware_tools, until

from edge.cli.stream_cmds import decode_json_value
from edge.testing import LocalCluster, free_port
from gateway.mqtt.testing import Mosquitto

DEVICES = {"packer-a": (21, 16), "packer-b": (5, 32)}  # device id → (boot epoch, pack)
PER_DEVICE = 1500
PERIOD_MS = 1
T0 = 1_700_000_000_000  # mp/mqtt_device.py: reading i is {"t": T0 + i, "v": i}


@pytest.fixture(scope="module")
def umqtt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return require_firmware_tools(tmp_path_factory.mktemp("firmware"))


async def test_packed_readings_once_in_order_through_restarts(
    broker: Mosquitto, cluster: LocalCluster, tmp_path: Path, umqtt_path: Path
) -> None:
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    config = write_gateway_toml(tmp_path / "gateway.toml", sc=cluster.sc_addr, broker=broker,
                                status_port=free_port(), client_id="gw-packed")
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    gateway.start()
    await gateway.wait_status(lambda s: mqtt_counters(s)["connected"] == 1, what="connected")

    devices = [Device(name, epoch, count=PER_DEVICE, period_ms=PERIOD_MS, pack=pack)
               for name, (epoch, pack) in DEVICES.items()]
    running = asyncio.gather(*(device.run(broker.host, broker.port, umqtt_path)
                               for device in devices))

    async def confirmed(count: int) -> None:
        await until(lambda: sum(d.confirmed for d in devices) >= count, running)

    total = PER_DEVICE * len(devices)
    await confirmed(total // 4)
    gateway.kill()  # mid-round: readings in the log whose PUBACK never left
    gateway.start()
    await confirmed(total // 2)
    # The devices lose their connection mid-publish and pack their buffers again;
    # the broker keeps the gateway's session (SIGTERM saves it).
    await broker.stop(sig=signal.SIGTERM)
    await asyncio.sleep(0.3)
    await broker.start()
    await confirmed(3 * total // 4)
    gateway.kill()
    gateway.start()
    async with asyncio.timeout(120):
        await running
    assert [d.output[-1] for d in devices] == [f"done {PER_DEVICE}"] * len(devices)

    records = await drained_records(cluster.sc_addr, gateway, total)
    stats = mqtt_counters(await gateway.status())
    assert len(records) == total
    seen: dict[str, list[bytes]] = {d.name: [] for d in devices}
    for record in records:
        key, value = decode_json_value(record, "key"), decode_json_value(record)
        assert key is not None
        assert value is not None
        seen[key.decode()].append(value)
    for device in devices:
        # One record per reading, holding exactly the bytes the device's cbor made.
        assert [cbor2.loads(v) for v in seen[device.name]] == [
            {"t": T0 + i, "v": i} for i in range(PER_DEVICE)
        ], device.name
        # Packed: far fewer messages than readings (restarts cut some short).
        assert device.published <= PER_DEVICE // 4, (device.name, device.published)
        assert device.errors >= 1, "the broker restart did not reach the device"
    assert stats["dead_lettered"] == stats["bad_frames"] == 0
    assert await read_topic(cluster.sc_addr, DLQ) == []
    gateway.kill(sig=15)
