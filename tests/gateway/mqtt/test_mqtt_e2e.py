"""End to end, all real processes: publisher → mosquitto → ``python -m gateway run`` → SPU,
read back with ``headwater consume``; the gateway is SIGKILLed four times and the SPU once
while messages flow."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
from mqtt_helpers import (
    DLQ,
    TOPIC,
    GatewayProcess,
    consume_cli,
    create_topics,
    device_payload,
    mqtt_counters,
    read_topic,
    write_gateway_toml,
)

from edge.cli.stream_cmds import decode_json_value
from edge.testing import LocalCluster, free_port
from gateway.mqtt.testing import Mosquitto

DEVICES = ("dev1", "dev2", "dev3")
PER_DEVICE = 400


def connected(status: dict[str, Any]) -> bool:
    return mqtt_counters(status)["connected"] == 1


class Publisher:
    """Devices publishing in turn with QoS 1; ``acked`` holds what the broker PUBACKed."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.acked: dict[str, list[bytes]] = {device: [] for device in DEVICES}

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.acked.values())

    async def run(self) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port,
                                  identifier="e2e-devices") as client:
            for seq in range(PER_DEVICE):
                for device in DEVICES:
                    payload = device_payload(device, seq)
                    await client.publish(f"headwater/{device}/temperature", payload, qos=1)
                    self.acked[device].append(payload)
                await asyncio.sleep(0.004)  # a few seconds of traffic for the crashes


async def reached(publisher: Publisher, fraction: float) -> None:
    while publisher.count < fraction * PER_DEVICE * len(DEVICES):
        await asyncio.sleep(0.01)


async def test_gateway_and_spu_crashes_lose_and_duplicate_nothing(
    broker: Mosquitto, cluster: LocalCluster, tmp_path: Path
) -> None:
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    config = write_gateway_toml(tmp_path / "gateway.toml", sc=cluster.sc_addr, broker=broker,
                                status_port=free_port())
    check = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(config),
                            "--check-config"], capture_output=True, text=True, check=True)
    assert "OK" in check.stdout
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    gateway.start()
    await gateway.wait_status(connected, what="gateway connected")

    publisher = Publisher(broker)
    publishing = asyncio.create_task(publisher.run())
    for fraction in (0.15, 0.3):
        await reached(publisher, fraction)
        gateway.kill()  # SIGKILL: PUBACKs of what it wrote may never have left
        gateway.start()
    await reached(publisher, 0.45)
    await cluster.kill_spu()
    await asyncio.sleep(1.0)
    await cluster.start_spu()
    for fraction in (0.7, 0.85):
        await reached(publisher, fraction)
        gateway.kill()
        gateway.start()
    await publishing

    total = PER_DEVICE * len(DEVICES)
    status = await gateway.wait_status(
        lambda s: connected(s) and mqtt_counters(s)["in_flight"] == 0
        and mqtt_counters(s)["received"] > 0,
        what="gateway drained",
    )
    async with asyncio.timeout(60):
        while len(await read_topic(cluster.sc_addr, TOPIC)) < total:
            await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # anything late would be a duplicate

    records = consume_cli(cluster.sc_addr, TOPIC)
    assert len(records) == total
    per_device: dict[str, list[bytes]] = {device: [] for device in DEVICES}
    for record in records:
        value = decode_json_value(record)
        assert value is not None
        per_device[cbor2.loads(value)["d"]].append(value)
        assert decode_json_value(record, "key") == cbor2.loads(value)["d"].encode()
    for device in DEVICES:
        # One by one: exactly what the broker acknowledged to the device, in its order.
        assert per_device[device] == publisher.acked[device], device

    assert mqtt_counters(status)["dead_lettered"] == 0
    shown = subprocess.run([sys.executable, "-m", "gateway", "status", "--config", str(config),
                            "--output", "json"], capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout)["bridges"]["mqtt"]["counters"]["connected"] == 1
    table = subprocess.run([sys.executable, "-m", "gateway", "status", "--config", str(config)],
                           capture_output=True, text=True, check=True)
    header = table.stdout.splitlines()[0].split()
    assert header == ["bridge", "kind", "received", "produced", "duplicates", "bad_frames",
                      "dead_lettered", "reconnects"]
    assert gateway.kill(sig=15) == 0  # SIGTERM: a clean stop
