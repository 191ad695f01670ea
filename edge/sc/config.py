"""SC configuration (``headwater run sc --config sc.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config import (
    ConfigError,
    load_toml,
    private_auth,
    reject_unknown,
    secret_from,
    take,
)
from edge.discovery.config import DiscoveryConfig
from edge.metrics import check_metrics_addr
from edge.net.connection import split_addr, split_addr_list
from edge.net.limits import ServerLimits, limits_from
from edge.protocol.sc_api import MAX_PRINCIPAL_CHARS, MAX_SUPERUSERS
from edge.secret import ClusterSecret, PrivateAuth
from edge.tls import TlsConfig, tls_from

LOG_LEVELS = ("debug", "info", "warning", "error")
ETCD_SCHEME = "etcd://"
_PREFIX_CHARS = 200


@dataclass(frozen=True, kw_only=True)
class EtcdSettings:
    """``metadata = "etcd://h1:2379,h2:2379"`` and the ``[etcd]`` table: the etcd
    cluster several SCs share (one active, chosen by an election on ``prefix``)."""

    endpoints: tuple[str, ...]
    prefix: str = "/headwater"
    # The election lease: an active SC that stops renewing it is replaced this long
    # after its last renewal.
    ttl_s: int = 2
    timeout_s: float = 2.0
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.ttl_s <= 60:
            raise ConfigError("must be 1..60 seconds", key="etcd.ttl_s")
        if not 0 < self.timeout_s <= 60:
            raise ConfigError("must be above 0 and at most 60 seconds", key="etcd.timeout_s")
        if (not self.prefix.startswith("/") or len(self.prefix) > _PREFIX_CHARS
                or not self.prefix.isprintable() or self.prefix.endswith("/")):
            raise ConfigError(f"must start with / and not end with it, 1..{_PREFIX_CHARS} "
                              "printable characters", key="etcd.prefix")
        if (self.username is None) != (self.password_file is None):
            raise ConfigError("username and password_file go together", key="etcd.username")

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {self.password_file}: {exc}",
                              key="etcd.password_file") from None


def parse_metadata(value: str | None, table: Any) -> EtcdSettings | None:
    """``metadata`` (None or ``"sqlite"``: the embedded default) and ``[etcd]``."""
    if value is None or value == "sqlite":
        if table is not None:
            raise ConfigError('needs metadata = "etcd://HOST:PORT,..."', key="etcd")
        return None
    if not value.startswith(ETCD_SCHEME):
        raise ConfigError(f'must be "sqlite" or "etcd://HOST:PORT,...", not {value!r}',
                          key="metadata")
    try:
        endpoints = split_addr_list(value[len(ETCD_SCHEME):])
    except ValueError as exc:
        raise ConfigError(str(exc), key="metadata") from None
    if not isinstance(table, dict | None):
        raise ConfigError("must be a table", key="etcd")
    raw = dict(table or {})
    password = take(raw, "password_file", str, None)
    tls = tls_from({"tls": t} if (t := {k: raw.pop(k) for k in ("ca", "cert", "key")
                                         if k in raw}) else {})
    settings = EtcdSettings(
        endpoints=tuple(endpoints), prefix=take(raw, "prefix", str, EtcdSettings.prefix),
        ttl_s=take(raw, "ttl_s", int, EtcdSettings.ttl_s),
        timeout_s=take(raw, "timeout_s", float, EtcdSettings.timeout_s), tls=tls,
        username=take(raw, "username", str, None),
        password_file=None if password is None else Path(password))
    reject_unknown(raw, "[etcd]")
    return settings


@dataclass(frozen=True, kw_only=True)
class ScConfig:
    """Everything an SC process needs; validated at construction."""

    data_dir: Path
    public_addr: str = "0.0.0.0:9003"
    private_addr: str = "0.0.0.0:9004"
    # An SPU silent this long is offline; 2 s is five missed 1 s heartbeats'
    # worth of slack minus jitter, and short enough for fast failover.
    heartbeat_timeout_s: float = 2.0
    log_level: str = "info"
    tls: TlsConfig | None = None
    # ``site = "NAME"``: announce this SC on the LAN (mDNS) for that site.
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    limits: ServerLimits = field(default_factory=ServerLimits)
    # Private ports prove their callers with this secret (or TLS client certificates);
    # insecure_private turns that off, for development only.
    cluster_secret: ClusterSecret | None = None
    insecure_private: bool = False
    # HOST:PORT of the Prometheus endpoint (GET /metrics); None: no metrics.
    metrics_addr: str | None = None
    # Access control (edge.acl): off by default; on, everything no ACL allows is
    # denied, except to the superusers (client certificate common names).
    authorization: bool = False
    superusers: tuple[str, ...] = ()
    # Where the metadata lives: None, SQLite in data_dir (the default); or an etcd
    # cluster shared by several SCs (edge/sc/ha.py).
    etcd: EtcdSettings | None = None

    def __post_init__(self) -> None:
        for key in ("public_addr", "private_addr"):
            try:
                split_addr(getattr(self, key))
            except ValueError as exc:
                raise ConfigError(str(exc), key=key) from None
        if self.heartbeat_timeout_s <= 0:
            raise ConfigError("heartbeat_timeout_s must be > 0")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        private_auth(self.cluster_secret, insecure=self.insecure_private, tls=self.tls)
        check_metrics_addr(self.metrics_addr)

    @property
    def private_auth(self) -> PrivateAuth:
        return private_auth(self.cluster_secret, insecure=self.insecure_private, tls=self.tls)

    @classmethod
    def from_toml(cls, path: Path, **overrides: Any) -> ScConfig:
        return cls.from_dict(load_toml(path), **overrides)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], **overrides: Any) -> ScConfig:
        raw = dict(raw)
        if "data_dir" not in raw and "data_dir" not in overrides:
            raise ConfigError("data_dir is required")
        values: dict[str, Any] = {
            "data_dir": Path(take(raw, "data_dir", str, ".")),
            "public_addr": take(raw, "public_addr", str, cls.public_addr),
            "private_addr": take(raw, "private_addr", str, cls.private_addr),
            "heartbeat_timeout_s": take(raw, "heartbeat_timeout_s", float,
                                        cls.heartbeat_timeout_s),
            "log_level": take(raw, "log_level", str, cls.log_level),
            "tls": tls_from(raw),
            "limits": limits_from(raw),
            "cluster_secret": secret_from(raw),
            "insecure_private": take(raw, "insecure_private", bool, False),
            "metrics_addr": take(raw, "metrics_addr", str, None),
            "authorization": take(raw, "authorization", bool, False),
            "superusers": _names(raw, "superusers"),
            "etcd": parse_metadata(take(raw, "metadata", str, None), raw.pop("etcd", None)),
        }
        discovery = DiscoveryConfig.take_from(raw, site=overrides.pop("site", None))
        reject_unknown(raw, "sc config")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values, discovery=discovery)


def _names(raw: dict[str, Any], key: str) -> tuple[str, ...]:
    value = raw.pop(key, [])
    # The bounds of the assignment push that carries them to the SPUs (sc_api).
    if (not isinstance(value, list) or len(value) > MAX_SUPERUSERS
            or not all(isinstance(v, str) and 0 < len(v) <= MAX_PRINCIPAL_CHARS
                       and v.isprintable() for v in value)):
        raise ConfigError(f"must be a list of at most {MAX_SUPERUSERS} principal names "
                          f"(certificate common names, 1..{MAX_PRINCIPAL_CHARS} printable "
                          "characters)", key=key)
    return tuple(value)
