"""Runs every configured bridge in one process: one asyncio TaskGroup, one shared Producer.

``Gateway(config).run()`` is what ``headwater gateway run`` does, and what a Python
program can do the same way. It keeps running while the SC, the SPU or the broker
are away (the bridges back off and keep data unacknowledged at its source), logs
the counters periodically, serves them on the status endpoint, and on SIGTERM or
SIGINT stops the bridges cleanly: the MQTT bridge finishes and acknowledges the
round it is writing and leaves the rest queued in the broker; serial devices keep
what the gateway has not acknowledged and send it again to the next gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from edge import sdnotify
from edge import tls as edge_tls
from edge.client import Admin, Producer
from edge.client.cluster import Backoff
from edge.protocol.errors import HeadwaterError, TopicExists
from edge.tls import TlsConfig, client_context
from gateway.config import GatewayConfig
from gateway.discovery import GatewayDiscovery
from gateway.mqtt.bridge import MqttBridge
from gateway.status import STATUS_VERSION, StatusServer

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from edge.metrics import Metrics

log = logging.getLogger(__name__)

# Time the bridges get after SIGTERM to finish their round; systemd's default
# TimeoutStopSec is 90 s, so this stays well inside it.
SHUTDOWN_GRACE_S: Final = 10.0


class Bridge(Protocol):
    async def run(self) -> None: ...

    def stats(self) -> dict[str, int]: ...


@dataclass
class _Running:
    name: str
    kind: str
    bridge: Bridge
    stop: Callable[[], None] | None = None
    task: asyncio.Task[None] | None = None

    def request_stop(self) -> None:
        if self.stop is not None:
            self.stop()
        elif self.task is not None:
            self.task.cancel()


def tls_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    """A client TLS context from the config (None: plain TCP); ``tls.server_name``
    goes to the connection as ``server_hostname``, not into the context."""
    return client_context(tls) if tls is not None else None


class Gateway:
    """The gateway process: ``await Gateway(config).run()`` until ``stop()`` or a signal."""

    def __init__(self, config: GatewayConfig, *, shutdown_grace_s: float = SHUTDOWN_GRACE_S):
        self.config = config
        self._grace = shutdown_grace_s
        self._stop = asyncio.Event()
        self._started = time.monotonic()
        self._bridges: list[_Running] = []
        self.status_address: str | None = None
        self.discovery = GatewayDiscovery(config)

    def stop(self) -> None:
        """Begin a clean shutdown (what SIGTERM and SIGINT do)."""
        self._stop.set()

    def snapshot(self) -> dict[str, Any]:
        """Counters of every bridge, as served on the status endpoint."""
        bridges: dict[str, Any] = {}
        for running in self._bridges:
            per_port = getattr(running.bridge, "port_stats", None)
            if callable(per_port):
                for port, counters in per_port().items():
                    bridges[f"{running.name}:{port}"] = {"kind": running.kind,
                                                         "counters": dict(counters)}
            else:
                bridges[running.name] = {"kind": running.kind, "counters": running.bridge.stats()}
        return {
            "version": STATUS_VERSION, "pid": os.getpid(), "sc": self.config.sc,
            "uptime_s": round(time.monotonic() - self._started, 1), "bridges": bridges,
        }

    async def run(self, *, handle_signals: bool = True) -> None:
        """Run until stopped; raises only for what no retry can cure (a bug, a bad port)."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
        if handle_signals:  # SIGHUP: load the TLS certificates again (edge.tls)
            loop.add_signal_handler(signal.SIGHUP, edge_tls.reload_certificates)
        watcher = asyncio.create_task(edge_tls.watch(), name="tls-watch")
        tls = self.config.tls
        # Not entered with ``async with``: that connects to the SC at once, and the
        # gateway must start (and keep its data at the source) while the SC is away.
        producer = Producer(
            self.config.sc, linger_ms=self.config.producer.linger_ms,
            batch_bytes=self.config.producer.batch_bytes, ssl=tls_context(tls),
            server_hostname=tls.server_name if tls else None, token=self.config.token,
        )
        try:
            self._bridges = self._build(producer)
            await self._serve()
        finally:
            watcher.cancel()
            with contextlib.suppress(HeadwaterError, TimeoutError):
                async with asyncio.timeout(self._grace):
                    await producer.close()
            for sig in (*signals, *((signal.SIGHUP,) if handle_signals else ())):
                loop.remove_signal_handler(sig)
            log.info("gateway stopped")

    def _build(self, producer: Producer) -> list[_Running]:
        bridges: list[_Running] = []
        if self.config.serial:
            # Imported here: a gateway with only MQTT must not need the serial stack.
            from gateway.serial.bridge import SerialBridge, SerialPortConfig

            ports = [
                SerialPortConfig(path=p.path, baudrate=p.baud, topic_map=dict(p.topics),
                                 default_topic=p.default_topic)
                for p in self.config.serial
            ]
            bridges.append(_Running("serial", "serial", SerialBridge(ports=ports,
                                                                     producer=producer)))
        mqtt = self.config.mqtt
        if mqtt is not None:
            bridge = MqttBridge(
                mqtt, producer=producer, dead_letter_topic=self.config.dead_letter_topic,
                max_batch_bytes=self.config.producer.batch_bytes,
                send_timeout_s=self.config.producer.send_timeout_s,
                tls_context=tls_context(mqtt.tls),
            )
            bridges.append(_Running("mqtt", "mqtt", bridge, stop=bridge.stop))
        return bridges

    async def _serve(self) -> None:
        await self.discovery.start()
        metrics = await self._start_metrics()
        try:
            await self._serve_bridges()
        finally:
            if metrics is not None:
                await metrics.close()
            await self.discovery.stop()

    async def _start_metrics(self) -> Metrics | None:
        """Prometheus metrics of the bridges (serial NAKs, MQTT dead letters, ...)."""
        if self.config.metrics_addr is None:
            return None
        from edge.metrics import Metrics, counter

        def collect() -> Iterator[Metric]:
            rows = [([name, b["kind"], event], value)
                    for name, b in self.snapshot()["bridges"].items()
                    for event, value in sorted(b["counters"].items())
                    if isinstance(value, int | float) and not isinstance(value, bool)]
            yield counter("headwater_gateway_events", "What each bridge counts: readings "
                          "produced, duplicates, NAKs, bad frames, dead letters.",
                          ["bridge", "kind", "event"], rows)

        metrics = Metrics("gateway", self.config.site or self.config.sc)
        metrics.add_source(collect)
        await metrics.start(self.config.metrics_addr)
        return metrics

    async def _serve_bridges(self) -> None:
        async with StatusServer(self.config.status, self.snapshot) as status, \
                asyncio.TaskGroup() as tg:
            self.status_address = status.address
            for running in self._bridges:
                running.task = tg.create_task(running.bridge.run(), name=f"bridge-{running.name}")
            helpers = [tg.create_task(self._log_counters(), name="gateway-counters")]
            if self.config.create_topics:
                helpers.append(tg.create_task(self._create_topics(), name="gateway-topics"))
            log.info("gateway running: %s; status on %s",
                     ", ".join(r.name for r in self._bridges), status.address)
            sdnotify.ready(f"bridging {', '.join(r.name for r in self._bridges)}")
            await self._stop.wait()
            sdnotify.stopping()
            log.info("stopping: bridges finish their round (at most %.0f s)", self._grace)
            for running in self._bridges:
                running.request_stop()
            tasks = [r.task for r in self._bridges if r.task is not None]
            _, late = await asyncio.wait(tasks, timeout=self._grace)
            for task in [*late, *helpers]:
                task.cancel()
        self._log_once_now()

    async def _log_counters(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(self.config.status.log_interval_s)
            line = self._counter_line()
            if line != last:  # an idle gateway does not write the same line all day
                log.info("counters: %s", line)
                last = line

    def _log_once_now(self) -> None:
        log.info("counters: %s", self._counter_line())

    def _counter_line(self) -> str:
        parts = []
        for name, bridge in self.snapshot()["bridges"].items():
            counters = " ".join(f"{k}={v}" for k, v in sorted(bridge["counters"].items()))
            parts.append(f"[{name}] {counters}")
        return " ".join(parts)

    async def _create_topics(self) -> None:
        """Create the topics the gateway writes to, once the SC answers."""
        backoff = Backoff(initial=0.5, maximum=30.0)
        tls = self.config.tls
        while True:
            try:
                local = await self.discovery.local_spu()
                async with Admin(self.config.sc, ssl=tls_context(tls),
                                 server_hostname=tls.server_name if tls else None,
                                 token=self.config.token) as admin:
                    for topic in self.config.topics():
                        with contextlib.suppress(TopicExists):
                            await admin.create_topic(topic, partitions=1, replication=1,
                                                     prefer_leader=local)
                            log.info("created topic %s%s", topic, "" if local is None
                                     else f" (led by SPU {local} on this host)")
            except (HeadwaterError, OSError) as exc:
                log.debug("creating topics: %s (retrying)", exc)
                await backoff.sleep()
            else:
                return
