"""``headwater discover``: what the LAN announces on mDNS."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import typer

from edge.cli.common import OUTPUT_CHOICES, fail, print_json, print_table


def discover(
    site: str | None = typer.Option(None, "--site", help="Only nodes of this site."),
    timeout: float = typer.Option(3.0, "--timeout", "-t", min=0.2, max=600.0,
                                  help="Seconds to listen (announcements arrive within 1-2 s)."),
    interface: list[str] = typer.Option([], "--interface", "-i",
                                        help="Listen only on this interface (repeatable)."),
    output: str = typer.Option("table", "--output", "-O", help="table or json.",
                               autocompletion=OUTPUT_CHOICES),
) -> None:
    """List the Headwater SCs, SPUs and gateways announced on the LAN (mDNS)."""
    from edge.discovery.txt import check_site

    if output not in ("table", "json"):
        fail("--output must be table or json", 2)
    if site is not None:
        try:
            check_site(site)
        except ValueError as exc:
            fail(f"--site: {exc}", 2)
    rows = asyncio.run(_listen(site, timeout, interface))
    if output == "json":
        print_json(rows)
        return
    if not rows:
        where = f" for site {site}" if site else ""
        typer.echo(f"nothing announced{where} within {timeout:g}s (nodes announce only with "
                   "site set; mDNS needs UDP 5353 and multicast on this LAN)", err=True)
        raise typer.Exit(1)
    print_table([[r["role"], r["site"], r["id"], ",".join(r["addresses"]) or "-",
                  r["public_port"], r["private_port"], r["cluster"], r["version"],
                  "yes" if r["tls"] else "no", f"{r['last_seen_s']:.1f}s ago"]
                 for r in rows],
                ["ROLE", "SITE", "ID", "ADDRESSES", "PORT", "PRIVATE", "CLUSTER", "VERSION",
                 "TLS", "LAST SEEN"])


async def _listen(site: str | None, timeout: float, interfaces: list[str]
                  ) -> list[dict[str, Any]]:
    from edge.discovery.directory import Directory
    from edge.discovery.mdns import Mdns

    directory = Directory(Mdns(interfaces=interfaces))
    try:
        await directory.start()
    except OSError as exc:
        fail(f"cannot listen for mDNS: {exc}")
    try:
        await asyncio.sleep(timeout)
        now = time.time()
        entries = directory.find(lambda e: site is None or e.announcement.site == site)
        return sorted(({"role": e.announcement.role.value, "site": e.announcement.site,
                        "id": e.announcement.node_id, "name": e.name,
                        "addresses": list(e.addresses),
                        "public_port": e.announcement.public_port,
                        "private_port": e.announcement.private_port,
                        "cluster": e.announcement.cluster, "version": e.announcement.version,
                        "tls": e.announcement.tls, "last_seen_s": now - e.last_seen}
                       for e in entries),
                      key=lambda r: (r["site"], r["role"], r["id"] or 0, r["name"]))
    finally:
        await directory.stop()
