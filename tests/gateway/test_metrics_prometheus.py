"""A real Prometheus server (the Debian package) scrapes an SC, an SPU and an MQTT
gateway; the test asks its HTTP API for series and checks they move when records
flow and when a partition goes offline."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mqtt_helpers import DLQ, TOPIC, GatewayProcess, create_topics, device_payload
from support import require

from edge.client import Acks, Consumer, Offset, Producer
from edge.testing import LocalCluster, free_port
from gateway.mqtt.testing import Mosquitto

pytestmark = pytest.mark.slow


class Prometheus:
    def __init__(self, tmp: Path, targets: dict[str, str]) -> None:
        binary = shutil.which("prometheus")
        require(binary is not None, "prometheus (Debian package prometheus) is not installed")
        assert binary is not None
        self.port = free_port()
        jobs = "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
                       for job, addr in targets.items())
        config = tmp / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          f"scrape_configs:\n{jobs}")
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def value(self, expr: str) -> float | None:
        try:
            rows = await asyncio.to_thread(self.query, expr)
        except OSError:
            return None  # not listening yet
        return float(rows[0]["value"][1]) if rows else None

    async def until(self, expr: str, check: Any, timeout: float = 30.0) -> float:
        async with asyncio.timeout(timeout):
            while True:
                value = await self.value(expr)
                if value is not None and check(value):
                    return value
                await asyncio.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[LocalCluster, str, str]]:
    sc_metrics, spu_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    c = LocalCluster(tmp_path / "cluster", sc_settings={"metrics_addr": sc_metrics},
                     spu_settings={"metrics_addr": spu_metrics})
    await c.start()
    try:
        yield c, sc_metrics, spu_metrics
    finally:
        await c.stop()


async def test_prometheus_sees_records_flow_and_a_partition_go_offline(
        cluster: tuple[LocalCluster, str, str], broker: Mosquitto, tmp_path: Path) -> None:
    c, sc_metrics, spu_metrics = cluster
    await create_topics(c.sc_addr, TOPIC, DLQ)
    gateway_metrics = f"127.0.0.1:{free_port()}"
    config = tmp_path / "gateway.toml"
    config.write_text(f'sc = "{c.sc_addr}"\ndead_letter_topic = "{DLQ}"\n'
                      f'metrics_addr = "{gateway_metrics}"\n\n'
                      f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
                      f'client_id = "metrics-gw"\n\n[[mqtt.rules]]\n'
                      f'filter = "headwater/+/temperature"\ntopic = "{TOPIC}"\nformat = "cbor"\n')
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    gateway.start()
    prom = Prometheus(tmp_path, {"sc": sc_metrics, "spu": spu_metrics,
                                 "gateway": gateway_metrics})
    try:
        await prom.until('count(up == 1)', lambda v: v == 3)
        async with Producer(c.sc_addr, acks=Acks.ALL) as p:
            for i in range(200):
                await p.send(TOPIC, b"r%d" % i)
            await p.flush()
        async with aiomqtt.Client(broker.host, broker.port, identifier="metrics-dev") as dev:
            for seq in range(50):
                await dev.publish("headwater/dev1/temperature", device_payload("dev1", seq),
                                  qos=1)
        # Records flowing: the SPU's high watermark, its produce requests, fsyncs, bytes,
        # and the gateway's count of readings produced.
        await prom.until(f'sum(headwater_partition_high_watermark{{topic="{TOPIC}"}})',
                         lambda v: v == 250)
        await prom.until('sum(headwater_requests_total{job="spu",api="PRODUCE",code="0"})',
                         lambda v: v >= 1)
        await prom.until('sum(headwater_fsync_duration_seconds_count{job="spu"})',
                         lambda v: v >= 1)
        await prom.until('sum(headwater_listener_bytes_in_total{job="spu"})',
                         lambda v: v > 200 * 2)
        await prom.until('sum(headwater_gateway_events_total{job="gateway"})',
                         lambda v: v >= 50)
        # A consumer group that processed 100 of the 250 records lags by 150.
        async with Consumer(c.sc_addr, TOPIC, group="dashboard", offset=Offset.beginning(),
                            session_timeout_s=3) as group, asyncio.timeout(30):
            handed = 0
            async for _ in group:
                handed += 1
                if handed == 100:
                    break
            assert await group.commit() == {0: 100}
            await prom.until('headwater_consumer_group_members{group="dashboard"}',
                             lambda v: v == 1)
        labels = f'group="dashboard",topic="{TOPIC}",partition="0"'
        assert await prom.until(f"headwater_consumer_group_committed_offset{{{labels}}}",
                                lambda v: v == 100) == 100
        assert await prom.until(f"headwater_consumer_group_lag_records{{{labels}}}",
                                lambda v: v == 150) == 150
        assert await prom.value("headwater_partitions_offline") == 0
        assert await prom.value('headwater_spus{state="online"}') == 1
        # A partition goes offline: its only SPU dies; the SC says so.
        await c.kill_spu(1)
        await prom.until("headwater_partitions_offline", lambda v: v == 2)  # TOPIC and DLQ
        assert await prom.until('headwater_spus{state="offline"}', lambda v: v == 1) == 1
        await c.start_spu(1)
        await prom.until("headwater_partitions_offline", lambda v: v == 0)
    finally:
        prom.stop()
        gateway.kill()
