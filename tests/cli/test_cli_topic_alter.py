"""``headwater topic alter`` against a real local cluster: the settings table, what
``topic describe`` shows afterwards, and refusals as one line with a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest

from edge.testing import LocalCluster

GIB = 1024**3


def headwater(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli.main", "--sc", cluster.sc_addr,
                           *args], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "HEADWATER_SC": ""})


def table(stdout: str) -> dict[str, list[str]]:
    """The settings table: SETTING -> the other cells of its row; every row's value
    starts under the VALUE heading (aligned columns)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["SETTING", "VALUE"])
    column = lines[start].index("VALUE")
    rows = {}
    for line in lines[start + 1:]:
        cells = re.split(r"\s{2,}", line.strip())
        assert line[column - 2:column] == "  ", stdout
        assert line[column] != " ", stdout
        rows[cells[0]] = cells[1:]
    return rows


def described(cluster: LocalCluster, name: str) -> dict[str, object]:
    out = headwater(cluster, "topic", "describe", name, "-O", "json")
    assert out.returncode == 0, out.stderr
    config: dict[str, object] = json.loads(out.stdout)["config"]
    return config


async def test_alter_shows_the_resulting_settings(cluster: LocalCluster) -> None:
    def cli() -> None:
        made = headwater(cluster, "topic", "create", "clia", "--segment-bytes", "64MiB")
        assert made.returncode == 0, made.stderr
        out = headwater(cluster, "topic", "alter", "clia", "--retention-time", "2d",
                        "--retention-bytes", "1GiB", "--segment-time", "1h",
                        "--min-insync-replicas", "1")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("topic clia altered\n")
        rows = table(out.stdout)
        assert rows["retention_ms"] == ["2d", "set"]
        assert rows["retention_bytes"] == ["1.0 GiB", "set"]
        assert rows["segment_ms"] == ["1h", "set"]
        assert rows["segment_bytes"] == ["64.0 MiB"]
        assert described(cluster, "clia") == {
            "segment_bytes": 64 * 1024**2, "retention_ms": 2 * 86_400_000,
            "retention_bytes": GIB, "segment_ms": 3_600_000, "min_insync_replicas": 1}
        text = headwater(cluster, "topic", "describe", "clia")
        assert "2d / 1.0 GiB" in text.stdout

        reset = headwater(cluster, "topic", "alter", "clia", "--reset", "retention-bytes",
                          "--reset", "min_insync_replicas", "--retention-time", "forever")
        assert reset.returncode == 0, reset.stderr
        rows = table(reset.stdout)
        assert rows["retention_bytes"] == ["default", "reset"]
        assert rows["retention_ms"] == ["forever", "set"]
        assert described(cluster, "clia") == {
            "segment_bytes": 64 * 1024**2, "retention_ms": None, "segment_ms": 3_600_000}

        dry = headwater(cluster, "topic", "alter", "clia", "--segment-bytes", "8MiB",
                        "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "dry run: nothing changed" in dry.stdout
        assert table(dry.stdout)["segment_bytes"] == ["8.0 MiB", "set"]
        assert described(cluster, "clia")["segment_bytes"] == 64 * 1024**2

    await asyncio.to_thread(cli)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["clib", "--min-insync-replicas", "3"], 1, "min_insync_replicas 3 exceeds replication 1"),
    (["clib", "--reset", "partitions"], 1, "partitions cannot change after creation"),
    (["clib", "--reset", "colour"], 1, "unknown topic setting(s): colour"),
    (["clib", "--compression", "lz4"], 1, "compression must be one of none, zlib"),
    (["missing", "--retention-time", "1d"], 1, "topic 'missing' does not exist"),
    (["clib", "--retention-bytes", "10B"], 2, "at least 4096 bytes"),
    (["clib"], 2, "nothing to change"),
])
async def test_refusals_are_one_line(cluster: LocalCluster, args: list[str], code: int,
                                     message: str) -> None:
    def cli() -> None:
        assert headwater(cluster, "topic", "create", "clib", "--retention-time", "1h"
                         ).returncode == 0
        out = headwater(cluster, "topic", "alter", *args)
        assert out.returncode == code, out
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert message in out.stderr
        assert out.stdout == ""
        assert described(cluster, "clib") == {"retention_ms": 3_600_000}

    await asyncio.to_thread(cli)
