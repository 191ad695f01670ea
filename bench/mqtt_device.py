"""One MicroPython device over MQTT: readings/s with packing against one reading a message.

    python bench/mqtt_device.py [--runs 3] [--packs 0,32] [--per-message-readings 250]

What runs: the real firmware (firmware/headwater, compiled with mpy-cross) on the
MicroPython unix port with a 64 KB heap, its MqttLink on umqtt.simple 1.3.4, a real
mosquitto, and the gateway's MQTT bridge (``MqttBridge``, in this process) writing
to a real SC and SPU (``LocalCluster``, group commit), all on 127.0.0.1. The device
(tests/gateway/mqtt/mp/mqtt_device.py) makes readings as fast as its buffer
(64 readings, 4 KiB) takes them and publishes with QoS 1; ``--packs`` lists the
``pack`` settings to compare: 0 is one reading a message as pushed (the application
puts its own sequence fields in: {"d", "e", "s", "v"}, 25 bytes), N packs up to N
readings ({"t", "v"}, 16 bytes each) into one message.

Per run it reports the device's rate (readings the broker PUBACKed per second, on
the device's own clock, from its first reading to the last PUBACK) and the rate
until the SPU has them all (wall clock from starting the device, MicroPython's
start-up included), and checks that the SPU got every reading exactly once. A run
makes ``--per-message-readings`` times max(1, pack) readings, so each takes about
as long. Prints every run and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "gateway" / "mqtt")]

from firmware_device import Device, compile_firmware, extract_umqtt  # noqa: E402

from edge.bench import machine  # noqa: E402
from edge.client import Admin, Producer  # noqa: E402
from edge.testing import LocalCluster  # noqa: E402
from gateway.config import MqttConfig, MqttRule  # noqa: E402
from gateway.mqtt.bridge import MqttBridge  # noqa: E402
from gateway.mqtt.testing import Mosquitto  # noqa: E402

TOPIC = "readings"


async def one_run(broker: Mosquitto, bridge: MqttBridge, library: Path, *, pack: int,
                  count: int, name: str) -> tuple[float, float]:
    """(device readings/s, readings/s until the SPU has them all) of one device run."""
    before = bridge.stats()
    device = Device(name, 1, count=count, period_ms=0, pack=pack)
    started = time.perf_counter()
    await device.run(broker.host, broker.port, library)
    while (bridge.stats()["produced"] - before["produced"] < count
           and time.perf_counter() - started < 120):
        await asyncio.sleep(0.002)
    stored = time.perf_counter() - started
    after = bridge.stats()
    produced = after["produced"] - before["produced"]
    duplicates = after["duplicates"] - before["duplicates"]
    if produced != count or duplicates or after["dead_lettered"]:
        raise RuntimeError(f"{name}: {produced} of {count} produced, {duplicates} duplicates, "
                           f"{after['dead_lettered']} dead letters")
    return count * 1000 / device.elapsed_ms, count / stored


async def main(runs: int, packs: list[int], per_message: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        library = compile_firmware(Path(tmp) / "lib", extract_umqtt(Path(tmp) / "src"))
        async with LocalCluster(Path(tmp) / "cluster") as cluster, \
                Mosquitto(Path(tmp) / "mosquitto") as broker:
            async with Admin(cluster.sc_addr) as admin:
                for topic in (TOPIC, "dead-letters"):
                    await admin.create_topic(topic, partitions=1, replication=1)
                await admin.wait_ready(TOPIC)
            producer = Producer(cluster.sc_addr)
            config = MqttConfig(host=broker.host, port=broker.port, client_id="bench-gateway",
                                rules=(MqttRule(filter="headwater/+/temperature", topic=TOPIC),))
            bridge = MqttBridge(config, producer=producer, dead_letter_topic="dead-letters")
            task = asyncio.create_task(bridge.run(), name="bench-bridge")
            while not bridge.stats()["connected"]:
                await asyncio.sleep(0.01)
            print(f"{machine()}; mosquitto, 1 SPU (group commit), MicroPython unix port, "
                  "64 KB heap")
            results: dict[int, list[tuple[float, float]]] = {p: [] for p in packs}
            for run in range(runs):
                for pack in packs:
                    count = per_message * max(1, pack)
                    rates = await one_run(broker, bridge, library, pack=pack, count=count,
                                          name=f"bench-p{pack}-r{run}")
                    results[pack].append(rates)
                    print(f"run {run + 1} pack {pack:3d}: {count:6d} readings, device "
                          f"{rates[0]:8.1f} readings/s, in the SPU {rates[1]:8.1f} readings/s")
            print("median of", runs, "runs:")
            for pack, rows in results.items():
                device = statistics.median(r[0] for r in rows)
                stored = statistics.median(r[1] for r in rows)
                print(f"  pack {pack:3d}: device {device:8.1f} readings/s, "
                      f"in the SPU {stored:8.1f} readings/s  "
                      f"(device runs: {', '.join(f'{r[0]:.0f}' for r in rows)})")
            bridge.stop()
            await task
            await producer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--packs", default="0,32",
                        help="comma-separated MqttLink pack settings (0: one reading a message)")
    parser.add_argument("--per-message-readings", type=int, default=250,
                        help="a run makes this many readings times max(1, pack)")
    args = parser.parse_args()
    asyncio.run(main(args.runs, [int(p) for p in args.packs.split(",")],
                     args.per_message_readings))
