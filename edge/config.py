"""Daemon configuration: TOML files, human sizes and durations.

Configuration objects are frozen dataclasses validated at construction; a bad
value raises ``ConfigError`` naming the key, so ``--check-config`` and systemd
both report the exact mistake.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from edge.secret import ClusterSecret, PrivateAuth
from edge.tls import TlsConfig

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
               "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000,
                   "d": 86_400_000, "w": 604_800_000}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


def parse_size(text: str | int) -> int:
    """``"1GiB"``, ``"512MB"``, ``"4096"`` → bytes."""
    if isinstance(text, int):
        return text
    m = _NUMBER_UNIT.match(text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"{text!r} is not a size (examples: 4096, 64MiB, 1GiB, 500MB)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration_ms(text: str | int) -> int:
    """``"7d"``, ``"12h"``, ``"30s"``, ``"250ms"`` → milliseconds (a bare number is ms)."""
    if isinstance(text, int):
        return text
    m = _NUMBER_UNIT.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or (unit and unit not in _DURATION_UNITS):
        raise ConfigError(f"{text!r} is not a duration (examples: 250ms, 30s, 12h, 7d)")
    return int(float(m.group(1)) * _DURATION_UNITS.get(unit, 1))


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def take(raw: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """Pop ``key`` from ``raw`` checking its type (ints are accepted where floats are)."""
    if key not in raw:
        return default
    value = raw.pop(key)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{key} must be {kind.__name__}, not {type(value).__name__}")
    return value


def tls_from(raw: dict[str, Any]) -> TlsConfig | None:
    """The optional ``[tls]`` table."""
    table = raw.pop("tls", None)
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError("tls must be a table")
    table = dict(table)
    try:
        cfg = TlsConfig(
            cert=_path(take(table, "cert", str, None)), key=_path(take(table, "key", str, None)),
            ca=_path(take(table, "ca", str, None)),
            verify_client=take(table, "verify_client", bool, False),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    reject_unknown(table, "tls")
    return cfg


def secret_from(raw: dict[str, Any]) -> ClusterSecret | None:
    """The optional ``cluster_secret_file``, loaded and checked."""
    path = take(raw, "cluster_secret_file", str, None)
    return None if path is None else load_secret(Path(path))


def load_secret(path: Path) -> ClusterSecret:
    try:
        return ClusterSecret.load(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def private_auth(secret: ClusterSecret | None, *, insecure: bool, tls: TlsConfig | None
                 ) -> PrivateAuth:
    """How the private ports authenticate; refused when nothing would (unless insecure)."""
    try:
        return PrivateAuth(secret=secret, insecure=insecure,
                           certificates=tls is not None and tls.cert is not None
                           and tls.verify_client)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def reject_unknown(raw: dict[str, Any], where: str) -> None:
    if raw:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(sorted(raw))}")


def _path(value: str | None) -> Path | None:
    return Path(value) if value is not None else None
