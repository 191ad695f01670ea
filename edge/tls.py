"""TLS settings, and contexts for listeners and clients built from them.

Every listener and client takes an optional ``ssl.SSLContext``; this module
builds them from file paths (``TlsConfig``, the one TLS configuration of daemons,
gateway and CLI). Mutual TLS (client certificates) is switched on with
``verify_client``; the certificate's subject names the principal. On the private
ports that principal is an SPU id (:func:`spu_ids_named`).

Certificates rotate without a restart: every context built here is remembered
(weakly), and :func:`reload_certificates` (SIGHUP, or :func:`watch` seeing a file
change) loads the files again into each. New connections use the new
certificate; open ones keep theirs until they reconnect. A new file that does
not load (a key that does not match, a half-copied file) is refused with one log
line and the old certificate stays in use.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import re
import ssl
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edge.config import ConfigError, check_file, reject_unknown, take

log = logging.getLogger(__name__)

# Certificates closer than this to their end are warned about (start, reload, daily).
EXPIRY_WARNING_DAYS: Final = 30
WATCH_INTERVAL_S: Final = 10.0


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """Paths of our certificate, key and trusted CA bundle.

    ``verify_client`` (listeners) demands client certificates that chain to ``ca``;
    with ``optional_client`` too (``verify_client = "optional"``) a certificate is
    verified when one is presented, and a caller without one may log in with a token
    (edge/tokens.py) or stay anonymous; ``server_name`` (clients) is the name
    expected in the server's certificate when it is not the host dialled. Errors are
    ConfigErrors naming the field.
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    verify_client: bool = False
    optional_client: bool = False
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
    verify = table.pop("verify_client", False)
    if verify not in (True, False, "optional"):
        raise ConfigError('must be true, false or "optional" (verify a certificate when '
                          'one is given; token and anonymous callers come without)',
                          key="tls.verify_client")
    try:
        cfg = TlsConfig(cert=_path(cert), key=_path(key), ca=_path(ca),
                        verify_client=verify is not False, optional_client=verify == "optional")
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
    ctx.verify_mode = (ssl.CERT_NONE if not cfg.verify_client else
                       ssl.CERT_OPTIONAL if cfg.optional_client else ssl.CERT_REQUIRED)
    _remember(ctx, cfg)
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
    _remember(ctx, cfg)
    return ctx


_LIVE: weakref.WeakKeyDictionary[ssl.SSLContext, TlsConfig] = weakref.WeakKeyDictionary()
_WARNED: dict[Path, datetime.date] = {}


def _remember(ctx: ssl.SSLContext, cfg: TlsConfig) -> None:
    _LIVE[ctx] = cfg
    if cfg.cert is not None:
        warn_if_expiring(cfg.cert)


def reload_certificates() -> int:
    """Load every live context's files again; returns how many took new files."""
    done = 0
    for ctx, cfg in list(_LIVE.items()):
        try:
            if cfg.cert is not None and cfg.key is not None:
                # Tried on a scratch context first: a failed load can leave a live
                # context with a certificate and no matching key.
                ssl.create_default_context().load_cert_chain(str(cfg.cert), str(cfg.key))
                ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
            if cfg.ca is not None:
                ctx.load_verify_locations(str(cfg.ca))
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS files of %s not reloaded, the old ones stay in use: %s",
                        cfg.cert or cfg.ca, exc)
            continue
        done += 1
        if cfg.cert is not None:
            warn_if_expiring(cfg.cert, again=True)
    if done:
        log.info("TLS certificates reloaded (%d context(s))", done)
    return done


def _stamps() -> dict[Path, float]:
    out = {}
    for cfg in list(_LIVE.values()):
        for path in (cfg.cert, cfg.key, cfg.ca):
            if path is not None:
                try:
                    out[path] = os.stat(path).st_mtime
                except OSError:
                    out[path] = -1.0
    return out


async def watch(interval: float = WATCH_INTERVAL_S) -> None:
    """Reload when a certificate, key or CA file changes (a copied-in renewal);
    warn daily about certificates near their end."""
    seen = _stamps()
    while True:
        await asyncio.sleep(interval)
        now = _stamps()
        if now != seen and all(v >= 0 for v in now.values()):
            reload_certificates()
        seen = now
        for cfg in list(_LIVE.values()):
            if cfg.cert is not None:
                warn_if_expiring(cfg.cert)


_NOT_AFTER: dict[Path, tuple[float, float | None]] = {}


def not_after(cert: Path) -> float | None:
    """When ``cert`` (PEM) expires, in Unix seconds; None if it cannot be read.
    Read again only when the file changes (a heartbeat asks every second)."""
    try:
        mtime = os.stat(cert).st_mtime
    except OSError:
        return None
    cached = _NOT_AFTER.get(cert)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        decoded = ssl._ssl._test_decode_cert(str(cert))  # type: ignore[attr-defined]
        end: float | None = float(ssl.cert_time_to_seconds(decoded["notAfter"]))
    except (OSError, ssl.SSLError, KeyError, ValueError):
        end = None
    _NOT_AFTER[cert] = (mtime, end)
    return end


def days_left(cert: Path) -> float | None:
    """Days until ``cert`` (PEM) expires; None if it cannot be read."""
    end = not_after(cert)
    return None if end is None else (end - time.time()) / 86400


def served_certificates() -> dict[Path, float]:
    """Each certificate this process presents (its live contexts'), and when it
    expires: for metrics, heartbeats and ``cluster status``."""
    out = {}
    for cfg in list(_LIVE.values()):
        if cfg.cert is not None and (end := not_after(cfg.cert)) is not None:
            out[cfg.cert] = end
    return out


def warn_if_expiring(cert: Path, *, again: bool = False) -> None:
    """One warning a day while ``cert`` is within EXPIRY_WARNING_DAYS of its end."""
    left = days_left(cert)
    if left is None or left > EXPIRY_WARNING_DAYS:
        return
    today = datetime.date.today()
    if not again and _WARNED.get(cert) == today:
        return
    _WARNED[cert] = today
    if left <= 0:
        log.error("TLS certificate %s has expired: peers refuse it. Issue a new one "
                  "(headwater tls issue) and send SIGHUP", cert)
    else:
        log.warning("TLS certificate %s expires in %.0f day(s): issue a new one "
                    "(headwater tls issue), copy it in place; it is reloaded without a "
                    "restart", cert, left)


_SPU_NAME = re.compile(r"spu-(0|[1-9][0-9]{0,9})")


def spu_ids_named(cert: dict[str, Any] | None) -> set[int]:
    """SPU ids a verified peer certificate names: a common name ``spu-N``, or a DNS
    subject alternative name ``spu-N`` or ``spu-N.<domain>`` (``spu-3.headwater``);
    none when its organization names another kind."""
    if not cert:
        return set()
    subject = [(key, str(value)) for rdn in cert.get("subject", ()) for key, value in rdn]
    # A certificate issued for another kind of principal (headwater tls issue puts
    # the kind in O) is no SPU's, whatever its names say.
    if any(key == "organizationName" and value != "spu" for key, value in subject):
        return set()
    names = [value for key, value in subject if key == "commonName"]
    names += [str(value).split(".", 1)[0] for kind, value in cert.get("subjectAltName", ())
              if kind == "DNS"]
    return {int(m.group(1)) for name in names if (m := _SPU_NAME.fullmatch(name))}
