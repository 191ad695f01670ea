"""Prometheus metrics of one daemon: a registry of its own, served over HTTP.

Off unless ``metrics_addr`` is set. Two kinds of series:

* updated on the request path: requests answered per listener, API and error
  code, their latency, fsync latency (one dictionary lookup and one
  observation each);
* read from the daemon's live state at scrape time by *sources*: partitions,
  listeners, the uplink, the disk budget, the SC's view of the cluster. A
  source is a function returning metric families; nothing is sampled between
  scrapes, so an idle daemon pays nothing.

The HTTP side is a few lines on asyncio (``GET /metrics``), in the daemon's own
loop: a scrape reads live state without locks or threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edge.net.connection import split_addr

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

# Request latency: a produce acknowledged after its group commit takes a few ms,
# a long-poll fetch up to its wait.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0, 30.0)
FSYNC_BUCKETS: Final = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                        0.5, 1.0, 2.5)
# A scrape request larger than this, or slower than the timeout, is dropped.
MAX_REQUEST_BYTES: Final = 8192
REQUEST_TIMEOUT_S: Final = 5.0

Source = Callable[[], Iterable["Metric"]]


class Metrics:
    """The registry and listener of one daemon (``role``: sc, spu, gateway)."""

    def __init__(self, role: str, node: str, *, data_dir: Path | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        # RSS, CPU seconds, open files: the process health a heartbeat also carries.
        ProcessCollector(registry=self.registry)
        info = Gauge("headwater_info", "Always 1: the daemon's role, node and version.",
                     ["role", "node", "version"], registry=self.registry)
        from edge import __version__

        info.labels(role, node, __version__).set(1)
        self._requests = Counter(
            "headwater_requests", "Requests answered, by listener, API and error code "
            "(0: answered without error).", ["listener", "api", "code"],
            registry=self.registry)
        self._latency = Histogram(
            "headwater_request_duration_seconds", "From a request's arrival to its answer.",
            ["listener", "api"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.fsync = Histogram("headwater_fsync_duration_seconds",
                               "One group commit: fsync of a partition's log and index.",
                               buckets=FSYNC_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._server: asyncio.Server | None = None
        self.address = ""
        if data_dir is not None:
            self.add_source(lambda: _disk(data_dir))
        self.add_source(_certificates)

    def observe(self, listener: str, api: str, seconds: float, code: int) -> None:
        """One answered request (the listeners call this)."""
        key = (listener, api, code)
        pair = self._children.get(key)
        if pair is None:
            pair = (self._requests.labels(listener, api, str(code)),
                    self._latency.labels(listener, api))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def add_source(self, source: Source) -> None:
        """Series read from live state at each scrape."""
        self.registry.register(_SourceCollector(source))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    async def start(self, addr: str) -> str:
        """Listen on ``addr`` (HOST:PORT; port 0 picks one); returns the bound address."""
        host, port = split_addr(addr)
        self._server = await asyncio.start_server(self._handle, host, port,
                                                  limit=MAX_REQUEST_BYTES)
        bound = self._server.sockets[0].getsockname()
        self.address = f"{bound[0]}:{bound[1]}"
        log.info("metrics on http://%s/metrics", self.address)
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = _request_line(head)
            if method != "GET":
                _answer(writer, "405 Method Not Allowed", b"GET only\n")
            elif path.split("?", 1)[0] in ("/metrics", "/"):
                from prometheus_client import CONTENT_TYPE_LATEST

                _answer(writer, "200 OK", self.render(), CONTENT_TYPE_LATEST)
            else:
                _answer(writer, "404 Not Found", b"metrics are at /metrics\n")
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError):
            pass  # a scraper that went away or sent garbage: nothing to answer
        finally:
            writer.close()


class _SourceCollector:
    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self.source()
        except Exception:  # a scrape must never take the daemon down
            log.exception("a metrics source failed; its series are left out of this scrape")


def _request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3:
        raise ValueError(f"not an HTTP request line: {line[:80]!r}")
    return parts[0], parts[1]


def _answer(writer: asyncio.StreamWriter, status: str, body: bytes,
            content_type: str = "text/plain; charset=utf-8") -> None:
    writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


def _disk(data_dir: Path) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    try:
        usage = shutil.disk_usage(data_dir)
    except OSError:
        return
    free = GaugeMetricFamily("headwater_disk_free_bytes",
                             "Free bytes on the file system of the data directory.")
    free.add_metric([], usage.free)
    total = GaugeMetricFamily("headwater_disk_total_bytes",
                              "Size of the file system of the data directory.")
    total.add_metric([], usage.total)
    yield free
    yield total


def _certificates() -> Iterator[Metric]:
    from edge.tls import served_certificates

    served = served_certificates()
    if served:
        yield gauge("headwater_tls_certificate_expiry_timestamp_seconds",
                    "When each certificate this daemon presents expires (Unix time).",
                    ["cert"], [([str(path)], end) for path, end in sorted(served.items())])


def listener_families(listeners: dict[str, dict[str, int]]) -> Iterator[Metric]:
    """A daemon's listeners (``Server.status()`` by name): open connections and the
    counters of what they refused, timed out and could not parse."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    open_ = GaugeMetricFamily("headwater_listener_connections",
                              "Connections open now.", labels=["listener"])
    counters = {
        "connections": "Connections accepted.",
        "refused": "Connections refused at the connection limit.",
        "idle_closed": "Connections closed for being idle.",
        "frame_timeouts": "Connections cut halfway through a frame (slow or stuck senders).",
        "write_timeouts": "Connections cut because they did not read their answers.",
        "long_polls_refused": "Long polls refused at the per-connection limit.",
        "protocol_errors": "Connections closed for malformed frames (bad input).",
        "request_errors": "Requests answered with an error.",
        "unexpected_errors": "Requests that met an error no handler expected.",
        "bytes_in": "Bytes received.",
        "bytes_out": "Bytes sent.",
    }
    families = {k: CounterMetricFamily(f"headwater_listener_{k}", text, labels=["listener"])
                for k, text in counters.items()}
    for name, st in listeners.items():
        open_.add_metric([name], st.get("open", 0))
        for key, family in families.items():
            family.add_metric([name], st.get(key, 0))
    yield open_
    yield from families.values()


Rows = Iterable[tuple[list[str], float]]


def gauge(name: str, text: str, labels: list[str], rows: Rows) -> Metric:
    """A gauge family with one sample per row (label values, value)."""
    from prometheus_client.core import GaugeMetricFamily

    return _filled(GaugeMetricFamily(name, text, labels=labels), rows)


def counter(name: str, text: str, labels: list[str], rows: Rows) -> Metric:
    """A counter family (``name`` gets ``_total``) with one sample per row."""
    from prometheus_client.core import CounterMetricFamily

    return _filled(CounterMetricFamily(name, text, labels=labels), rows)


def _filled(family: Any, rows: Rows) -> Metric:
    for values, value in rows:
        family.add_metric(values, value)
    result: Metric = family
    return result


def check_metrics_addr(addr: str | None) -> None:
    """``metrics_addr`` is HOST:PORT (checked where a config enters)."""
    if addr is None:
        return
    from edge.config import ConfigError

    try:
        split_addr(addr)
    except ValueError as exc:
        raise ConfigError(str(exc), key="metrics_addr") from None


async def start_metrics(role: str, node: str, addr: str, *, data_dir: Path,
                        listeners: Iterable[Any], source: Source) -> Metrics:
    """A daemon's metrics: listening on ``addr``, told of every request its
    ``listeners`` (FrameServers) answer, ``source`` read at each scrape."""
    metrics = Metrics(role, node, data_dir=data_dir)
    for server in listeners:
        server.observe = metrics.observe
    metrics.add_source(source)
    await metrics.start(addr)
    return metrics
