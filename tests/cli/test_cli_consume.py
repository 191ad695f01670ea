"""``headwater consume`` against a real local cluster: closed pipes and partition errors."""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
import time
from pathlib import Path

from edge.client import Admin, Producer
from edge.testing import LocalCluster

ROOT = Path(__file__).resolve().parents[2]


async def shell(cluster: LocalCluster, command: str, stdin: bytes = b"",
                timeout: float = 60) -> tuple[int, str, str]:
    """Run COMMAND in sh with `headwater` meaning this tree's CLI, aimed at CLUSTER."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HEADWATER_SC": cluster.sc_addr,
           "HW": f"{sys.executable} -m edge.cli.main"}
    proc = await asyncio.create_subprocess_shell(
        command.replace("headwater ", "$HW "), env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _topic_with(cluster: LocalCluster, name: str, partitions: int, count: int) -> None:
    rc, _, err = await shell(cluster, f"headwater topic create {name} -p {partitions}")
    assert rc == 0, err
    lines = b"".join(b"%d\n" % i for i in range(count))
    rc, _, err = await shell(cluster, f"headwater produce {name}", stdin=lines)
    assert rc == 0, err


async def test_consume_into_closed_pipe_is_quiet(cluster: LocalCluster) -> None:
    # Far more than a pipe buffer, over several partitions: the writer hits the
    # closed pipe while every partition's stream is open.
    await _topic_with(cluster, "t", 3, 50_000)
    rc, out, err = await shell(cluster, "headwater consume t -B | head -1")
    assert rc == 0
    assert len(out.splitlines()) == 1
    assert err == ""


async def test_multi_partition_error_is_one_line(cluster: LocalCluster) -> None:
    # The topic goes away under a consumer of all its partitions: each partition's
    # stream fails at once, and the user gets one line, not an ExceptionGroup.
    await _topic_with(cluster, "t", 3, 30)
    consume = asyncio.create_task(shell(cluster, "headwater consume t -B"))
    await asyncio.sleep(3)
    rc, _, err = await shell(cluster, "headwater topic delete t")
    assert rc == 0, err
    rc, out, err = await asyncio.wait_for(consume, 60)
    assert len(out.split()) == 30
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: consume t: ")


async def test_consume_since_and_from_time(cluster: LocalCluster) -> None:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic("timed", partitions=1)
        await admin.wait_ready("timed")
    now = int(time.time() * 1000)
    stamps = [now - 3 * 3600_000 + i for i in range(4)] + [now - 60_000 + i for i in range(3)]
    async with Producer(cluster.sc_addr) as p:
        for i, ts in enumerate(stamps):  # one batch each: the time index finds batches
            await (await p.send("timed", b"r%d" % i, timestamp_ms=ts))
    rc, out, err = await shell(cluster, "headwater consume timed --since 10m -d")
    assert (rc, err) == (0, "")
    assert out.split() == ["r4", "r5", "r6"]
    two_hours_ago = datetime.datetime.fromtimestamp((now - 7200_000) / 1000).isoformat()
    rc, out, _ = await shell(cluster, f"headwater consume timed --from-time {two_hours_ago} -d")
    assert (rc, out.split()) == (0, ["r4", "r5", "r6"])
    rc, out, _ = await shell(cluster,
                             f"headwater consume timed --from-time {now - 4 * 3600_000} -d")
    assert (rc, out.split()) == (0, [f"r{i}" for i in range(7)])
    rc, out, err = await shell(cluster, "headwater consume timed --since 10 -d")
    assert rc == 2
    assert "--since" in err
    assert "needs a unit" in err
    rc, _, err = await shell(cluster, "headwater consume timed --since 1h -B -d")
    assert rc == 2
    assert "choose one of" in err
