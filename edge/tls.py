"""TLS settings, and contexts for listeners and clients built from them.

Every listener and client takes an optional ``ssl.SSLContext``; this module
builds them from file paths (``TlsConfig``, the one TLS configuration of daemons,
gateway and CLI). Mutual TLS (client certificates) is switched on with
``verify_client``; the certificate's subject names the principal. On the private
ports that principal is an SPU id (:func:`spu_ids_named`).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import ConfigError, check_file, reject_unknown, take


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """Paths of our certificate, key and trusted CA bundle.

    ``verify_client`` (listeners) demands client certificates that chain to ``ca``;
    ``server_name`` (clients) is the name expected in the server's certificate when
    it is not the host dialled. Errors are ConfigErrors naming the field.
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    verify_client: bool = False
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("cert and key must be given together",
                              key="cert" if self.cert is None else "key")
        if self.verify_client and self.ca is None:
            raise ConfigError("needs ca (the CA client certificates chain to)",
                              key="verify_client")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None:
                check_file(name, Path(path))
        if self.server_name is not None and not self.server_name:
            raise ConfigError("must not be empty", key="server_name")


def tls_from(raw: dict[str, Any]) -> TlsConfig | None:
    """The optional ``[tls]`` table of a daemon's config."""
    table = raw.pop("tls", None)
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError("tls must be a table")
    table = dict(table)
    cert, key, ca = (take(table, name, str, None) for name in ("cert", "key", "ca"))
    try:
        cfg = TlsConfig(cert=_path(cert), key=_path(key), ca=_path(ca),
                        verify_client=take(table, "verify_client", bool, False))
    except ConfigError as exc:
        raise exc.under("tls") from None
    reject_unknown(table, "tls")
    return cfg


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """Context for a listener: our certificate, optionally demanding client certificates."""
    if cfg.cert is None or cfg.key is None:
        raise ConfigError("a listener needs cert and key", key="tls")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    if cfg.ca is not None:
        ctx.load_verify_locations(str(cfg.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if cfg.verify_client else ssl.CERT_NONE
    return ctx


def client_context(cfg: TlsConfig, *, check_hostname: bool = True) -> ssl.SSLContext:
    """Context for a client: trust ``ca``, present our certificate when we have one."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.ca is not None:
        ctx.load_verify_locations(str(cfg.ca))
    if cfg.cert is not None and cfg.key is not None:
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    ctx.check_hostname = check_hostname
    return ctx


_SPU_NAME = re.compile(r"spu-(0|[1-9][0-9]{0,9})")


def spu_ids_named(cert: dict[str, Any] | None) -> set[int]:
    """SPU ids a verified peer certificate names: a common name ``spu-N``, or a DNS
    subject alternative name ``spu-N`` or ``spu-N.<domain>`` (``spu-3.headwater``)."""
    if not cert:
        return set()
    names = [str(value) for rdn in cert.get("subject", ()) for key, value in rdn
             if key == "commonName"]
    names += [str(value).split(".", 1)[0] for kind, value in cert.get("subjectAltName", ())
              if kind == "DNS"]
    return {int(m.group(1)) for name in names if (m := _SPU_NAME.fullmatch(name))}
