"""TLS contexts for listeners and clients.

Every listener and client takes an optional ``ssl.SSLContext``; this module
builds them from file paths. Mutual TLS (client certificates) is switched on
with ``verify_client``; the certificate's subject names the principal. On the
private ports that principal is an SPU id (:func:`spu_ids_named`).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """Paths of a node's certificate, key and trusted CA bundle."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    verify_client: bool = False

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls: cert and key must be given together")
        if self.verify_client and self.ca is None:
            raise ValueError("tls: verify_client needs ca (the CA client certificates chain to)")
        for name in ("cert", "key", "ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"tls: {name} file {path} does not exist")


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """Context for a listener: our certificate, optionally demanding client certificates."""
    if cfg.cert is None or cfg.key is None:
        raise ValueError("tls: a listener needs cert and key")
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
