"""The MQTT bridge against a real mosquitto and a real Headwater (SC + SPU processes)."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import subprocess
from pathlib import Path

import aiomqtt
import cbor2
import pytest
from mqtt_helpers import (
    DLQ,
    RULES,
    TOPIC,
    bridge_config,
    by_device,
    create_topics,
    device_payload,
    publish,
    read_topic,
    running_bridge,
    subscribe_session,
    wait_until,
)
from support import make_pki, require_binary

from edge.client import Producer, Record
from edge.testing import LocalCluster
from edge.tls import TlsConfig
from gateway.config import MqttRule, PayloadFormat
from gateway.mqtt.bridge import MqttBridge
from gateway.mqtt.client import AckingClient
from gateway.mqtt.testing import Mosquitto
from gateway.runner import tls_context

DEVICES = ("dev1", "dev2", "dev3")


def stream(count: int, *, start: int = 0) -> list[tuple[str, bytes]]:
    """``count`` readings per device, interleaved as devices publish them."""
    return [
        (f"headwater/{device}/temperature", device_payload(device, seq))
        for seq in range(start, start + count)
        for device in DEVICES
    ]


def assert_exactly_once_in_order(records: list[Record], count: int) -> None:
    per_device = by_device(records)
    assert sorted(per_device) == list(DEVICES)
    for device in DEVICES:
        assert [doc["s"] for doc in per_device[device]] == list(range(count)), device


async def test_every_message_once_in_device_order(
    broker: Mosquitto, cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    sent = stream(200)
    # paho logs every packet on the "mqtt" logger: the wire order of PUBLISH and PUBACK.
    caplog.set_level(logging.DEBUG, logger="mqtt")
    async with running_bridge(bridge_config(broker, in_flight=50), cluster.sc_addr) as bridge:
        await publish(broker, sent)
        await wait_until(lambda: bridge.stats()["produced"] == len(sent), what="all produced")
        await wait_until(lambda: bridge.stats()["in_flight"] == 0, what="all acknowledged")
        stats = bridge.stats()
    records = await read_topic(cluster.sc_addr, TOPIC)
    # One by one: the bytes in the log are the bytes each device published.
    assert sorted(r.value for r in records) == sorted(payload for _, payload in sent)
    assert {r.key for r in records} == {d.encode() for d in DEVICES}
    assert_exactly_once_in_order(records, 200)
    assert stats["received"] == len(sent)
    assert stats["duplicates"] == stats["dead_lettered"] == stats["bad_frames"] == 0

    received = [int(m) for m in re.findall(r"Received PUBLISH \(d\d, q1, r\d, m(\d+)\)",
                                             caplog.text)]
    acked = [int(m) for m in re.findall(r"Sending PUBACK \(Mid: (\d+)\)", caplog.text)]
    assert len(received) == len(sent)
    assert acked == received  # MQTT 4.6: PUBACKs in the order the PUBLISHes arrived


async def test_undecodable_payloads_go_to_the_dead_letter_topic(
    broker: Mosquitto, cluster: LocalCluster
) -> None:
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    bad = [
        ("headwater/dev1/temperature", b"\xff\xfe not cbor"),
        ("headwater/dev1/temperature", cbor2.dumps({"d": "dev9", "e": 1, "s": 0})),
        ("legacy/dev4/json", b"{not json"),
        ("headwater/dev1/temperature", cbor2.dumps({"e": 1, "s": -5})),
    ]
    good = [("headwater/dev1/temperature", device_payload("dev1", 0)),
            ("legacy/dev4/json", b'{"v": 20.5}')]
    async with running_bridge(bridge_config(broker), cluster.sc_addr) as bridge:
        await publish(broker, [bad[0], good[0], *bad[1:], good[1]])
        await wait_until(lambda: bridge.stats()["dead_lettered"] == len(bad), what="dead letters")
        await wait_until(lambda: bridge.stats()["produced"] == len(good), what="good records")
        stats = bridge.stats()
    assert stats["bad_frames"] == len(bad)
    dead = await read_topic(cluster.sc_addr, DLQ)
    assert [r.value for r in dead] == [payload for _, payload in bad]
    reasons = [r.headers["dead-letter-reason"] for r in dead if r.headers]
    assert reasons == [b"not_cbor", b"device_mismatch", b"not_json", b"bad_sequence_fields"]
    assert dead[2].headers is not None
    assert dead[2].headers["mqtt-topic"] == b"legacy/dev4/json"
    assert dead[2].key == b"legacy/dev4/json"
    assert [r.value for r in await read_topic(cluster.sc_addr, TOPIC)] == [p for _, p in good]


async def test_spu_outage_keeps_messages_unacknowledged_and_bounded(
    broker: Mosquitto, cluster: LocalCluster
) -> None:
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    config = bridge_config(broker, in_flight=40)
    async with running_bridge(config, cluster.sc_addr) as bridge:
        await publish(broker, stream(10))
        await wait_until(lambda: bridge.stats()["produced"] == 30, what="first records")
        await cluster.kill_spu()
        await publish(broker, stream(300, start=10))
        await wait_until(lambda: bridge.stats()["spu_retries"] > 0, what="retries")
        await asyncio.sleep(1.0)
        assert bridge.stats()["in_flight"] == config.in_flight
        assert bridge.stats()["produced"] == 30
        await cluster.start_spu()
        await wait_until(lambda: bridge.stats()["produced"] == 930, what="catch-up")
        # While catching up, every PUBACK makes mosquitto 2.0.11 release a whole window
        # (it overshoots Receive Maximum); pausing the socket keeps the bound anyway.
        # A few messages more than the limit can arrive in the read that fills it.
        assert config.in_flight <= bridge.stats()["in_flight_peak"] <= config.in_flight + 20
    assert_exactly_once_in_order(await read_topic(cluster.sc_addr, TOPIC), 310)


async def test_broker_restart_loses_and_duplicates_nothing(
    broker: Mosquitto, cluster: LocalCluster
) -> None:
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    async with running_bridge(bridge_config(broker), cluster.sc_addr) as bridge:
        await publish(broker, stream(100))
        await broker.stop(sig=signal.SIGTERM)  # saves the persistent sessions
        await broker.start()
        await publish(broker, stream(100, start=100))
        await wait_until(lambda: bridge.stats()["produced"] == 600, what="all produced")
        assert bridge.stats()["reconnects"] >= 1
    assert_exactly_once_in_order(await read_topic(cluster.sc_addr, TOPIC), 200)


async def test_messages_wait_in_the_broker_while_the_gateway_is_down(
    broker: Mosquitto, cluster: LocalCluster
) -> None:
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    config = bridge_config(broker)
    await subscribe_session(broker, config)
    await publish(broker, stream(150))  # nobody connected under the gateway's client id
    async with running_bridge(config, cluster.sc_addr) as bridge:
        await wait_until(lambda: bridge.stats()["produced"] == 450, what="queued messages")
        # Written is not yet acknowledged: a round that failed after its records were
        # in the log is retried (as duplicates) and acknowledged after that.
        await wait_until(lambda: bridge.stats()["in_flight"] == 0, what="acknowledged")
    async with running_bridge(config, cluster.sc_addr) as bridge:
        await publish(broker, stream(50, start=150))
        await wait_until(lambda: bridge.stats()["produced"] == 150, what="new messages")
        assert bridge.stats()["received"] == 150  # nothing acknowledged came back
    assert_exactly_once_in_order(await read_topic(cluster.sc_addr, TOPIC), 200)


async def test_stop_mid_round_acknowledges_what_is_in_the_log(
    broker: Mosquitto, cluster: LocalCluster
) -> None:
    # A round whose readings are written while its last message is refused (its topic
    # does not exist yet): stopping during the retry backoff must still PUBACK the
    # written part, or the broker would send it all again to the next gateway.
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    rules = (RULES[0], MqttRule(filter="legacy/+/json", topic="later", format=PayloadFormat.JSON))
    config = bridge_config(broker, rules=rules)
    await subscribe_session(broker, config)
    await publish(broker, [*stream(10), ("legacy/dev4/json", b'{"n": 1}')])
    async with running_bridge(config, cluster.sc_addr) as bridge:
        await wait_until(lambda: bridge.stats()["produced"] == 30
                         and bridge.stats()["spu_retries"] > 0, what="a refused round")
    await create_topics(cluster.sc_addr, "later")
    async with running_bridge(config, cluster.sc_addr) as bridge:
        await wait_until(lambda: bridge.stats()["produced"] == 1, what="the refused message")
        await wait_until(lambda: bridge.stats()["in_flight"] == 0, what="acknowledged")
        assert bridge.stats()["received"] == 1  # the readings did not come back
    assert_exactly_once_in_order(await read_topic(cluster.sc_addr, TOPIC), 10)
    assert [r.value for r in await read_topic(cluster.sc_addr, "later")] == [b'{"n": 1}']


async def test_long_spu_outage_drops_the_connection_and_nothing_doubles(
    broker: Mosquitto, cluster: LocalCluster
) -> None:
    # Paused reads stop PINGRESPs too: past the keepalive the connection drops while a
    # round is being retried. Its PUBACKs are lost with it; on the next connection the
    # broker sends the round again (DUP) and the bridge recognises it, even for plain
    # JSON payloads that the SPU cannot deduplicate.
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    config = bridge_config(broker, keepalive_s=1, in_flight=20)
    plain = [(f"legacy/dev{i % 2}/json", f'{{"n": {i}}}'.encode()) for i in range(200)]
    async with running_bridge(config, cluster.sc_addr) as bridge:
        await cluster.kill_spu()
        await publish(broker, plain)
        await wait_until(lambda: bridge.stats()["connected"] == 0, what="keepalive drop",
                         timeout=20)
        await cluster.start_spu()
        await wait_until(lambda: bridge.stats()["produced"] == len(plain), what="catch-up")
        await wait_until(lambda: bridge.stats()["in_flight"] == 0, what="acknowledged")
        stats = bridge.stats()
    assert stats["reconnects"] >= 1
    assert stats["duplicates"] > 0
    records = await read_topic(cluster.sc_addr, TOPIC)
    for device in ("dev0", "dev1"):
        got = [r.value for r in records if r.key == device.encode()]
        assert got == [p for t, p in plain if t == f"legacy/{device}/json"]


async def test_crash_after_the_spu_ack_before_the_pubacks(
    broker: Mosquitto, cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worst moment for a crash: every record is in the log, no PUBACK left. The
    # broker sends everything again to the next gateway; sequenced payloads end as one
    # copy each, plain JSON (no sequence fields) is at-least-once and comes twice.
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    config = bridge_config(broker, in_flight=1000)
    plain = [(f"legacy/dev{i}/json", f'{{"n": {i}}}'.encode()) for i in range(3)]
    with monkeypatch.context() as patch:
        patch.setattr(AckingClient, "ack", lambda self, mid, qos: True)  # PUBACKs lost
        async with running_bridge(config, cluster.sc_addr) as bridge:
            await publish(broker, [*stream(100), *plain])
            await wait_until(lambda: bridge.stats()["produced"] == 303, what="all written")
    async with running_bridge(config, cluster.sc_addr) as bridge:  # a fresh gateway
        await wait_until(lambda: bridge.stats()["received"] == 303, what="redelivery")
        await wait_until(lambda: bridge.stats()["in_flight"] == 0, what="acknowledged")
        stats = bridge.stats()
    assert (stats["duplicates"], stats["produced"]) == (300, 3)
    records = await read_topic(cluster.sc_addr, TOPIC)
    assert_exactly_once_in_order([r for r in records if r.value[:1] != b"{"], 100)
    assert sorted(r.value for r in records if r.value[:1] == b"{") == sorted(
        [p for _, p in plain] * 2
    )


async def test_bound_holds_when_the_broker_resends_its_in_flight_set(
    broker: Mosquitto, cluster: LocalCluster
) -> None:
    # mosquitto counts far more than Receive Maximum as in flight (its 2.0.11
    # overshoot) and resends all of them right after CONNACK, ahead of the SUBACK.
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    config = bridge_config(broker, in_flight=50)
    await subscribe_session(broker, config)
    await publish(broker, stream(500))
    async with running_bridge(config, cluster.sc_addr) as bridge:
        await wait_until(lambda: bridge.stats()["produced"] >= 300, what="part of the backlog")
    async with running_bridge(config, cluster.sc_addr) as bridge:
        await wait_until(lambda: bridge.stats()["produced"] + bridge.stats()["duplicates"]
                         >= bridge.stats()["received"] > 0 and bridge.stats()["in_flight"] == 0
                         and bridge.stats()["connected"] == 1, what="the rest")
        assert bridge.stats()["in_flight_peak"] <= config.in_flight + 20
    assert_exactly_once_in_order(await read_topic(cluster.sc_addr, TOPIC), 500)


async def test_mutual_tls_to_the_broker(tmp_path: Path, cluster: LocalCluster) -> None:
    pki = make_pki(tmp_path / "pki", names=("server", "gateway", "device", "intruder"))
    (ca, _), (server, server_key) = pki["ca"], pki["server"]
    tls_listener = (f"cafile {ca}\ncertfile {server}\nkeyfile {server_key}\n"
                    "require_certificate true\n")
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    async with Mosquitto(tmp_path / "mosquitto", extra_config=tls_listener) as broker:
        device_tls = tls_context(TlsConfig(ca=Path(ca), cert=Path(pki["device"][0]),
                                           key=Path(pki["device"][1])))
        good = bridge_config(broker, tls=TlsConfig(
            ca=Path(ca), cert=Path(pki["gateway"][0]), key=Path(pki["gateway"][1])))
        producer = Producer(cluster.sc_addr)
        bridge = MqttBridge(good, producer=producer, dead_letter_topic=DLQ,
                            tls_context=tls_context(good.tls), backoff_max_s=1.0)
        task = asyncio.create_task(bridge.run())
        try:
            await wait_until(lambda: bridge.stats()["connected"] == 1, what="TLS session")
            async with aiomqtt.Client(broker.host, broker.port, identifier="tls-device",
                                      tls_context=device_tls) as device:
                for seq in range(20):
                    await device.publish("headwater/dev1/temperature",
                                         device_payload("dev1", seq), qos=1)
            await wait_until(lambda: bridge.stats()["produced"] == 20, what="records")
        finally:
            bridge.stop()
            await task
            await producer.close()
        # A certificate from another CA is refused; the bridge keeps retrying (each
        # attempt ends after aiomqtt's 10 s CONNACK timeout: it does not notice the
        # broker closing the connection before CONNACK).
        rogue = bridge_config(broker, client_id="rogue", tls=TlsConfig(
            ca=Path(ca), cert=Path(pki["intruder"][0]), key=Path(pki["intruder"][1])))
        intruder = MqttBridge(rogue, producer=None,  # type: ignore[arg-type]
                              dead_letter_topic=DLQ, tls_context=tls_context(rogue.tls),
                              backoff_max_s=0.2)
        task = asyncio.create_task(intruder.run())
        await wait_until(lambda: intruder.stats()["reconnects"] >= 1, what="a refusal")
        assert intruder.stats()["connected"] == 0
        intruder.stop()
        await task
    values = [cbor2.loads(r.value)["s"] for r in await read_topic(cluster.sc_addr, TOPIC)]
    assert values == list(range(20))


async def test_username_and_password_file(tmp_path: Path, cluster: LocalCluster) -> None:
    passwd = require_binary("mosquitto_passwd")
    accounts = tmp_path / "mosquitto.passwd"
    for user, password in (("gateway", "s3cret"), ("device", "d3vice")):
        create = ["-c"] if not accounts.exists() else []
        subprocess.run([passwd, *create, "-b", str(accounts), user, password], check=True,
                       capture_output=True)
    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cret\n")
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("guess\n")
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    async with Mosquitto(tmp_path / "mosquitto", password_file=accounts) as broker:
        refused = MqttBridge(bridge_config(broker, client_id="gw-wrong", username="gateway",
                                           password_file=wrong),
                             producer=None, dead_letter_topic=DLQ,  # type: ignore[arg-type]
                             backoff_max_s=0.2)
        task = asyncio.create_task(refused.run())
        await wait_until(lambda: refused.stats()["reconnects"] >= 2, what="refusals")
        assert refused.stats()["connected"] == 0
        refused.stop()
        await task
        config = bridge_config(broker, username="gateway", password_file=secret)
        async with running_bridge(config, cluster.sc_addr) as bridge:
            async with aiomqtt.Client(broker.host, broker.port, username="device",
                                      password="d3vice") as device:
                await device.publish("headwater/dev1/temperature", device_payload("dev1", 0),
                                     qos=1)
            await wait_until(lambda: bridge.stats()["produced"] == 1, what="the record")
