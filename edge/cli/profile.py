"""``headwater profile``: named clusters in ~/.config/headwater/profiles.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edge.cli.common import fail, load_profiles, print_table, profiles_path

profile_app = typer.Typer(help="Remember clusters by name and switch between them.",
                          no_args_is_help=True)


def _save(data: dict[str, Any]) -> None:
    path = profiles_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    if data.get("current"):
        lines.append(f"current = {_q(data['current'])}")
    for name, prof in sorted(data["profiles"].items()):
        lines.append(f"\n[profiles.{_q(name)}]")
        lines.extend(f"{k} = {_q(str(v))}" for k, v in sorted(prof.items()) if v)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@profile_app.command("add")
def add(name: str = typer.Argument(..., help="Profile name."),
        sc: str = typer.Option(..., "--sc", help="SC address HOST:PORT."),
        tls_ca: Path | None = typer.Option(None, help="CA bundle (switches TLS on)."),
        tls_cert: Path | None = typer.Option(None, help="Client certificate."),
        tls_key: Path | None = typer.Option(None, help="Client key."),
        token_file: Path | None = typer.Option(None, help="File holding a token to log in "
                                               "with (`headwater token create --out`)."),
        use: bool = typer.Option(True, help="Make it the current profile.")) -> None:
    """Add or replace a profile (checked first: the address, and that the files exist)."""
    from edge.discovery.spec import parse_sc
    from edge.net.connection import split_addr_list

    try:
        if parse_sc(sc) is None:
            split_addr_list(sc)
    except ValueError as exc:
        fail(f"profile {name}: --sc {sc}: {exc}", 2)
    for flag, path in (("--tls-ca", tls_ca), ("--tls-cert", tls_cert), ("--tls-key", tls_key),
                       ("--token-file", token_file)):
        if path is not None and not path.is_file():
            fail(f"profile {name}: {flag} {path} is not a readable file", 2)
    if (tls_cert is None) != (tls_key is None):
        fail(f"profile {name}: give --tls-cert and --tls-key together", 2)
    data = load_profiles()
    data["profiles"][name] = {"sc": sc, "tls_ca": str(tls_ca or ""),
                              "tls_cert": str(tls_cert or ""), "tls_key": str(tls_key or ""),
                              "token_file": str(token_file.resolve() if token_file else "")}
    if use:
        data["current"] = name
    _save(data)
    typer.echo(f"profile {name} -> {sc}{' (current)' if use else ''}")


@profile_app.command("use")
def use(name: str = typer.Argument(..., help="Profile name.")) -> None:
    """Make NAME the current profile."""
    data = load_profiles()
    if name not in data["profiles"]:
        fail(f"no profile {name!r} (see: headwater profile list)")
    data["current"] = name
    _save(data)
    typer.echo(f"current profile: {name}")


@profile_app.command("list")
def list_() -> None:
    """List profiles; the current one is marked with *."""
    data = load_profiles()
    if not data["profiles"]:
        typer.echo("no profiles (add one: headwater profile add NAME --sc HOST:PORT)")
        return
    print_table([["*" if n == data.get("current") else "", n, p.get("sc"),
                  "yes" if p.get("tls_ca") else "no"]
                 for n, p in sorted(data["profiles"].items())],
                ["", "NAME", "SC", "TLS"])


@profile_app.command("delete")
def delete(name: str = typer.Argument(..., help="Profile name.")) -> None:
    """Forget a profile."""
    data = load_profiles()
    if data["profiles"].pop(name, None) is None:
        fail(f"no profile {name!r}")
    if data.get("current") == name:
        data["current"] = None
    _save(data)
    typer.echo(f"profile {name} deleted")
