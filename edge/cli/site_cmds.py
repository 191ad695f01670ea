"""``site`` commands (on a cloud SC) and ``upstream status`` (on an edge cluster)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from edge.cli.common import (
    OUTPUT_CHOICES,
    fail,
    human_bytes,
    local_time,
    print_json,
    print_table,
    run,
    target,
)
from edge.client.admin import Admin

site_app = typer.Typer(help="Edge sites that mirror their topics into this (cloud) cluster.",
                       no_args_is_help=True)
upstream_app = typer.Typer(help="The uplink of this edge site to its cloud.",
                           no_args_is_help=True)

OUTPUT_HELP = "table or json."


def _admin(ctx: typer.Context) -> Admin:
    t = target(ctx)
    return Admin(t.sc, ssl=t.ssl(), server_hostname=t.server_name, token=t.token)


def _check_output(output: str) -> None:
    if output not in ("table", "json"):
        fail(f"--output must be table or json, not {output!r}")


def upstream_toml(cloud_sc: str, site: str, token: str, *, tls_ca: str | None = None) -> str:
    """The ``[upstream]`` table an edge SPU (or ``headwater local``) reads."""
    text = ("# Edge site credentials for the cloud cluster; keep this file private.\n"
            "[upstream]\n"
            f"sc = {json.dumps(cloud_sc)}\n"
            f"site = {json.dumps(site)}\n"
            f"token = {json.dumps(token)}\n")
    if tls_ca is not None:
        text += ("# The cloud's CA, as a path on the edge: every uplink connection is TLS.\n"
                 f"tls_ca = {json.dumps(tls_ca)}\n")
    return text


@site_app.command("register")
def site_register(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Site name (letters, digits, '.', '_', '-')."),
    export: Path | None = typer.Option(None, "--export", help="Write the edge's [upstream] "
                                       "config (cloud address, site, token) to this file."),
    cloud_addr: str | None = typer.Option(None, help="Cloud SC address the edge should dial "
                                          "(default the --sc address used here)."),
    edge_tls_ca: str | None = typer.Option(
        None, "--edge-tls-ca", help="Path of the cloud's CA file on the edge, written as "
        "tls_ca (the uplink then uses TLS); default: the --tls-ca this command uses, if any."),
    no_tls: bool = typer.Option(False, "--no-tls", help="Write no tls_ca even though this "
                                "command uses TLS (a cloud reached through a TLS proxy)."),
) -> None:
    """Register an edge site and print (or export) what it needs to connect."""

    async def main() -> dict[str, Any]:
        async with _admin(ctx) as admin:
            return await admin.register_site(name)

    info = run(main, what=f"register site {name}", target_=target(ctx))
    tls = target(ctx).tls
    ca = edge_tls_ca or (str(tls.ca) if tls is not None and tls.ca is not None else None)
    text = upstream_toml(cloud_addr or target(ctx).sc, name, info["token"],
                         tls_ca=None if no_tls else ca)
    if export is None:
        typer.echo(f"site {name} registered; its token is shown only now:\n")
        typer.echo(text, nl=False)
        return
    export.touch(mode=0o600, exist_ok=True)
    export.write_text(text)
    typer.echo(f"site {name} registered; edge config written to {export} "
               f"(use: headwater local --upstream {export})")


@site_app.command("unregister")
def site_unregister(ctx: typer.Context, name: str = typer.Argument(..., help="Site name.")
                    ) -> None:
    """Forget a site and its credentials (its mirrored data stays in the cloud topics)."""

    async def main() -> None:
        async with _admin(ctx) as admin:
            await admin.unregister_site(name)

    run(main, what=f"unregister site {name}", target_=target(ctx))
    typer.echo(f"site {name} unregistered")


@site_app.command("list")
def site_list(ctx: typer.Context,
              output: str = typer.Option("table", "--output", "-O", help=OUTPUT_HELP,
                                         autocompletion=OUTPUT_CHOICES)) -> None:
    """Registered sites, their mirrored partitions and last contact."""
    _check_output(output)

    async def main() -> list[dict[str, Any]]:
        async with _admin(ctx) as admin:
            return await admin.list_sites()

    rows = run(main, what="list sites", target_=target(ctx))
    if output == "json":
        print_json(rows)
    elif not rows:
        typer.echo("no sites (register one with: headwater site register NAME --export FILE)")
    else:
        print_table([[r["name"], r["mirrors"], _ago(r.get("last_contact_s")), r.get("lag"),
                      human_bytes(r.get("lag_bytes")), _age(r.get("oldest_unsent_s")),
                      r.get("dropped"), r.get("gap_offsets"),
                      ",".join(map(str, r.get("uplink_spus") or [])) or None,
                      local_time(r["created_ms"])] for r in rows],
                    ["SITE", "MIRRORS", "LAST CONTACT", "LAG", "LAG BYTES", "OLDEST UNSENT",
                     "DROPPED", "GAPS", "UPLINK SPUS", "REGISTERED"])


@site_app.command("describe")
def site_describe(ctx: typer.Context, name: str = typer.Argument(..., help="Site name."),
                  output: str = typer.Option("table", "--output", "-O", help=OUTPUT_HELP,
                                             autocompletion=OUTPUT_CHOICES)
                  ) -> None:
    """A site's mirrored partitions: edge partition → cloud partition, leader, HW."""
    _check_output(output)

    async def main() -> dict[str, Any]:
        async with _admin(ctx) as admin:
            return await admin.describe_site(name)

    info = run(main, what=f"describe site {name}", target_=target(ctx))
    if output == "json":
        print_json(info)
        return
    typer.echo(f"site          {info['name']}")
    typer.echo(f"registered    {local_time(info['created_ms'])}")
    typer.echo(f"last contact  {_ago(info.get('last_contact_s'))}\n")
    print_table([[m["topic"], m["edge_partition"], m["cloud_partition"], m["leader"],
                  m["hw"], m.get("edge_end"), m.get("lag"), human_bytes(m.get("lag_bytes")),
                  _age(m.get("oldest_unsent_s")), m.get("uplink_spu"), m.get("dropped"),
                  m.get("gap_offsets")] for m in info["mirrors"]],
                ["TOPIC", "EDGE PARTITION", "CLOUD PARTITION", "LEADER", "HW", "EDGE END",
                 "LAG", "LAG BYTES", "OLDEST UNSENT", "UPLINK SPU", "DROPPED", "LOST AT EDGE"])


@upstream_app.command("status")
def upstream_status(ctx: typer.Context,
                    output: str = typer.Option("table", "--output", "-O", help=OUTPUT_HELP,
                                               autocompletion=OUTPUT_CHOICES)
                    ) -> None:
    """Per upstream partition: edge end, what the cloud acknowledged, lag, link state."""
    _check_output(output)

    async def main() -> list[dict[str, Any]]:
        async with _admin(ctx) as admin:
            return await admin.upstream_status()

    rows = run(main, what="upstream status", target_=target(ctx))
    if output == "json":
        print_json(rows)
    elif not rows:
        typer.echo("no upstream topics (create one with: headwater topic create NAME "
                   "--upstream)")
    else:
        print_table([[r["topic"], r["partition"], r["spu"], r["edge_end"], r["cloud_acked"],
                      r["lag"], human_bytes(r.get("lag_bytes")), _age(r.get("lag_s")),
                      r.get("dropped_records", 0), r["state"], r["last_error"]] for r in rows],
                    ["TOPIC", "PARTITION", "SPU", "EDGE END", "CLOUD ACKED", "LAG", "LAG BYTES",
                     "OLDEST UNSENT", "DROPPED", "STATE", "LAST ERROR"])


def _age(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds:.0f}s"


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.0f}s ago"
