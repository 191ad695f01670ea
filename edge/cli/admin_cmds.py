"""``topic``, ``partition``, ``spu`` and ``cluster`` commands."""

from __future__ import annotations

import datetime
import time
from typing import Any

import typer

from edge.cli import topic_options as opts
from edge.cli.common import OUTPUT_CHOICES, fail, human_bytes, print_json, print_table, run, target
from edge.client.admin import Admin
from edge.config import ConfigError
from edge.protocol.errors import TopicExists

topic_app = typer.Typer(help="Create, list, describe, alter and delete topics.",
                        no_args_is_help=True)
partition_app = typer.Typer(help="Inspect partitions.", no_args_is_help=True)
spu_app = typer.Typer(help="Inspect SPUs.", no_args_is_help=True)
cluster_app = typer.Typer(help="Inspect the cluster.", no_args_is_help=True)

OUTPUT_HELP = "table or json."


def _admin(ctx: typer.Context) -> Admin:
    t = target(ctx)
    return Admin(t.sc, ssl=t.ssl(), server_hostname=t.server_name, token=t.token)


def _check_output(output: str) -> None:
    if output not in ("table", "json"):
        fail(f"--output must be table or json, not {output!r}")


@topic_app.command("create")
def topic_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Topic name (letters, digits, '.', '_', '-')."),
    partitions: int = typer.Option(1, "--partitions", "-p", help="Number of partitions."),
    replication: int = typer.Option(1, "--replication", "-r", help="Replicas per partition."),
    wait: bool = typer.Option(False, "--wait", help="Create it even with fewer online SPUs "
                              "than --replication; it is placed when enough register."),
    if_not_exists: bool = typer.Option(False, "--if-not-exists", help="Succeed if the topic "
                                       "exists already (its settings are not changed)."),
    retention_time: opts.RetentionTime = None,
    retention_bytes: opts.RetentionBytes = None,
    segment_bytes: opts.SegmentBytes = None,
    segment_time: opts.SegmentTime = None,
    compression: opts.Compression = None,
    min_isr: opts.MinIsr = None,
    unclean_election: opts.UncleanElection = None,
    upstream: bool = typer.Option(False, "--upstream", help="Mirror this topic to the cloud "
                                  "cluster of the SPUs' [upstream] config (fixed for the "
                                  "topic's life)."),
    upstream_priority: opts.UpstreamPriority = None,
    budget: opts.Budget = None,
    budget_policy: opts.BudgetPolicy = None,
) -> None:
    """Create a topic."""
    try:
        config = opts.settings_from(
            retention_time=retention_time, retention_bytes=retention_bytes,
            segment_bytes=segment_bytes, segment_time=segment_time, compression=compression,
            min_isr=min_isr, unclean_election=unclean_election,
            upstream_priority=upstream_priority, budget=budget, budget_policy=budget_policy)
    except ConfigError as exc:
        fail(str(exc), 2)
    if upstream:
        config["upstream"] = True

    async def main() -> str:
        async with _admin(ctx) as admin:
            if not wait:
                online = sum(1 for spu in await admin.list_spus() if spu["online"])
                if online < replication:
                    fail(f"create topic {name}: replication {replication} needs {replication} "
                         f"online SPUs, the cluster has {online} (add --wait to create it now "
                         "and place it when they register)", 1)
            try:
                return await admin.create_topic(name, partitions=partitions,
                                                replication=replication, config=config)
            except TopicExists:
                if if_not_exists:
                    return "exists"
                raise

    status = run(main, what=f"create topic {name}", target_=target(ctx))
    if status == "exists":
        typer.echo(f"topic {name} exists already (--if-not-exists)")
    elif status == "ready":
        typer.echo(f"topic {name} created ({partitions} partition(s), replication {replication})")
    else:
        typer.echo(f"topic {name} created but waits for SPUs: {status} "
                   f"(needs {replication} online SPUs)")


@topic_app.command("list")
def topic_list(ctx: typer.Context,
               output: str = typer.Option("table", "--output", "-O", help=OUTPUT_HELP,
                                          autocompletion=OUTPUT_CHOICES)) -> None:
    """List topics."""
    _check_output(output)

    async def main() -> list[dict[str, Any]]:
        async with _admin(ctx) as admin:
            return await admin.list_topics()

    topics = run(main, what="list topics", target_=target(ctx))
    if output == "json":
        print_json(topics)
        return
    if not topics:
        typer.echo("no topics (create one with: headwater topic create NAME)")
        return
    print_table([[t["name"], t["partitions"], t["replication"], t["status"],
                  _retention(t["config"])] for t in topics],
                ["NAME", "PARTITIONS", "REPLICATION", "STATUS", "RETENTION"])


def _retention(config: dict[str, Any]) -> str:
    ms = config.get("retention_ms", 7 * 86_400_000)
    parts = ["forever" if ms is None else opts.duration(ms)]
    if config.get("retention_bytes"):
        parts.append(human_bytes(config["retention_bytes"]))
    return " / ".join(parts)


@topic_app.command("describe")
def topic_describe(ctx: typer.Context, name: str = typer.Argument(..., help="Topic name."),
                   output: str = typer.Option("table", "--output", "-O", help=OUTPUT_HELP,
                                              autocompletion=OUTPUT_CHOICES)
                   ) -> None:
    """Show a topic's settings and the state of each partition."""
    _check_output(output)

    async def main() -> dict[str, Any]:
        async with _admin(ctx) as admin:
            return await admin.describe_topic(name)

    info = run(main, what=f"describe topic {name}", target_=target(ctx))
    if output == "json":
        print_json(info)
        return
    typer.echo(f"topic        {info['name']}")
    typer.echo(f"status       {info['status']}")
    typer.echo(f"partitions   {info['partitions']}   replication {info['replication']}")
    typer.echo(f"retention    {_retention(info['config'])}")
    for key, value in sorted(info["config"].items()):
        typer.echo(f"  {key:<22} {opts.show_setting(key, value)}")
    typer.echo("")
    _partition_table(info["partition_status"])


@topic_app.command("alter")
def topic_alter(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Topic name."),
    retention_time: opts.RetentionTime = None,
    retention_bytes: opts.RetentionBytes = None,
    segment_bytes: opts.SegmentBytes = None,
    segment_time: opts.SegmentTime = None,
    compression: opts.Compression = None,
    min_isr: opts.MinIsr = None,
    unclean_election: opts.UncleanElection = None,
    upstream_priority: opts.UpstreamPriority = None,
    budget: opts.Budget = None,
    budget_policy: opts.BudgetPolicy = None,
    reset: list[str] | None = typer.Option(None, "--reset", help="Return this setting to "
                                           "its default (e.g. retention-bytes or "
                                           "retention_bytes); repeat for more."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the change and show the "
                                 "resulting settings; change nothing."),
) -> None:
    """Change a topic's settings; its partitions apply them without a restart
    (retention at their next retention pass). Partitions, replication and upstream
    are fixed when a topic is created."""
    try:
        changes = opts.settings_from(
            retention_time=retention_time, retention_bytes=retention_bytes,
            segment_bytes=segment_bytes, segment_time=segment_time, compression=compression,
            min_isr=min_isr, unclean_election=unclean_election,
            upstream_priority=upstream_priority, budget=budget, budget_policy=budget_policy)
    except ConfigError as exc:
        fail(str(exc), 2)
    resets = sorted({opts.setting_name(r) for r in reset or []})
    if not changes and not resets:
        fail(f"alter topic {name}: nothing to change (give a setting option or --reset "
             "SETTING; see --help)", 2)

    async def main() -> dict[str, Any]:
        async with _admin(ctx) as admin:
            return await admin.alter_topic(name, set=changes, unset=resets,
                                           validate_only=dry_run)

    config = run(main, what=f"alter topic {name}", target_=target(ctx))
    typer.echo(f"topic {name} would have these settings (dry run: nothing changed)"
               if dry_run else f"topic {name} altered")
    rows = [[key, opts.show_setting(key, value), "set" if key in changes else ""]
            for key, value in sorted(config.items())]
    rows += [[key, "default", "reset"] for key in resets]
    print_table(rows, ["SETTING", "VALUE", "CHANGE"])


def _partition_table(rows: list[dict[str, Any]]) -> None:
    print_table([[r["topic"], r["partition"], r["leader"], r["replicas"], r["isr"],
                  r["epoch"], r.get("hw"), r.get("leo"), _lags(r), human_bytes(r.get("size")),
                  "online" if r.get("leader_online") else "offline"] for r in rows],
                ["TOPIC", "PARTITION", "LEADER", "REPLICAS", "ISR", "EPOCH", "HW", "LEO",
                 "LAG", "SIZE", "STATUS"])


def _lags(row: dict[str, Any]) -> str:
    """Records each follower lacks, as ``spu:lag``."""
    followers = row.get("followers") or {}
    if not followers:
        return "-"
    return ",".join(f"{spu}:{info.get('lag', '?')}" for spu, info in sorted(followers.items()))


@topic_app.command("delete")
def topic_delete(ctx: typer.Context, name: str = typer.Argument(..., help="Topic name.")
                 ) -> None:
    """Delete a topic and its data."""

    async def main() -> None:
        async with _admin(ctx) as admin:
            await admin.delete_topic(name)

    run(main, what=f"delete topic {name}", target_=target(ctx))
    typer.echo(f"topic {name} deleted")


@partition_app.command("list")
def partition_list(ctx: typer.Context,
                   topic: str | None = typer.Option(None, "--topic", "-t", help="Only this topic."),
                   output: str = typer.Option("table", "--output", "-O", help=OUTPUT_HELP,
                                              autocompletion=OUTPUT_CHOICES)
                   ) -> None:
    """Partitions with leader, high watermark (HW), log end (LEO) and size."""
    _check_output(output)

    async def main() -> list[dict[str, Any]]:
        async with _admin(ctx) as admin:
            return await admin.list_partitions(topic)

    rows = run(main, what="list partitions", target_=target(ctx))
    if output == "json":
        print_json(rows)
    elif not rows:
        typer.echo("no partitions")
    else:
        _partition_table(rows)


@partition_app.command("rebalance")
def partition_rebalance(ctx: typer.Context,
                        topic: str | None = typer.Option(None, "--topic", "-t",
                                                         help="Only this topic.")) -> None:
    """Move leadership back to each partition's preferred replica (the first one) where
    it is in sync and online."""

    async def main() -> int:
        async with _admin(ctx) as admin:
            return await admin.rebalance(topic)

    moved = run(main, what="rebalance", target_=target(ctx))
    typer.echo(f"moved leadership of {moved} partition(s)" if moved
               else "every partition is led by its preferred replica (or it is not in sync)")


@spu_app.command("list")
def spu_list(ctx: typer.Context,
             output: str = typer.Option("table", "--output", "-O", help=OUTPUT_HELP,
                                        autocompletion=OUTPUT_CHOICES)) -> None:
    """SPUs with address, status and health."""
    _check_output(output)

    async def main() -> list[dict[str, Any]]:
        async with _admin(ctx) as admin:
            return await admin.list_spus()

    rows = run(main, what="list SPUs", target_=target(ctx))
    if output == "json":
        print_json(rows)
        return
    if not rows:
        typer.echo("no SPUs registered")
        return
    print_table([_spu_row(s) for s in rows],
                ["ID", "STATUS", "ADDRESS", "RACK", "PARTITIONS", "CPU%", "RSS", "DISK FREE",
                 "TEMP"])


def _spu_row(s: dict[str, Any]) -> list[Any]:
    h = s.get("health") or {}
    temp = h.get("temperature_c")
    end = h.get("tls_not_after")
    return [s["id"], "online" if s["online"] else "offline", s["public"], s.get("rack"),
            s.get("partitions"), h.get("cpu_percent"), human_bytes(h.get("rss")),
            human_bytes(h.get("disk_free")), f"{temp:.1f}C" if temp is not None else None,
            _days(end) if isinstance(end, int) else None]


def _days(not_after: int) -> str:
    left = (not_after - time.time()) / 86400
    return "expired" if left <= 0 else f"{left:.0f}d"


def _expiry(not_after: int) -> str:
    left = (not_after - time.time()) / 86400
    when = datetime.datetime.fromtimestamp(not_after, datetime.UTC).strftime("%Y-%m-%d")
    return f"expired on {when}" if left <= 0 else f"expires {when} (in {left:.0f} days)"


def _expiring(status: dict[str, Any], spus: list[dict[str, Any]]) -> list[str]:
    """Certificates within EXPIRY_WARNING_DAYS of their end, SC's and SPUs'."""
    from edge.tls import EXPIRY_WARNING_DAYS

    ends = [("the SC's certificate", status.get("tls_not_after"))]
    ends += [(f"SPU {s['id']}'s certificate", (s.get("health") or {}).get("tls_not_after"))
             for s in spus]
    soon = time.time() + EXPIRY_WARNING_DAYS * 86400
    return [f"{who} {_expiry(end)}: issue a new one (headwater tls issue) and copy it in "
            "place; it is reloaded without a restart"
            for who, end in ends if isinstance(end, int) and end < soon]


@cluster_app.command("status")
def cluster_status(ctx: typer.Context,
                   output: str = typer.Option("table", "--output", "-O", help=OUTPUT_HELP,
                                              autocompletion=OUTPUT_CHOICES)
                   ) -> None:
    """The SC, its SPUs and partition health. Exits 1 if a partition has no live leader."""
    _check_output(output)

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with _admin(ctx) as admin:
            return await admin.cluster_status(), await admin.list_spus()

    status, spus = run(main, what="cluster status", target_=target(ctx))
    if output == "json":
        print_json({"sc": status, "spus": spus})
    else:
        typer.echo(f"SC          {target(ctx).sc}  cluster {status['cluster']}  "
                   f"up {status['uptime_s']:.0f}s")
        typer.echo(f"SPUs        {status['spus_online']}/{status['spus_total']} online")
        typer.echo(f"topics      {status['topics']}  partitions {status['partitions']}  "
                   f"without live leader {status['partitions_offline']}")
        if status["waiting_topics"]:
            typer.echo(f"waiting     {', '.join(status['waiting_topics'])}")
        if status.get("tls_not_after") is not None:
            typer.echo(f"TLS         SC certificate {_expiry(status['tls_not_after'])}")
        plane = status.get("control_plane")
        if plane:
            typer.echo(f"metadata    etcd {plane.get('prefix')}  active SC {plane.get('active')}")
            members = plane.get("members") or []
            if members:
                typer.echo("")
                print_table([[m.get("name"), m.get("endpoint"),
                              "healthy" if m.get("healthy") else "UNREACHABLE",
                              "leader" if m.get("leader") else "",
                              human_bytes(m.get("db_size"))] for m in members],
                            ["ETCD MEMBER", "ENDPOINT", "HEALTH", "RAFT", "DB SIZE"])
        if spus:
            typer.echo("")
            print_table([_spu_row(s) for s in spus],
                        ["ID", "STATUS", "ADDRESS", "RACK", "PARTITIONS", "CPU%", "RSS",
                         "DISK FREE", "TEMP", "CERT"])
        for line in _expiring(status, spus):
            typer.secho(f"warning: {line}", fg=typer.colors.YELLOW, err=True)
    if status["partitions_offline"]:
        raise typer.Exit(1)

