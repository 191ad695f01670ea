"""``headwater demo``: a local cluster with sensor readings flowing through it."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from edge.cli.common import fail, setup_logging
from edge.config import ConfigError

if TYPE_CHECKING:
    from edge.client import Consumer, Offset, Producer


def demo(
    data_dir: Path | None = typer.Option(None, help="Keep the data here (default a temp dir)."),
    readings: int = typer.Option(40, help="Sensor readings to stream live."),
    burst: int = typer.Option(200_000, help="Records to send in the throughput burst."),
) -> None:
    """Start an SC and an SPU, stream sensor readings through a topic, then a burst."""
    setup_logging("error")
    try:
        asyncio.run(_demo(data_dir, readings, burst))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except ConfigError as exc:
        fail(str(exc), 2)


async def _demo(data_dir: Path | None, readings: int, burst: int) -> None:
    from edge.cli.daemons import local_secret
    from edge.client import Admin, Consumer, Offset, Producer
    from edge.sc.config import ScConfig
    from edge.sc.service import Sc
    from edge.spu.config import SpuConfig
    from edge.spu.service import Spu

    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="headwater-demo-")
        data_dir = Path(tmp.name)
    secret = local_secret(data_dir)
    sc = Sc(ScConfig(data_dir=data_dir / "sc", public_addr="127.0.0.1:0",
                     private_addr="127.0.0.1:0", cluster_secret=secret))
    await sc.start()
    spu = Spu(SpuConfig(id=1, data_dir=data_dir / "spu-1", public_addr="127.0.0.1:0",
                        private_addr="127.0.0.1:0", sc=sc.private_addr, cluster_secret=secret))
    await spu.start()
    try:
        assert spu.link is not None
        async with asyncio.timeout(10):
            await spu.link.registered_once.wait()
        typer.secho(f"1. SC listening on {sc.public_addr}, SPU 1 on {spu.public_addr} "
                    f"(data in {data_dir})", bold=True)
        async with Admin(sc.public_addr) as admin:
            await admin.create_topic("sensors", partitions=1)
            await admin.wait_ready("sensors")
            await admin.create_topic("burst", partitions=1)
            await admin.wait_ready("burst")
        typer.secho("2. created topics 'sensors' and 'burst'", bold=True)
        typer.secho(f"3. streaming {readings} readings: producer -> SPU (fsync) -> consumer",
                    bold=True)
        await _live(sc.public_addr, readings, Producer, Consumer, Offset)
        typer.secho(f"4. burst: {burst:,} records of 100 bytes, acknowledged after fsync",
                    bold=True)
        await _burst(sc.public_addr, burst, Producer, Consumer, Offset)
        typer.secho("done. Next: run `headwater local` and use `headwater produce` / "
                    "`headwater consume` against it (see README).", bold=True)
    finally:
        await spu.stop()
        await sc.stop()
        if tmp is not None:
            tmp.cleanup()


async def _live(sc: str, count: int, producer_cls: type[Producer],
                consumer_cls: type[Consumer], offset_cls: type[Offset]) -> None:
    async with consumer_cls(sc, "sensors", offset=offset_cls.beginning()) as consumer:

        async def show() -> None:
            seen = 0
            async for r in consumer:
                reading = json.loads(r.value)
                lag_ms = time.time() * 1000 - reading["t"]
                typer.echo(f"   offset {r.offset:>3}  {(r.key or b'?').decode():<8} "
                           f"{reading['celsius']:6.2f} C   delivered {lag_ms:5.1f} ms after "
                           "the reading")
                seen += 1
                if seen == count:
                    return

        reader = asyncio.create_task(show())
        async with producer_cls(sc, linger_ms=0) as producer:
            for i in range(count):
                device = f"probe-{i % 3}"
                celsius = 21 + 3 * math.sin(i / 5) + random.uniform(-0.2, 0.2)
                value = json.dumps({"t": time.time() * 1000, "celsius": round(celsius, 2)})
                await producer.send("sensors", value.encode(), key=device.encode(),
                                    partition=0)
                await asyncio.sleep(0.1)
        async with asyncio.timeout(10):
            await reader


async def _burst(sc: str, count: int, producer_cls: type[Producer],
                 consumer_cls: type[Consumer], offset_cls: type[Offset]) -> None:
    payload = b"x" * 100
    start = time.perf_counter()
    with typer.progressbar(length=count, label="   producing", file=sys.stderr) as bar:
        async with producer_cls(sc) as producer:
            for i in range(count):
                await producer.send("burst", payload)
                if i % 5000 == 4999:
                    bar.update(5000)
            await producer.flush()
            bar.update(count % 5000)
    secs = time.perf_counter() - start
    typer.echo(f"   produced {count:,} records in {secs:.2f}s = {count / secs:,.0f} records/s")
    start = time.perf_counter()
    async with consumer_cls(sc, "burst", offset=offset_cls.beginning(),
                            stop_at_end=True) as consumer:
        got = sum([len(chunk.records) async for chunk in consumer.batches()])
    secs = time.perf_counter() - start
    if got != count:
        fail(f"read back {got} records, expected {count}")
    typer.echo(f"   read back all {got:,} records in {secs:.2f}s = {got / secs:,.0f} records/s")
