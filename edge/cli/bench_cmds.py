"""``headwater bench produce|consume|latency``."""

from __future__ import annotations

import sys
from typing import Any

import typer

from edge import bench
from edge.cli.common import complete_from, fail, run, target
from edge.protocol.messages import Acks

bench_app = typer.Typer(help="Measure throughput and latency against a running cluster.",
                        no_args_is_help=True)


def _report(name: str, r: bench.BenchResult) -> None:
    typer.echo(f"{name}: {r.records} records in {r.seconds:.2f}s")
    typer.echo(f"  {r.records_per_s:,.0f} records/s   {r.mb_per_s:.1f} MB/s")
    if r.p50_ms is not None and r.p99_ms is not None:
        typer.echo(f"  latency p50 {r.p50_ms:.2f} ms   p99 {r.p99_ms:.2f} ms")


def _with_topic(ctx: typer.Context, topic: str,
                body: Any) -> bench.BenchResult:
    sc = target(ctx).sc

    async def main() -> bench.BenchResult:
        await bench.ensure_topic(sc, topic)
        result: bench.BenchResult = await body(sc)
        return result

    return run(main, what="bench", target_=target(ctx))


@bench_app.command("produce")
def produce(ctx: typer.Context,
            topic: str = typer.Option("bench", help="Topic (created if missing)."),
            records: int = typer.Option(1_000_000, "--records", "-n", help="Records to send."),
            size: int = typer.Option(100, help="Bytes per record."),
            acks: str = typer.Option("leader", help="none, leader or all.",
                                     autocompletion=complete_from("none", "leader", "all")),
            batch_bytes: int = typer.Option(64 * 1024, help="Producer batch size."),
            linger_ms: float = typer.Option(5.0, help="Producer linger.")) -> None:
    """Records/s, MB/s and send-to-ack latency of one producer."""
    try:
        acks_value = Acks.parse(acks)
    except ValueError as exc:
        fail(str(exc), 2)
    with typer.progressbar(length=records, label="producing", file=sys.stderr) as bar:
        result = _with_topic(ctx, topic, lambda sc: bench.produce(
            sc, topic, records=records, size=size, acks=acks_value, batch_bytes=batch_bytes,
            linger_ms=linger_ms, progress=bar.update))
    _report("produce", result)


@bench_app.command("consume")
def consume(ctx: typer.Context,
            topic: str = typer.Option("bench", help="Topic to read from the beginning."),
            records: int = typer.Option(1_000_000, "--records", "-n",
                                        help="Records to read (produce them first).")) -> None:
    """Records/s and MB/s of one consumer reading a backlog."""
    with typer.progressbar(length=records, label="consuming", file=sys.stderr) as bar:
        result = _with_topic(ctx, topic, lambda sc: bench.consume(
            sc, topic, records=records, progress=bar.update))
    if result.records < records:
        fail(f"only {result.records} records in {topic}; run `headwater bench produce` first")
    _report("consume", result)


@bench_app.command("latency")
def latency(ctx: typer.Context,
            topic: str = typer.Option("bench-latency", help="Topic (created if missing)."),
            rate: int = typer.Option(1000, help="Records per second."),
            seconds: float = typer.Option(10.0, help="How long to run.")) -> None:
    """End-to-end latency (send → consumer) at a fixed rate."""
    typer.echo(f"producing {rate} records/s for {seconds:.0f}s ...", err=True)
    result = _with_topic(ctx, topic, lambda sc: bench.end_to_end(
        sc, topic, rate=rate, seconds=seconds))
    _report("end to end", result)


