"""The gateway's configuration (``gateway.toml``): frozen dataclasses, validated on construction.

Every error names the key that is wrong, as a dotted path from the top of the file
(``mqtt.rules[1].format``), so ``headwater gateway run --check-config`` tells an
operator exactly what to fix. Unknown keys are errors too: a typo must not silently
fall back to a default.

Example::

    sc = "127.0.0.1:9003"          # or site = "kitchen": the site's SC, found on the LAN
    dead_letter_topic = "dead-letters"

    [status]
    listen = "unix:/run/headwater/gateway.sock"   # or "127.0.0.1:9099"

    [[serial]]
    path = "/dev/ttyUSB0"
    baud = 115200
    default_topic = "readings"
    topics = { temperature = "temperature" }

    [mqtt]
    host = "127.0.0.1"
    client_id = "headwater-gateway-pi1"

    [[mqtt.rules]]
    filter = "headwater/+/temperature"
    topic = "temperature"
    format = "cbor"
"""

from __future__ import annotations

import functools
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar

from edge.config import ConfigError, check_file
from edge.discovery.config import DiscoveryConfig
from edge.discovery.spec import parse_sc
from edge.metrics import check_metrics_addr
from edge.net.connection import split_addr_list
from edge.tls import TlsConfig
from edge.tokens import read_token_file
from gateway.mqtt.topics import TopicFilterError, filter_levels, filters_overlap

# Topic names follow Fluvio's rule (a DNS label), so they are safe as directory names.
TOPIC_NAME: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# An MQTT 5 session that never expires, the same promise as a 3.1.1 persistent session.
SESSION_NEVER_EXPIRES: Final = 0xFFFFFFFF
BAUD_RATES: Final = frozenset(
    {1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000,
     576000, 921600, 1000000, 1500000, 2000000, 3000000}
)

_T = TypeVar("_T")


class PayloadFormat(StrEnum):
    CBOR = "cbor"
    JSON = "json"
    RAW = "raw"


class MqttProtocol(StrEnum):
    V5 = "5"
    V311 = "3.1.1"


def _check_topic(key: str, value: str) -> None:
    if not TOPIC_NAME.match(value):
        raise ConfigError(f"{value!r} is not a topic name (a-z, 0-9, '-', 1-63 characters)",
                          key=key)


def _check_address(key: str, value: str, *, any_port: bool = False) -> None:
    host, sep, port = value.rpartition(":")
    lowest = 0 if any_port else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ConfigError(f"{value!r} is not host:port", key=key)


def _check_positive(key: str, value: float, *, maximum: float | None = None) -> None:
    if isinstance(value, bool) or value <= 0 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"must be above 0{bound} (got {value!r})", key=key)


@dataclass(frozen=True, kw_only=True)
class StatusConfig:
    """Where the status endpoint listens, and how often counters are logged."""

    listen: str = "127.0.0.1:9099"
    log_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if self.listen.startswith("unix:"):
            if len(self.listen) == len("unix:"):
                raise ConfigError("unix: needs a socket path", key="listen")
        else:
            _check_address("listen", self.listen, any_port=True)  # 0: any free port
            if self.host not in ("127.0.0.1", "localhost", "::1"):
                # The endpoint has no authentication: it must not face the LAN.
                raise ConfigError(f"must be a loopback address (got {self.host!r})",
                                  key="listen")
        _check_positive("log_interval_s", self.log_interval_s)

    @property
    def unix_path(self) -> Path | None:
        return Path(self.listen[len("unix:"):]) if self.listen.startswith("unix:") else None

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, kw_only=True)
class SerialConfig:
    """One serial port: device path, line speed, device stream → topic, and the topic
    of streams the map does not name."""

    path: str
    default_topic: str
    baud: int = 115200
    topics: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("must not be empty", key="path")
        if self.baud not in BAUD_RATES:
            raise ConfigError(f"{self.baud!r} is not a standard baud rate", key="baud")
        for stream, topic in self.topics.items():
            _check_topic(f"topics.{stream}", topic)
        _check_topic("default_topic", self.default_topic)
        object.__setattr__(self, "topics", MappingProxyType(dict(self.topics)))


@dataclass(frozen=True, kw_only=True)
class MqttRule:
    """Messages whose MQTT topic matches ``filter`` go to ``topic``.

    ``key`` is the 0-based level of the MQTT topic that holds the device id (the
    record key); by default the first ``+`` level, and no key when there is none.
    """

    filter: str
    topic: str
    format: PayloadFormat = PayloadFormat.CBOR
    key: int | None = None

    def __post_init__(self) -> None:
        try:
            levels = filter_levels(self.filter)
        except TopicFilterError as exc:
            raise ConfigError(str(exc), key="filter") from None
        _check_topic("topic", self.topic)
        if not isinstance(self.format, PayloadFormat):
            raise ConfigError("must be one of cbor, json, raw", key="format")
        if self.key is not None:
            if isinstance(self.key, bool) or not isinstance(self.key, int) or self.key < 0:
                raise ConfigError(f"must be a topic level index >= 0 (got {self.key!r})",
                                  key="key")
            open_ended = levels[-1] == "#"
            if self.key >= len(levels) and not open_ended:
                raise ConfigError(f"level {self.key} is past the end of {self.filter!r}",
                                  key="key")

    @functools.cached_property
    def key_level(self) -> int | None:
        """The MQTT topic level that holds the record key, if any."""
        if self.key is not None:
            return self.key
        levels = filter_levels(self.filter)
        return levels.index("+") if "+" in levels else None


@dataclass(frozen=True, kw_only=True)
class MqttConfig:
    """The MQTT broker, the gateway's persistent session on it, and the rules.

    ``in_flight`` bounds the messages the bridge holds unacknowledged; the broker
    keeps the rest. ``max_payload_bytes`` bounds one message (sensor readings are
    small; a bigger one goes to the dead-letter topic, truncated). ``linger_ms`` is
    how long a round of writes waits to fill half of ``in_flight``: fuller batches
    cost the SPU and the gateway less CPU per record (bench/mqtt_bridge.py: SPU
    16.5 us at 5 ms, 10 us at 20 ms), and a reading reaches the log at most that
    much later.
    """

    host: str = "127.0.0.1"
    port: int | None = None
    client_id: str = field(default_factory=lambda: f"headwater-gateway-{socket.gethostname()}")
    username: str | None = None
    password_file: Path | None = None
    protocol: MqttProtocol = MqttProtocol.V5
    keepalive_s: int = 30
    session_expiry_s: int = SESSION_NEVER_EXPIRES
    in_flight: int = 1000
    linger_ms: float = 20.0
    max_payload_bytes: int = 64 * 1024
    tls: TlsConfig | None = None
    rules: tuple[MqttRule, ...] = ()

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("must not be empty", key="host")
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError(f"{self.port!r} is not a TCP port", key="port")
        # MQTT 3.1.1 servers must accept 1-23 characters; most accept more, mosquitto 65535.
        if not self.client_id or len(self.client_id.encode()) > 65535:
            raise ConfigError("must be 1-65535 bytes", key="client_id")
        if self.password_file is not None:
            if self.username is None:
                raise ConfigError("needs username", key="password_file")
            check_file("password_file", self.password_file)
        if not isinstance(self.protocol, MqttProtocol):
            raise ConfigError("must be \"5\" or \"3.1.1\"", key="protocol")
        _check_positive("keepalive_s", self.keepalive_s, maximum=65535)
        if not 0 <= self.session_expiry_s <= SESSION_NEVER_EXPIRES:
            raise ConfigError("must be 0 .. 4294967295", key="session_expiry_s")
        _check_positive("in_flight", self.in_flight, maximum=65535)
        if isinstance(self.linger_ms, bool) or not 0 <= self.linger_ms <= 1000:
            raise ConfigError("must be 0 .. 1000", key="linger_ms")
        # A record must fit one batch (at most 4 MiB) with room for dead-letter headers.
        _check_positive("max_payload_bytes", self.max_payload_bytes, maximum=1024 * 1024)
        if not self.rules:
            raise ConfigError("at least one [[mqtt.rules]] is needed", key="rules")
        self._check_overlaps()

    def _check_overlaps(self) -> None:
        # The broker delivers one copy per matching subscription, so overlapping
        # filters would write every such message twice.
        for i, rule in enumerate(self.rules):
            for j in range(i):
                if filters_overlap(rule.filter, self.rules[j].filter):
                    raise ConfigError(
                        f"{rule.filter!r} overlaps rules[{j}].filter {self.rules[j].filter!r}",
                        key=f"rules[{i}].filter",
                    )

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else (8883 if self.tls else 1883)

    def password(self) -> str | None:
        """The password, read from ``password_file`` (first line, without the newline)."""
        if self.password_file is None:
            return None
        text = self.password_file.read_text(encoding="utf-8")
        return text.splitlines()[0] if text else ""


@dataclass(frozen=True, kw_only=True)
class ProducerConfig:
    """How the shared producer talks to the SPUs."""

    linger_ms: int = 5
    batch_bytes: int = 64 * 1024
    # send_batch retries retriable errors this long before the bridge backs off.
    send_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.linger_ms, bool) or not 0 <= self.linger_ms <= 1000:
            raise ConfigError("must be 0 .. 1000", key="linger_ms")
        _check_positive("batch_bytes", self.batch_bytes, maximum=4 * 1024 * 1024)
        _check_positive("send_timeout_s", self.send_timeout_s)


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """The whole ``gateway.toml``."""

    # The SC's public HOST:PORT, or "mdns" / "mdns:SITE"; empty with ``site`` set:
    # the SC of that site, found on the LAN.
    sc: str
    tls: TlsConfig | None = None
    # ``site`` announces the gateway on the LAN and finds its site's SC and SPUs.
    site: str | None = None
    interfaces: tuple[str, ...] = ()
    ipv6: bool = False
    dead_letter_topic: str = "dead-letters"
    create_topics: bool = False
    status: StatusConfig = field(default_factory=StatusConfig)
    producer: ProducerConfig = field(default_factory=ProducerConfig)
    serial: tuple[SerialConfig, ...] = ()
    mqtt: MqttConfig | None = None
    # HOST:PORT of the Prometheus endpoint (GET /metrics); None: no metrics.
    metrics_addr: str | None = None
    # Read from ``token_file``: the gateway logs in with it (edge/tokens.py).
    token: str | None = None

    def __post_init__(self) -> None:
        check_metrics_addr(self.metrics_addr)
        discovery = DiscoveryConfig(site=self.site, interfaces=self.interfaces, ipv6=self.ipv6)
        if not self.sc and discovery.site:
            object.__setattr__(self, "sc", f"mdns:{discovery.site}")
        try:
            spec = parse_sc(self.sc)
        except ValueError as exc:
            raise ConfigError(str(exc), key="sc") from None
        if spec is None:
            try:
                split_addr_list(self.sc)
            except ValueError as exc:
                raise ConfigError(f"{exc} (HOST:PORT, several SCs as H1:P1,H2:P2)",
                                  key="sc") from None
        _check_topic("dead_letter_topic", self.dead_letter_topic)
        if not self.serial and self.mqtt is None:
            raise ConfigError("nothing to run: configure [[serial]] ports or [mqtt]")
        paths = [port.path for port in self.serial]
        for i, path in enumerate(paths):
            if path in paths[:i]:
                raise ConfigError(f"{path!r} is configured twice", key=f"serial[{i}].path")

    def topics(self) -> tuple[str, ...]:
        """Every topic the gateway writes to, in a stable order."""
        names: list[str] = []
        for port in self.serial:
            names.extend(port.topics.values())
            names.append(port.default_topic)
        if self.mqtt is not None:
            names.extend(rule.topic for rule in self.mqtt.rules)
        names.append(self.dead_letter_topic)
        return tuple(dict.fromkeys(names))


# --- loading from TOML -----------------------------------------------------------


class _Table:
    """A TOML table being read: typed getters, and a check that no key was left over."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self._data = data
        self._path = path
        self._used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def get(self, name: str, kind: type[_T] | tuple[type, ...], default: Any = None) -> Any:
        self._used.add(name)
        if name not in self._data:
            return default
        value = self._data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML integers are Python ints, and bool is an int: refuse true for a number.
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"expected {_kind_names(kinds)}, got a boolean",
                              key=self.key(name))
        if not isinstance(value, kinds):
            raise ConfigError(f"expected {_kind_names(kinds)}, got {type(value).__name__}",
                              key=self.key(name))
        return value

    def path(self, name: str) -> Path | None:
        value = self.get(name, str)
        return Path(value) if value is not None else None

    def table(self, name: str) -> _Table | None:
        value = self.get(name, dict)
        return _Table(value, self.key(name)) if value is not None else None

    def tables(self, name: str) -> list[_Table]:
        value = self.get(name, list, [])
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError("expected a table", key=f"{self.key(name)}[{i}]")
            out.append(_Table(item, f"{self.key(name)}[{i}]"))
        return out

    def build(self, factory: Callable[..., _T], **kwargs: Any) -> _T:
        """Check for unknown keys, then construct, placing errors under this table's path."""
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise ConfigError("unknown key", key=self.key(unknown[0]))
        present = {name: value for name, value in kwargs.items() if value is not None}
        try:
            return factory(**present)
        except ConfigError as exc:
            raise exc.under(self._path) from None


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             dict: "a table", list: "an array"}
    return " or ".join(names.get(kind, kind.__name__) for kind in kinds)


def _tls(table: _Table | None) -> TlsConfig | None:
    if table is None:
        return None
    return table.build(
        TlsConfig, ca=table.path("ca"), cert=table.path("cert"), key=table.path("key"),
        server_name=table.get("server_name", str),
    )


def _serial(table: _Table) -> SerialConfig:
    topics = table.get("topics", dict, {})
    for stream, topic in topics.items():
        if not isinstance(topic, str):
            raise ConfigError("expected a string", key=table.key(f"topics.{stream}"))
    return table.build(
        SerialConfig, path=table.get("path", str, ""), baud=table.get("baud", int),
        topics=dict(topics), default_topic=table.get("default_topic", str, ""),
    )


def _rule(table: _Table) -> MqttRule:
    fmt = table.get("format", str)
    if fmt is not None and fmt not in PayloadFormat.__members__.values():
        raise ConfigError(f"must be one of cbor, json, raw (got {fmt!r})",
                          key=table.key("format"))
    return table.build(
        MqttRule, filter=table.get("filter", str, ""), topic=table.get("topic", str, ""),
        format=PayloadFormat(fmt) if fmt is not None else None, key=table.get("key", int),
    )


def _mqtt(table: _Table | None) -> MqttConfig | None:
    if table is None:
        return None
    protocol = table.get("protocol", (str, int))
    if protocol is not None and str(protocol) not in MqttProtocol.__members__.values():
        raise ConfigError(f"must be \"5\" or \"3.1.1\" (got {protocol!r})",
                          key=table.key("protocol"))
    return table.build(
        MqttConfig,
        host=table.get("host", str), port=table.get("port", int),
        client_id=table.get("client_id", str), username=table.get("username", str),
        password_file=table.path("password_file"),
        protocol=MqttProtocol(str(protocol)) if protocol is not None else None,
        keepalive_s=table.get("keepalive_s", int),
        session_expiry_s=table.get("session_expiry_s", int),
        in_flight=table.get("in_flight", int),
        linger_ms=table.get("linger_ms", (int, float)),
        max_payload_bytes=table.get("max_payload_bytes", int),
        tls=_tls(table.table("tls")),
        rules=tuple(_rule(rule) for rule in table.tables("rules")),
    )


def _token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return read_token_file(Path(path))
    except ValueError as exc:
        raise ConfigError(str(exc), key="token_file") from None


def parse_config(data: Mapping[str, Any]) -> GatewayConfig:
    """Build a validated config from a parsed TOML document."""
    top = _Table(data, "")
    status = top.table("status")
    producer = top.table("producer")
    return top.build(
        GatewayConfig,
        sc=top.get("sc", str, ""),
        tls=_tls(top.table("tls")),
        token=_token(top.get("token_file", str)),
        site=top.get("site", str),
        interfaces=tuple(top.get("interfaces", list, [])),
        ipv6=top.get("ipv6", bool),
        dead_letter_topic=top.get("dead_letter_topic", str),
        create_topics=top.get("create_topics", bool),
        status=status.build(
            StatusConfig, listen=status.get("listen", str),
            log_interval_s=status.get("log_interval_s", (int, float)),
        ) if status else None,
        producer=producer.build(
            ProducerConfig, linger_ms=producer.get("linger_ms", int),
            batch_bytes=producer.get("batch_bytes", int),
            send_timeout_s=producer.get("send_timeout_s", (int, float)),
        ) if producer else None,
        serial=tuple(_serial(port) for port in top.tables("serial")),
        mqtt=_mqtt(top.table("mqtt")),
        metrics_addr=top.get("metrics_addr", str),
    )


def load_config(path: Path) -> GatewayConfig:
    """Read and validate ``gateway.toml``; every problem is a ConfigError."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data)
