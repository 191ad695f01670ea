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
from edge.net.connection import split_addr
from edge.net.limits import ServerLimits, limits_from
from edge.protocol.sc_api import MAX_PRINCIPAL_CHARS, MAX_SUPERUSERS
from edge.secret import ClusterSecret, PrivateAuth
from edge.tls import TlsConfig, tls_from

LOG_LEVELS = ("debug", "info", "warning", "error")


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
