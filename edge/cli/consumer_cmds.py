"""``consumer`` commands: stored positions of named consumers and consumer groups."""

from __future__ import annotations

from typing import Any

import typer

from edge.cli.admin_cmds import OUTPUT_HELP, _admin, _check_output
from edge.cli.common import (
    OUTPUT_CHOICES,
    fail,
    local_time,
    parse_time_ms,
    print_json,
    print_table,
    run,
    target,
)
from edge.client import Offset
from edge.protocol.groups import GroupRow
from edge.protocol.schema import to_wire

consumer_app = typer.Typer(help="Consumer positions and consumer groups.",
                           no_args_is_help=True)


@consumer_app.command("list")
def consumer_list(ctx: typer.Context,
                  output: str = typer.Option("table", "--output", "-O", help=OUTPUT_HELP,
                                             autocompletion=OUTPUT_CHOICES)
                  ) -> None:
    """Named consumers' positions and consumer groups (members, partitions, positions),
    with their lag behind the high watermark."""
    _check_output(output)

    async def main() -> tuple[list[dict[str, Any]], list[GroupRow]]:
        async with _admin(ctx) as admin:
            return await admin.list_consumers(), await admin.list_groups()

    consumers, groups = run(main, what="list consumers", target_=target(ctx))
    if output == "json":
        print_json({"consumers": consumers, "groups": to_wire(groups)})
        return
    if not consumers and not groups:
        typer.echo("no consumer positions or groups (consume with --group NAME or "
                   "--consumer NAME to store one)")
        return
    if consumers:
        print_table([[r["consumer"], r["topic"], r["partition"], r["offset"], r["lag"],
                      _when(r.get("updated_ms"))] for r in consumers],
                    ["CONSUMER", "TOPIC", "PARTITION", "OFFSET", "LAG", "UPDATED"])
    if consumers and groups:
        typer.echo("")
    if groups:
        print_table([row for g in groups for row in _group_rows(g)],
                    ["GROUP", "TOPIC", "STATE", "GEN", "PARTITION", "MEMBER", "CLIENT",
                     "OFFSET", "HW", "LAG"])


def _group_rows(g: GroupRow) -> list[list[Any]]:
    """A row per partition, and one per member without partitions."""
    clients = {m.member: m.client or None for m in g.members}
    head = [g.group, g.topic, g.state, g.generation]
    rows = [[*head, p.partition, p.member, clients.get(p.member or ""), p.offset, p.hw, p.lag]
            for p in g.partitions]
    rows += [[*head, None, m.member, m.client or None, None, None, None]
             for m in g.members if not m.partitions]
    return rows or [[*head, None, None, None, None, None, None]]


def _when(ms: int | None) -> str | None:
    return None if ms is None else local_time(ms)


@consumer_app.command("reset")
def consumer_reset(
    ctx: typer.Context,
    group: str = typer.Argument(..., help="Consumer group."),
    topic: str = typer.Option(..., "--topic", "-t", help="Topic whose positions move."),
    to_earliest: bool = typer.Option(False, "--to-earliest", help="To the oldest record."),
    to_latest: bool = typer.Option(False, "--to-latest", help="To the end (skip the backlog)."),
    to_offset: int | None = typer.Option(None, "--to-offset", help="To this offset (kept "
                                         "inside each partition's log)."),
    to_time: str | None = typer.Option(None, "--to-time", help="To the first record at or "
                                       "after this time: ISO 8601 (2026-12-03T10:00, local "
                                       "time unless it has an offset) or ms since the epoch."),
    partition: list[int] | None = typer.Option(None, "--partition", "-p",
                                               help="Only this partition (repeatable)."),
) -> None:
    """Move a group's positions. Refused while the group has live members."""
    chosen = [flag for flag, on in (("--to-earliest", to_earliest), ("--to-latest", to_latest),
                                    ("--to-offset", to_offset is not None),
                                    ("--to-time", to_time is not None)) if on]
    if len(chosen) != 1:
        fail("choose one of --to-earliest, --to-latest, --to-offset N, --to-time T", 2)
    to = (Offset.beginning() if to_earliest else Offset.end() if to_latest
          else Offset.timestamp(parse_time_ms(to_time, '--to-time')) if to_time is not None
          else _absolute(to_offset))

    async def main() -> dict[int, int]:
        async with _admin(ctx) as admin:
            return await admin.reset_group(group, topic, to, partitions=partition or None)

    offsets = run(main, what=f"reset group {group}", target_=target(ctx))
    typer.echo(f"group {group}: positions in {topic} set")
    print_table([[p, o] for p, o in sorted(offsets.items())], ["PARTITION", "OFFSET"])


def _absolute(offset: int | None) -> Offset:
    try:
        return Offset.absolute(offset or 0)
    except ValueError as exc:
        fail(f"--to-offset: {exc}", 2)


@consumer_app.command("delete")
def consumer_delete(ctx: typer.Context,
                    group: str = typer.Argument(..., help="Consumer group.")) -> None:
    """Forget a group and its positions. Refused while the group has live members."""

    async def main() -> int:
        async with _admin(ctx) as admin:
            return await admin.delete_group(group)

    removed = run(main, what=f"delete group {group}", target_=target(ctx))
    typer.echo(f"group {group} deleted ({removed} stored position(s))")
