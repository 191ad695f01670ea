"""SPU configuration (``headwater run spu --config spu.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config import (
    ConfigError,
    load_toml,
    parse_size,
    private_auth,
    reject_unknown,
    secret_from,
    take,
)
from edge.discovery.config import DiscoveryConfig, check_sc_address
from edge.metrics import check_metrics_addr
from edge.net.connection import split_addr
from edge.net.limits import ServerLimits, limits_from
from edge.protocol.wirezstd import Codec
from edge.secret import ClusterSecret, PrivateAuth
from edge.storage.budget import check_budget
from edge.tls import TlsConfig, tls_from

DURABILITY = ("group", "always", "never")
LOG_LEVELS = ("debug", "info", "warning", "error")


# A mirrored request carries whole stored batches up to this many bytes: well
# inside a frame, big enough that a backlog moves at link speed.
UPLINK_BATCH_BYTES = 1024 * 1024
MAX_UPLINK_BATCH_BYTES = 4 * 1024 * 1024
UPLINK_IN_FLIGHT = 3
MAX_UPLINK_IN_FLIGHT = 16
# A metered link below 1 kB/s cannot carry one request a minute; above 10 GB/s a
# limit is a typo (a bucket of 2.5 GB).
MIN_UPLINK_RATE = 1000
MAX_UPLINK_RATE = 10 * 1000**3
# While a link backs off long, a TCP connect this often notices its return.
PROBE_INTERVAL_S = 2.0


@dataclass(frozen=True, kw_only=True)
class UpstreamConfig:
    """The ``[upstream]`` table: where this edge site mirrors its upstream topics."""

    sc: str
    site: str
    token: str
    max_request_bytes: int = UPLINK_BATCH_BYTES
    # MIRROR_APPENDs in flight per partition: a long or busy link moves several
    # requests' worth per round trip.
    max_in_flight: int = UPLINK_IN_FLIGHT
    # Reconnect attempts back off up to this; a link never gives up.
    max_backoff_s: float = 60.0
    probe_interval_s: float = PROBE_INTERVAL_S
    # zstd on the wire where the cloud speaks it; "none" for a LAN or data that
    # is compressed already.
    compression: Codec = Codec.ZSTD
    # Bytes/s for all uplinks of this SPU together (a metered link); None: unlimited.
    max_bytes_per_s: int | None = None
    # Trust for the cloud's public TLS (and a client certificate if the cloud
    # demands one); with it, every uplink connection is TLS and the token never
    # travels in clear.
    tls: TlsConfig | None = None

    def __post_init__(self) -> None:
        _check_addr("upstream.sc", self.sc)
        if not self.site or not self.token:
            raise ConfigError("upstream.site and upstream.token are required "
                              "(from `headwater site register NAME --export FILE`)")
        if not 0 < self.max_request_bytes <= MAX_UPLINK_BATCH_BYTES:
            raise ConfigError(f"upstream.max_request_bytes must be 1..{MAX_UPLINK_BATCH_BYTES}")
        if not 1 <= self.max_in_flight <= MAX_UPLINK_IN_FLIGHT:
            raise ConfigError(f"upstream.max_in_flight must be 1..{MAX_UPLINK_IN_FLIGHT}")
        if self.max_backoff_s <= 0:
            raise ConfigError("upstream.max_backoff_s must be > 0")
        if not 0 < self.probe_interval_s <= self.max_backoff_s:
            raise ConfigError("upstream.probe_interval_s must be > 0 and <= max_backoff_s")
        if not isinstance(self.compression, Codec):
            raise ConfigError("upstream.compression must be a Codec")
        rate = self.max_bytes_per_s
        if rate is not None and not MIN_UPLINK_RATE <= rate <= MAX_UPLINK_RATE:
            raise ConfigError(f"upstream.max_bytes_per_s must be {MIN_UPLINK_RATE}.."
                              f"{MAX_UPLINK_RATE} (bytes/s; sizes like \"500KiB\" work)")
        if self.tls is not None and self.tls.ca is None:
            raise ConfigError("upstream.tls_ca is required for TLS to the cloud")

    @classmethod
    def from_table(cls, table: object) -> UpstreamConfig:
        if not isinstance(table, dict):
            raise ConfigError("upstream must be a table")
        raw = dict(table)
        rate = raw.pop("max_bytes_per_s", None)
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | str)):
            raise ConfigError("upstream.max_bytes_per_s must be bytes/s (4096 or \"500KiB\")")
        codec = take(raw, "compression", str, Codec.ZSTD)
        if codec not in tuple(Codec):
            raise ConfigError(f"upstream.compression must be one of {', '.join(Codec)}, "
                              f"not {codec!r}")
        cfg = cls(sc=take(raw, "sc", str, ""), site=take(raw, "site", str, ""),
                  token=take(raw, "token", str, ""),
                  max_request_bytes=take(raw, "max_request_bytes", int, UPLINK_BATCH_BYTES),
                  max_in_flight=take(raw, "max_in_flight", int, UPLINK_IN_FLIGHT),
                  max_backoff_s=take(raw, "max_backoff_s", float, 60.0),
                  probe_interval_s=take(raw, "probe_interval_s", float, PROBE_INTERVAL_S),
                  compression=Codec(codec),
                  max_bytes_per_s=None if rate is None else parse_size(rate),
                  tls=_upstream_tls(raw))
        reject_unknown(raw, "upstream")
        return cfg

    @classmethod
    def from_toml(cls, path: Path) -> UpstreamConfig:
        """A file holding an ``[upstream]`` table (what ``site register --export`` writes)."""
        raw = load_toml(path)
        if "upstream" not in raw:
            raise ConfigError(f"{path} has no [upstream] table")
        return cls.from_table(raw["upstream"])


@dataclass(frozen=True, kw_only=True)
class SpuConfig:
    """Everything an SPU process needs; validated at construction."""

    id: int
    data_dir: Path
    public_addr: str = "0.0.0.0:9005"
    private_addr: str = "0.0.0.0:9006"
    advertise_public: str | None = None
    advertise_private: str | None = None
    # HOST:PORT of the SC's private port, or "mdns" / "mdns:SITE" to find it on the
    # LAN; with only ``site`` set, the SC of that site is looked up.
    sc: str = "127.0.0.1:9004"
    rack: str | None = None
    durability: str = "group"
    # Heartbeats carry health and partition status to the SC; 1 s keeps the SC's
    # view fresh while costing a Pi next to nothing.
    heartbeat_interval_s: float = 1.0
    # How often recovery points are checkpointed: bounds the tail scanned at start-up.
    checkpoint_interval_s: float = 5.0
    retention_check_interval_s: float = 60.0
    # A partition neither written nor read for one to two of these closes its files
    # (they reopen on use): open files follow the partitions in use, not all hosted.
    idle_close_s: float = 30.0
    # A follower that has not caught up for this long leaves the ISR (acks=all
    # then stops waiting for it); short, because a Pi cluster is small and a dead
    # follower stalls every acks=all write until it is dropped.
    replica_lag_s: float = 3.0
    # A leader whose event loop stalled this long (SIGSTOP, swap, a stuck SD card)
    # holds acknowledgements until the SC confirms it still leads; half the SC's
    # default 2 s heartbeat timeout, so it stops before a successor can exist.
    pause_s: float = 1.0
    log_level: str = "info"
    tls: TlsConfig | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    # Private ports prove their callers with this secret (or TLS client certificates);
    # insecure_private turns that off, for development only.
    cluster_secret: ClusterSecret | None = None
    insecure_private: bool = False
    upstream: UpstreamConfig | None = None
    # Bytes of record data this SPU may hold over all its partitions (None: the
    # disk's size); topics choose what happens when it is full (budget_policy).
    disk_budget: int | None = None
    # HOST:PORT of the Prometheus endpoint (GET /metrics); None: no metrics.
    metrics_addr: str | None = None
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.id < 2**31:
            raise ConfigError(f"id must be in 0..{2**31 - 1}, not {self.id}")
        for key in ("public_addr", "private_addr"):
            _check_addr(key, getattr(self, key))
        check_sc_address("sc", self.sc)
        for key in ("advertise_public", "advertise_private"):
            if getattr(self, key) is not None:
                _check_addr(key, getattr(self, key))
        if self.durability not in DURABILITY:
            raise ConfigError(f"durability must be one of {', '.join(DURABILITY)}, "
                              f"not {self.durability!r}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        for key in ("heartbeat_interval_s", "checkpoint_interval_s",
                    "retention_check_interval_s", "idle_close_s", "replica_lag_s",
                    "pause_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be > 0")
        private_auth(self.cluster_secret, insecure=self.insecure_private, tls=self.tls)
        check_metrics_addr(self.metrics_addr)
        if self.disk_budget is not None:
            try:
                check_budget("disk_budget", self.disk_budget)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    @property
    def private_auth(self) -> PrivateAuth:
        return private_auth(self.cluster_secret, insecure=self.insecure_private, tls=self.tls)

    @classmethod
    def from_toml(cls, path: Path, **overrides: Any) -> SpuConfig:
        return cls.from_dict(load_toml(path), **overrides)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], **overrides: Any) -> SpuConfig:
        raw = dict(raw)
        if "id" not in raw and "id" not in overrides:
            raise ConfigError("id is required (a unique SPU number, e.g. id = 1)")
        if "data_dir" not in raw and "data_dir" not in overrides:
            raise ConfigError("data_dir is required")
        values: dict[str, Any] = {
            "id": take(raw, "id", int, None),
            "data_dir": Path(take(raw, "data_dir", str, ".")),
            "public_addr": take(raw, "public_addr", str, cls.public_addr),
            "private_addr": take(raw, "private_addr", str, cls.private_addr),
            "advertise_public": take(raw, "advertise_public", str, None),
            "advertise_private": take(raw, "advertise_private", str, None),
            "sc": take(raw, "sc", str, None),
            "rack": take(raw, "rack", str, None),
            "durability": take(raw, "durability", str, cls.durability),
            "heartbeat_interval_s": take(raw, "heartbeat_interval_s", float,
                                         cls.heartbeat_interval_s),
            "checkpoint_interval_s": take(raw, "checkpoint_interval_s", float,
                                          cls.checkpoint_interval_s),
            "retention_check_interval_s": take(raw, "retention_check_interval_s", float,
                                               cls.retention_check_interval_s),
            "idle_close_s": take(raw, "idle_close_s", float, cls.idle_close_s),
            "replica_lag_s": take(raw, "replica_lag_s", float, cls.replica_lag_s),
            "pause_s": take(raw, "pause_s", float, cls.pause_s),
            "log_level": take(raw, "log_level", str, cls.log_level),
            "tls": tls_from(raw),
            "limits": limits_from(raw),
            "cluster_secret": secret_from(raw),
            "insecure_private": take(raw, "insecure_private", bool, False),
            "upstream": (UpstreamConfig.from_table(raw.pop("upstream"))
                         if "upstream" in raw else None),
            "disk_budget": _size_or_none(raw, "disk_budget"),
            "metrics_addr": take(raw, "metrics_addr", str, None),
        }
        discovery = DiscoveryConfig.take_from(raw, site=overrides.pop("site", None))
        reject_unknown(raw, "spu config")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["sc"] is None:
            values["sc"] = f"mdns:{discovery.site}" if discovery.site else cls.sc
        return cls(**values, discovery=discovery)


def _size_or_none(raw: dict[str, Any], key: str) -> int | None:
    value = raw.pop(key, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{key} must be a size (4096 or \"2GiB\")", key=key)
    return parse_size(value)


def _upstream_tls(raw: dict[str, Any]) -> TlsConfig | None:
    """``tls_ca`` (and optionally ``tls_cert`` + ``tls_key``) of ``[upstream]``."""
    paths = {key: take(raw, f"tls_{key}", str, None) for key in ("ca", "cert", "key")}
    if all(v is None for v in paths.values()):
        return None
    if paths["ca"] is None:
        raise ConfigError("upstream.tls_cert/tls_key need upstream.tls_ca (the cloud's CA)")
    try:
        return TlsConfig(ca=Path(paths["ca"]), cert=_path(paths["cert"]),
                         key=_path(paths["key"]))
    except ConfigError as exc:
        # The fields are flat in [upstream]: tls_ca, tls_cert, tls_key.
        raise ConfigError(exc.problem, key=f"upstream.tls_{exc.key}") from None


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _check_addr(key: str, value: str) -> None:
    try:
        split_addr(value)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None


WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def is_wildcard(listen: str, configured: str | None) -> bool:
    """A listener on every address with no advertised address configured: the SC
    link registers it with the local address of its connection to the SC."""
    return configured is None and split_addr(listen)[0] in WILDCARD_HOSTS


def advertised(bound: tuple[str, int], configured: str | None) -> str:
    """The address shown for a listener: the configured one, else the bound one
    (a wildcard bind is shown as loopback; the SC link registers the address of its
    connection instead, see ``is_wildcard``)."""
    if configured:
        return configured
    host, port = bound
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    return f"{host}:{port}"
