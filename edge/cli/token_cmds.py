"""``headwater token``: principals for users and gateways without a client certificate."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from edge.acl import principal_name
from edge.cli.admin_cmds import OUTPUT_HELP, _admin, _check_output
from edge.cli.common import (
    OUTPUT_CHOICES,
    complete_from,
    fail,
    local_time,
    print_json,
    print_table,
    run,
    target,
)
from edge.protocol import sc_api

token_app = typer.Typer(help="Tokens: how a user or a gateway without a client certificate "
                        "proves who it is (then `headwater acl` says what it may do).",
                        no_args_is_help=True)


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Who the token is for: a user name, or a "
                               "gateway's name with --kind gateway."),
    kind: str = typer.Option("user", "--kind", help="user (principal NAME) or gateway "
                             "(principal gateway-NAME).",
                             autocompletion=complete_from(*sc_api.TOKEN_KINDS)),
    out: Path | None = typer.Option(None, "--out", help="Write the token to this file "
                                    "(mode 0600) instead of printing it."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
) -> None:
    """Make a token. It is shown (or written) this once: the SC keeps only its digest."""
    if kind not in sc_api.TOKEN_KINDS:
        fail(f"--kind {kind}: one of {', '.join(sc_api.TOKEN_KINDS)}", 2)
    try:
        principal_name(kind, name)
    except ValueError as exc:
        fail(str(exc), 2)
    if out is not None and out.exists() and not force:
        fail(f"{out} exists already; pass --force to replace it", 2)

    async def main() -> sc_api.TokenCreated:
        async with _admin(ctx) as admin:
            return await admin.create_token(name, kind)

    made = run(main, what="create token", target_=target(ctx))
    if out is None:
        typer.echo(made.token)
        typer.echo(f"token {made.token_id} for {made.principal}: keep it secret, it is not shown "
                   f"again. Use it with --token-file FILE or HEADWATER_TOKEN; grant it "
                   f"rights with: headwater acl add --principal {made.principal} ...", err=True)
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(made.token + "\n")
    os.chmod(out, 0o600)
    typer.echo(f"token {made.token_id} for {made.principal} written to {out} (mode 0600); use it "
               f"with --token-file {out}")


@token_app.command("list")
def token_list(ctx: typer.Context,
               output: str = typer.Option("table", "--output", "-O", help=OUTPUT_HELP,
                                          autocompletion=OUTPUT_CHOICES)) -> None:
    """Every token: who it is for, its id, when made and revoked (never the token)."""
    _check_output(output)

    async def main() -> list[sc_api.TokenRow]:
        async with _admin(ctx) as admin:
            return await admin.list_tokens()

    rows = run(main, what="list tokens", target_=target(ctx))
    if output == "json":
        print_json([r._asdict() for r in rows])
        return
    if not rows:
        typer.echo("no tokens (make one with: headwater token create NAME)")
        return
    print_table([[r.name, r.kind, r.principal, r.token_id, local_time(r.created_ms),
                  "-" if r.revoked_ms is None else local_time(r.revoked_ms)] for r in rows],
                ["NAME", "KIND", "PRINCIPAL", "ID", "CREATED", "REVOKED"])


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Whose tokens to revoke."),
    token_id: str | None = typer.Option(None, "--id", help="Revoke only this token (its ID "
                                        "in `headwater token list`), e.g. the old one after "
                                        "a rotation."),
) -> None:
    """Revoke tokens: connections using them are refused from their next request."""
    if token_id is not None and (len(token_id) != sc_api.TOKEN_ID_CHARS
                                 or any(c not in "0123456789abcdef" for c in token_id)):
        fail(f"--id {token_id}: {sc_api.TOKEN_ID_CHARS} hex digits, as `headwater token "
             "list` shows", 2)

    async def main() -> None:
        async with _admin(ctx) as admin:
            await admin.revoke_token(name, token_id)

    run(main, what="revoke token", target_=target(ctx))
    typer.echo(f"revoked {'token ' + token_id if token_id else 'every live token'} of {name}")
