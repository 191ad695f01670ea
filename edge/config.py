"""Configuration: the one ``ConfigError``, TOML files, human sizes and durations.

Configuration objects (of the daemons and of the gateway) are frozen dataclasses
validated at construction; a bad value raises ``ConfigError`` naming the key, so
``--check-config`` and systemd both report the exact mistake.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.protocol.errors import HeadwaterError
from edge.secret import ClusterSecret, PrivateAuth

if TYPE_CHECKING:
    from edge.tls import TlsConfig

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
               "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000,
                   "d": 86_400_000, "w": 604_800_000}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class ConfigError(HeadwaterError, ValueError):
    """A configuration value is missing or wrong.

    ``key`` names the offending key as a dotted path from the top of the file
    (``mqtt.rules[1].format``), or is empty where ``problem`` names it itself or no
    single key is at fault; the message is ``"key: problem"``. A ``ValueError`` too:
    callers that validate input catch both alike.
    """

    def __init__(self, problem: str, *, key: str = "") -> None:
        super().__init__(f"{key}: {problem}" if key else problem, key=key, problem=problem)
        self.key = key
        self.problem = problem

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key placed under ``prefix`` (the table it is in)."""
        if not prefix:
            return self
        return ConfigError(self.problem, key=f"{prefix}.{self.key}" if self.key else prefix)


def check_file(key: str, path: Path) -> None:
    """ConfigError naming ``key`` unless ``path`` is a file."""
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} is not a readable file", key=key)


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
