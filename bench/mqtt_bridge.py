"""MQTT bridge benchmark: records/s from mosquitto into the SPU, next to a bare subscriber.

    python bench/mqtt_bridge.py [--runs 5] [--messages 20000] [--devices 10]

One run starts a real Headwater (SC and SPU processes, group-commit durability) and
a real mosquitto. Two persistent sessions subscribe to ``headwater/+/temperature``:
the gateway's MQTT bridge and a bare aiomqtt subscriber (QoS 1, automatic PUBACK,
does nothing with the messages). Each round preloads ``--messages`` device readings
(about 100 bytes of CBOR with sequence fields, ``--devices`` devices in turn) into
both sessions while neither is connected, then lets each drain the same stream on
its own, alternating which goes first:

* bridge: connect, decode, write idempotent batches to the SPU, PUBACK in order
  after the SPU acknowledged; the clock stops when the last record is in the SPU;
* bare: ``async for message in client.messages`` until the last message;
* burst: the same bare subscriber, but after each message it also takes whatever
  else is already queued (``queue.get_nowait``), as the bridge does; aiomqtt's
  iterator costs a task and an ``asyncio.wait`` per message, and this is the
  fairer baseline for the bridge's own MQTT side.

They drain one after the other rather than at once, so none takes CPU from the
others on a 2-core machine. Besides the rates it prints the CPU time per message
of this process (the consumer under test), of the SPU and of mosquitto: unlike
rates, those hardly move when other work shares the machine. Prints every round
and the medians; the goal is a bridge rate of at least 90 % of the bare
subscriber's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import aiomqtt
import cbor2
import psutil
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.client import Admin, Producer  # noqa: E402
from edge.testing import LocalCluster  # noqa: E402
from gateway.config import MqttConfig, MqttRule  # noqa: E402
from gateway.mqtt.bridge import MqttBridge  # noqa: E402
from gateway.mqtt.testing import Mosquitto  # noqa: E402

TOPIC = "readings"
FILTER = "headwater/+/temperature"
IN_FLIGHT = 1000
PUBLISH_WINDOW = 500
BARE = ("bench-bare", "bench-burst")


def payload(device: int, seq: int) -> bytes:
    doc = {"d": f"dev{device:02d}", "e": 1, "s": seq, "t": 1_700_000_000_000 + seq,
           "v": 21.5, "u": "celsius", "pad": "x" * 36}
    return cbor2.dumps(doc)


def bridge_config(broker: Mosquitto, linger_ms: float | None = None) -> MqttConfig:
    extra = {} if linger_ms is None else {"linger_ms": linger_ms}
    return MqttConfig(host=broker.host, port=broker.port, client_id="bench-bridge",
                      in_flight=IN_FLIGHT, rules=(MqttRule(filter=FILTER, topic=TOPIC),),
                      **extra)


def bare_client(broker: Mosquitto, client_id: str) -> aiomqtt.Client:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0xFFFFFFFF
    props.ReceiveMaximum = IN_FLIGHT
    return aiomqtt.Client(broker.host, broker.port, identifier=client_id,
                          protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
                          properties=props)


async def subscribe_sessions(broker: Mosquitto) -> None:
    for client_id in BARE:
        async with bare_client(broker, client_id) as client:
            await client.subscribe(FILTER, qos=1)
    bridge = MqttBridge(bridge_config(broker), producer=None,  # type: ignore[arg-type]
                        dead_letter_topic="dead-letters")
    async with bridge._client() as client:  # the bridge's own session settings
        await bridge._subscribe(client)


async def preload(broker: Mosquitto, messages: int, devices: int, round_no: int) -> None:
    """Publish QoS 1 with a window of outstanding PUBACKs (sequential publishing is
    slower than the consumers under test)."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="bench-devices",
                              max_inflight_messages=PUBLISH_WINDOW) as client:
        client.pending_calls_threshold = PUBLISH_WINDOW + 1  # the window is on purpose
        pending: set[asyncio.Task[None]] = set()
        for i in range(messages):
            device, seq = i % devices, round_no * messages // devices + i // devices
            pending.add(asyncio.create_task(client.publish(
                f"headwater/dev{device:02d}/temperature", payload(device, seq), qos=1,
                timeout=60)))
            if len(pending) >= PUBLISH_WINDOW:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending)


async def drain_bare(broker: Mosquitto, messages: int, *, burst: bool) -> float:
    started = time.perf_counter()
    received = 0
    async with bare_client(broker, "bench-burst" if burst else "bench-bare") as client:
        queue = client._queue  # burst: take what is already queued, as the bridge does
        async for _ in client.messages:
            received += 1
            while burst and not queue.empty():
                queue.get_nowait()
                received += 1
            if received >= messages:
                break
    return messages / (time.perf_counter() - started)


async def drain_bridge(broker: Mosquitto, sc: str, messages: int, linger_ms: float) -> float:
    producer = Producer(sc)
    await producer.__aenter__()  # connect before the clock starts, as a running gateway is
    bridge = MqttBridge(bridge_config(broker, linger_ms), producer=producer,
                        dead_letter_topic="dead-letters")
    started = time.perf_counter()
    task = asyncio.create_task(bridge.run())
    while bridge.stats()["produced"] + bridge.stats()["duplicates"] < messages:
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - started
    stats = bridge.stats()
    bridge.stop()
    await task
    await producer.close()
    if stats["duplicates"] or stats["dead_lettered"]:
        raise RuntimeError(f"unexpected duplicates or dead letters: {stats}")
    return messages / elapsed


class Cpu:
    """CPU seconds of this process, the SPU and the broker between two points."""

    def __init__(self, spu_pid: int, broker_pid: int) -> None:
        self._others = {"spu": psutil.Process(spu_pid), "broker": psutil.Process(broker_pid)}

    def now(self) -> dict[str, float]:
        times = {"own": time.process_time()}
        for name, proc in self._others.items():
            cpu = proc.cpu_times()
            times[name] = cpu.user + cpu.system
        return times


async def measure(cpu: Cpu, messages: int, drain: Awaitable[float]) -> dict[str, float]:
    """Rate and CPU microseconds per message of one drain."""
    before = cpu.now()
    rate = await drain
    after = cpu.now()
    sample = {f"{k}_us": (after[k] - before[k]) * 1e6 / messages for k in before}
    sample["rate"] = rate
    return sample


async def main(runs: int, messages: int, devices: int, linger_ms: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with LocalCluster(Path(tmp) / "cluster") as cluster, \
                Mosquitto(Path(tmp) / "mosquitto") as broker:
            async with Admin(cluster.sc_addr) as admin:
                await admin.create_topic(TOPIC, partitions=1, replication=1)
                await admin.create_topic("dead-letters", partitions=1, replication=1)
                await admin.wait_ready(TOPIC)
            await subscribe_sessions(broker)
            assert broker.pid is not None
            cpu = Cpu(cluster.spu_procs[1].pid, broker.pid)
            size = len(payload(0, 0))
            print(f"{messages} messages of {size} bytes from {devices} devices per round; "
                  f"mosquitto, 1 SPU (group commit), in_flight {IN_FLIGHT}, "
                  f"linger {linger_ms:g} ms")
            samples: dict[str, list[dict[str, float]]] = {"bridge": [], "bare": [], "burst": []}
            for round_no in range(runs):
                await preload(broker, messages, devices, round_no)
                order = list(samples) if round_no % 2 == 0 else list(reversed(samples))
                for who in order:
                    drain = (drain_bridge(broker, cluster.sc_addr, messages, linger_ms)
                             if who == "bridge"
                             else drain_bare(broker, messages, burst=who == "burst"))
                    samples[who].append(await measure(cpu, messages, drain))
                print(f"round {round_no + 1}: " + _line(
                    {k: v[-1]["rate"] for k, v in samples.items()}))
            print("median:  " + _line({k: _median(v, "rate") for k, v in samples.items()}))
            print("median CPU per message (us): this process / SPU / mosquitto")
            for who, rows in samples.items():
                print(f"  {who:6s} {_median(rows, 'own_us'):6.1f} / {_median(rows, 'spu_us'):5.1f}"
                      f" / {_median(rows, 'broker_us'):5.1f}")


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def _line(rate: dict[str, float]) -> str:
    return (f"bridge {rate['bridge']:6.0f} rec/s | bare {rate['bare']:6.0f} msg/s "
            f"(bridge {rate['bridge'] / rate['bare']:4.0%}) | burst {rate['burst']:6.0f} msg/s "
            f"(bridge {rate['bridge'] / rate['burst']:4.0%})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--linger-ms", type=float, default=MqttConfig.linger_ms,
                        help="how long a round waits to fill ([mqtt] linger_ms)")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.messages, args.devices, args.linger_ms))
