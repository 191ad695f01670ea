"""``headwater acl``: who may do what, stored by the SC and enforced by every server."""

from __future__ import annotations

from typing import Any

import typer

from edge.acl import Operation, check_rule
from edge.cli.admin_cmds import OUTPUT_HELP, _admin, _check_output
from edge.cli.common import (
    OUTPUT_CHOICES,
    complete_from,
    fail,
    print_json,
    print_table,
    run,
    target,
)

acl_app = typer.Typer(help="Access control: who may produce, consume, create, ... what "
                      "(authorization = true in sc.toml switches it on).",
                      no_args_is_help=True)

Principal = typer.Option(..., "--principal", "-p", help="A client certificate's common "
                         "name or a token's principal, 'anonymous' (neither), '*' (anyone) "
                         "or role:NAME (every member of the role).")
Op = typer.Option(..., "--operation", "--op", help=", ".join(Operation) + ".",
                  autocompletion=complete_from(*Operation))
Resource = typer.Option(..., "--resource", "-r", help="topic:NAME, topic:PREFIX*, "
                        "group:NAME, group:PREFIX*, cluster, or * (anything); role:NAME "
                        "with --operation member (the principal joins the role).")


def _rule(principal: str, operation: str, resource: str) -> None:
    try:
        check_rule(principal, operation, resource)
    except ValueError as exc:
        fail(str(exc), 2)


@acl_app.command("add")
def acl_add(ctx: typer.Context, principal: str = Principal, operation: str = Op,
            resource: str = Resource) -> None:
    """Allow a principal an operation on a resource."""
    _rule(principal, operation, resource)

    async def main() -> None:
        async with _admin(ctx) as admin:
            await admin.add_acl(principal, operation, resource)

    run(main, what="add ACL", target_=target(ctx))
    typer.echo(f"{principal} is a member of {resource}" if operation == Operation.MEMBER
               else f"{principal} may {operation} {resource}")


@acl_app.command("remove")
def acl_remove(ctx: typer.Context, principal: str = Principal, operation: str = Op,
               resource: str = Resource) -> None:
    """Take an ACL back (exactly as listed)."""
    _rule(principal, operation, resource)

    async def main() -> None:
        async with _admin(ctx) as admin:
            await admin.remove_acl(principal, operation, resource)

    run(main, what="remove ACL", target_=target(ctx))
    typer.echo(f"{principal} is no longer a member of {resource}"
               if operation == Operation.MEMBER
               else f"{principal} may no longer {operation} {resource}")


@acl_app.command("list")
def acl_list(ctx: typer.Context,
             output: str = typer.Option("table", "--output", "-O", help=OUTPUT_HELP,
                                        autocompletion=OUTPUT_CHOICES)) -> None:
    """The ACLs, and whether authorization is on."""
    _check_output(output)

    async def main() -> tuple[bool, list[dict[str, Any]]]:
        async with _admin(ctx) as admin:
            return await admin.list_acls()

    enabled, rows = run(main, what="list ACLs", target_=target(ctx))
    if output == "json":
        print_json({"authorization": enabled, "acls": rows})
        return
    typer.echo(f"authorization {'on' if enabled else 'off (authorization = true in sc.toml)'}")
    if rows:
        print_table([[r["principal"], r["operation"], r["resource"]] for r in rows],
                    ["PRINCIPAL", "OPERATION", "RESOURCE"])
    else:
        typer.echo("no ACLs (add one with: headwater acl add --principal NAME --operation "
                   "produce --resource topic:NAME)")
