"""Shared pieces of the MQTT bridge tests: publishing, waiting, reading topics back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
from support import require

from edge.client import Admin, Consumer, Offset, Producer, Record
from gateway.config import MqttConfig, MqttRule, PayloadFormat
from gateway.mqtt.bridge import MqttBridge
from gateway.mqtt.testing import Mosquitto, find_mosquitto


def require_mosquitto() -> str:
    """The broker binary (Debian package: mosquitto); a missing one skips locally and
    fails in CI (``CI=true``)."""
    path = find_mosquitto()
    require(path is not None, "mosquitto is not installed (Debian package: mosquitto)")
    assert path is not None
    return path

TOPIC = "readings"
DLQ = "dead-letters"
RULES = (
    MqttRule(filter="headwater/+/temperature", topic=TOPIC, format=PayloadFormat.CBOR),
    MqttRule(filter="legacy/+/json", topic=TOPIC, format=PayloadFormat.JSON),
)


def device_payload(device: str, seq: int, *, epoch: int = 1) -> bytes:
    """What the firmware's MQTT link publishes (see firmware/headwater/mqtt_link.py)."""
    return cbor2.dumps({"d": device, "e": epoch, "s": seq, "t": 1_700_000_000_000 + seq,
                        "v": seq * 0.5})


def bridge_config(broker: Mosquitto, **overrides: object) -> MqttConfig:
    settings: dict[str, object] = {
        "host": broker.host, "port": broker.port, "client_id": "headwater-gateway-test",
        "keepalive_s": 5, "in_flight": 100, "rules": RULES,
    }
    settings.update(overrides)
    return MqttConfig(**settings)  # type: ignore[arg-type]


async def create_topics(sc: str, *names: str) -> None:
    async with Admin(sc) as admin:
        for name in names:
            await admin.create_topic(name, partitions=1, replication=1)
        for name in names:
            await admin.wait_ready(name)


@contextlib.asynccontextmanager
async def running_bridge(config: MqttConfig, sc: str) -> AsyncIterator[MqttBridge]:
    """A bridge task with its own producer; stopped cleanly at the end."""
    producer = Producer(sc)
    bridge = MqttBridge(config, producer=producer, dead_letter_topic=DLQ, send_timeout_s=2.0,
                        backoff_max_s=1.0)
    task = asyncio.create_task(bridge.run(), name="test-bridge")
    try:
        await wait_until(lambda: bridge.stats()["connected"] == 1, what="bridge subscribed")
        yield bridge
    finally:
        bridge.stop()
        async with asyncio.timeout(30):
            await task
        await producer.close()


async def publish(broker: Mosquitto, messages: Iterable[tuple[str, bytes]], *,
                  client_id: str = "test-publisher") -> int:
    """Publish with QoS 1, each one PUBACKed by the broker before the next."""
    count = 0
    async with aiomqtt.Client(broker.host, broker.port, identifier=client_id) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)
            count += 1
    return count


async def subscribe_session(broker: Mosquitto, config: MqttConfig) -> None:
    """Create the bridge's persistent session (subscriptions) without consuming anything."""
    bridge = MqttBridge(config, producer=None, dead_letter_topic=DLQ)  # type: ignore[arg-type]
    client = bridge._client()  # the same session settings as the bridge
    async with client:
        await bridge._subscribe(client)


async def wait_until(predicate: Callable[[], bool], *, timeout: float = 60.0,
                     what: str = "condition") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def read_topic(sc: str, topic: str) -> list[Record]:
    async with Consumer(sc, topic, partition=None, offset=Offset.beginning()) as consumer:
        return await consumer.fetch_until_end()


def by_device(records: list[Record]) -> dict[str, list[dict[str, object]]]:
    """Decoded device payloads per device, in log order."""
    out: dict[str, list[dict[str, object]]] = {}
    for record in records:
        doc = cbor2.loads(record.value)
        out.setdefault(str(doc["d"]), []).append(doc)
    return out


def write_gateway_toml(path: Path, *, sc: str, broker: Mosquitto, status_port: int,
                       client_id: str = "headwater-gateway-e2e", extra_mqtt: str = "") -> Path:
    path.write_text(f"""
sc = "{sc}"
dead_letter_topic = "{DLQ}"

[status]
listen = "127.0.0.1:{status_port}"
log_interval_s = 1

[producer]
send_timeout_s = 2

[mqtt]
host = "{broker.host}"
port = {broker.port}
client_id = "{client_id}"
keepalive_s = 5
in_flight = 200
{extra_mqtt}

[[mqtt.rules]]
filter = "headwater/+/temperature"
topic = "{TOPIC}"
format = "cbor"

[[mqtt.rules]]
filter = "legacy/+/json"
topic = "{TOPIC}"
format = "json"
""")
    return path


class GatewayProcess:
    """``python -m gateway run --config ...`` as a child process (SIGKILL-able)."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(self.config),
                 "--log-level", "info"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    async def status(self) -> dict[str, Any]:
        from gateway.config import load_config
        from gateway.status import read_status

        return await read_status(load_config(self.config).status.listen, timeout_s=2)

    async def wait_status(self, predicate: Callable[[dict[str, Any]], bool], *,
                          timeout: float = 60.0, what: str = "gateway status") -> dict[str, Any]:
        last: dict[str, Any] = {}
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.process is not None and self.process.poll() is not None:
                        raise AssertionError(f"gateway exited: {self.log_tail()}")
                    with contextlib.suppress(OSError, TimeoutError, ValueError):
                        last = await self.status()
                        if predicate(last):
                            return last
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; last status {last}") from None

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        self.process = None
        return code

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def mqtt_counters(status: dict[str, Any]) -> dict[str, int]:
    counters: dict[str, int] = status["bridges"]["mqtt"]["counters"]
    return counters


def consume_cli(sc: str, topic: str) -> list[dict[str, Any]]:
    """``headwater --sc SC consume TOPIC -B -d --output json``, one object per record."""
    out = subprocess.run(
        [sys.executable, "-m", "edge.cli.main", "--sc", sc, "consume", topic, "-B", "-d",
         "--output", "json"],
        capture_output=True, check=True, timeout=120,
    )
    return [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]


async def drained_records(sc: str, gateway: Any, total: int) -> list[dict[str, Any]]:
    """TOPIC's records (as ``consume_cli`` gives them) once ``total`` are in the log and
    the gateway holds nothing unacknowledged, read a second later: anything that
    arrived late would be a duplicate."""
    async with asyncio.timeout(60):
        while len(await read_topic(sc, TOPIC)) < total:
            await asyncio.sleep(0.2)
    await gateway.wait_status(lambda s: mqtt_counters(s)["in_flight"] == 0, what="drained")
    await asyncio.sleep(1.0)
    return consume_cli(sc, TOPIC)
