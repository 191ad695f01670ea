"""What every CLI command shares: where the cluster is, TLS, errors, tables."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import ssl
import sys
import tomllib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer

from edge.config import ConfigError
from edge.protocol.errors import HeadwaterError
from edge.tls import TlsConfig, client_context

T = TypeVar("T")
DEFAULT_SC = "127.0.0.1:9003"


def config_home() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "headwater"


def profiles_path() -> Path:
    return config_home() / "profiles.toml"


def load_profiles() -> dict[str, Any]:
    path = profiles_path()
    if not path.is_file():
        return {"current": None, "profiles": {}}
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        fail(f"{path} is not valid TOML ({exc}); fix or delete it")
    data.setdefault("profiles", {})
    data.setdefault("current", None)
    return data


@dataclass
class Target:
    """The cluster a command talks to and how."""

    sc: str
    tls: TlsConfig | None = None
    server_name: str | None = None
    source: str = "default"
    # A broken profile is reported by the commands that talk to a cluster, not by
    # every command: `headwater profile ...` must still work to repair it.
    problem: str | None = None
    # Proved with LOGIN on every connection (edge/tokens.py).
    token: str | None = None

    def ssl(self) -> ssl.SSLContext | None:
        return client_context(self.tls) if self.tls else None


def resolve_target(sc: str | None, tls_ca: Path | None, tls_cert: Path | None,
                   tls_key: Path | None, server_name: str | None,
                   token_file: Path | None = None) -> Target:
    """``--sc`` wins, then ``HEADWATER_SC``, then the current profile, then localhost;
    the token: ``--token-file``, then ``HEADWATER_TOKEN``, then the profile's."""
    profile: dict[str, Any] = {}
    source = "default"
    if sc:
        source = "--sc"
    elif os.environ.get("HEADWATER_SC"):
        sc, source = os.environ["HEADWATER_SC"], "HEADWATER_SC"
    else:
        data = load_profiles()
        current = data.get("current")
        if current and current in data["profiles"]:
            profile = data["profiles"][current]
            sc, source = profile.get("sc"), f"profile {current}"
    tls = None
    ca = tls_ca or _opt_path(profile.get("tls_ca"))
    cert = tls_cert or _opt_path(profile.get("tls_cert"))
    key = tls_key or _opt_path(profile.get("tls_key"))
    problem = None
    if ca or cert or key:
        try:
            tls = TlsConfig(ca=ca, cert=cert, key=key)
        except ConfigError as exc:
            # Named as in a profile (tls_ca) and on the command line (--tls-ca).
            problem = (f"tls_{exc.key}: {exc.problem} (TLS settings from {source}"
                       + ("; fix it with `headwater profile add` or `headwater profile delete`)"
                          if source.startswith("profile") else ")"))
    token, token_problem = _token(token_file or _opt_path(profile.get("token_file")))
    return Target(sc=sc or DEFAULT_SC, tls=tls,
                  server_name=server_name or profile.get("tls_server_name"), source=source,
                  problem=problem or token_problem, token=token)


def _token(path: Path | None) -> tuple[str | None, str | None]:
    """(token, problem): read from ``path``, else ``HEADWATER_TOKEN``."""
    from edge.tokens import check_token, read_token_file

    try:
        if path is not None:
            return read_token_file(path), None
        text = os.environ.get("HEADWATER_TOKEN", "")
        return (check_token(text, "HEADWATER_TOKEN") if text.strip() else None), None
    except ValueError as exc:
        return None, f"{exc}; make one with `headwater token create NAME`"


def _opt_path(value: Any) -> Path | None:
    return Path(value) if isinstance(value, str) and value else None


def target(ctx: typer.Context) -> Target:
    obj = ctx.find_root().obj
    if not isinstance(obj, Target):
        fail("internal: no cluster target")
    if obj.problem is not None:
        fail(obj.problem)
    _find_on_lan(obj)
    return obj


def _find_on_lan(t: Target) -> None:
    """Check the SC address where it enters; turn ``--sc mdns[:SITE]`` into the
    address the LAN announces, once per command.

    (Inside a running event loop the clients find it themselves.)
    """
    from edge.discovery.spec import parse_sc
    from edge.net.connection import split_addr_list

    try:
        spec = parse_sc(t.sc)
        if spec is None:
            split_addr_list(t.sc)
    except ValueError as exc:
        fail(f"SC address {t.sc!r} (from {t.source}): {exc}; give HOST:PORT (several SCs: "
             "H1:P1,H2:P2), or mdns:SITE to find it on the LAN", 2)
    if spec is None:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return
    from edge.discovery.finder import find_sc

    try:
        found = asyncio.run(find_sc(spec))
    except HeadwaterError as exc:
        fail(f"--sc {spec} (from {t.source}): {exc}")
    t.sc, t.source = found, f"{t.source}, {spec} on mDNS"


def parse_time_ms(text: str, flag: str) -> int:
    """A point in time from the command line: ISO 8601 (local time unless it names an
    offset) or ms since the epoch; anything else ends the command naming ``flag``."""
    if text.isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        fail(f"{flag}: {text!r} is neither ISO 8601 (2026-12-03T10:00) nor ms since "
             "the epoch", 2)
    if when.tzinfo is None:
        when = when.astimezone()
    return int(when.timestamp() * 1000)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]], *, what: str = "",
        target_: Target | None = None) -> T:
    """Run a coroutine; turn Headwater errors into one clear line and exit 1."""
    try:
        return asyncio.run(coro_fn())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except ConfigError as exc:
        fail(str(exc), 2)
    except HeadwaterError as exc:
        hint = ""
        if "cannot connect" in str(exc) and target_ is not None:
            hint = (f" (SC address from {target_.source}; is `headwater local` running? "
                    "Point elsewhere with --sc HOST:PORT or HEADWATER_SC)")
        fail(f"{what + ': ' if what else ''}{exc}{hint}")


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Aligned columns; numbers right-aligned."""
    text = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [all(_is_num(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w)
                         for c, w, num in zip(cells, widths, numeric, strict=True)).rstrip()

    typer.echo(line(list(headers)))
    for row in text:
        typer.echo(line(row))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _is_num(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) or value is None


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, default=str, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def setup_logging(level: str, *, daemon: bool = False, log_format: str = "text") -> None:
    from edge.logformat import LOG_FORMATS, configure

    if log_format not in LOG_FORMATS:
        fail(f"--log-format must be one of {', '.join(LOG_FORMATS)}", 2)
    configure(level, log_format=log_format)
    if not daemon:
        logging.getLogger("asyncio").setLevel(logging.ERROR)


def complete_from(*values: str) -> Callable[[str], list[str]]:
    """Shell completion for an option with fixed values (``--output table|json``)."""

    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


OUTPUT_CHOICES = complete_from("table", "json")
LOG_LEVELS = complete_from("debug", "info", "warning", "error")
LOG_FORMATS = complete_from("text", "json")
DURABILITIES = complete_from("group", "always", "never")


def local_time(ms: int) -> str:
    """A wall-clock time in milliseconds, as the local ``YYYY-MM-DD HH:MM:SS``."""
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
