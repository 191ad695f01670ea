"""Consumer groups against real processes: an SC, an SPU and member processes that
are ``headwater consume --group`` itself, writing what they print to files.

Members join, leave (Ctrl-C) and die (SIGKILL); after every rebalance the
assignment must be disjoint and complete, and records produced afterwards must
be printed by exactly their partition's owner. The soak kills and restarts
members while a producer runs and checks that every acknowledged record was
printed at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.client import Admin, Consumer, Offset, Producer
from edge.net.connection import ClientConnection
from edge.protocol.errors import InvalidRequest, StaleGeneration, UnknownMember
from edge.protocol.groups import GroupRow
from edge.protocol.messages import ApiKey
from edge.testing import LocalCluster

SESSION_S = 2.0


class Members:
    """``headwater consume --group`` processes; each incarnation prints to its own file."""

    def __init__(self, cluster: LocalCluster, directory: Path, topic: str, group: str) -> None:
        self.cluster = cluster
        self.directory = directory
        self.topic = topic
        self.group = group
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.runs = 0
        # Block-buffered stdout, as when a user redirects it: what a member printed
        # but did not flush is lost with it.
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}

    def start(self, name: str) -> None:
        self.runs += 1
        out = (self.directory / f"{name}.{self.runs}.out").open("wb")
        err = (self.directory / f"{name}.{self.runs}.err").open("wb")
        with out, err:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "edge.cli.main", "--sc", self.cluster.sc_addr, "consume",
                 self.topic, "--group", self.group, "-B", "--output", "json",
                 "--session-timeout", f"{SESSION_S:g}s"],
                stdout=out, stderr=err, start_new_session=True, env=self.env)

    def stop(self, name: str, sig: int = signal.SIGINT) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        return proc.wait(timeout=15)

    def close(self) -> None:
        for name in list(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop(name, signal.SIGKILL)

    def printed(self, name: str | None = None) -> Iterator[tuple[str, int, int]]:
        """(incarnation file, partition, offset) of every complete line printed."""
        for path in sorted(self.directory.glob(f"{name or '*'}.*.out")):
            for line in path.read_bytes().split(b"\n")[:-1]:
                row = json.loads(line)
                yield path.name, row["partition"], row["offset"]


@pytest.fixture
async def members(cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[Members]:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic("events", partitions=6)
        await admin.wait_ready("events")
    out = tmp_path / "members"
    out.mkdir()
    m = Members(cluster, out, "events", "workers")
    try:
        yield m
    finally:
        m.close()


async def group(cluster: LocalCluster, name: str = "workers") -> GroupRow | None:
    async with Admin(cluster.sc_addr) as admin:
        rows = await admin.list_groups(name)
    return rows[0] if rows else None


async def settled(cluster: LocalCluster, count: int, timeout: float = 15.0) -> GroupRow:
    """The group once it is stable with ``count`` members; checks the assignment."""
    async with asyncio.timeout(timeout):
        while True:
            row = await group(cluster)
            if row is not None and row.state == "stable" and len(row.members) == count:
                break
            await asyncio.sleep(0.05)
    every = sorted(p for m in row.members for p in m.partitions)
    assert every == list(range(6)), row  # disjoint and complete
    assert all(p.member is not None for p in row.partitions)
    return row


async def produce(cluster: LocalCluster, count: int, tag: bytes) -> set[tuple[int, int]]:
    """``count`` records spread over the six partitions; their (partition, offset)."""
    async with Producer(cluster.sc_addr, linger_ms=2) as p:
        futures = [await p.send("events", tag + b"%d" % i, partition=i % 6)
                   for i in range(count)]
        await p.flush()
        return {((r := await f).partition, r.offset) for f in futures}


async def printed_all(members: Members, wanted: set[tuple[int, int]],
                      timeout: float = 30.0) -> None:
    """Wait until every record of ``wanted`` was printed; fail naming the missing."""
    missing = set(wanted)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while missing:
                missing = wanted - {(p, o) for _, p, o in members.printed()}
                await asyncio.sleep(0.1)
    assert not missing, f"{len(missing)} records never printed, e.g. {sorted(missing)[:5]}"


async def test_join_leave_and_death_rebalance_with_one_reader_per_partition(
        cluster: LocalCluster, members: Members) -> None:
    members.start("a")
    first = await settled(cluster, 1)
    assert first.members[0].partitions == (0, 1, 2, 3, 4, 5)
    members.start("b")
    members.start("c")
    started = time.monotonic()
    three = await settled(cluster, 3)
    joined_s = time.monotonic() - started
    owners = {p.partition: p.member for p in three.partitions}
    clients = {m.member: m.client for m in three.members}

    # After the rebalance each new record is printed by its partition's owner only.
    fresh = await produce(cluster, 120, b"after-join-")
    await printed_all(members, fresh)
    by_file: dict[int, set[str]] = {}
    for name, p, o in members.printed():
        if (p, o) in fresh:
            by_file.setdefault(p, set()).add(name)
    assert all(len(names) == 1 for names in by_file.values()), by_file
    assert len(set(clients.values())) == 3
    assert len({owners[p] for p in range(6)}) == 3

    leave = time.monotonic()
    assert members.stop("b") == 130  # Ctrl-C: commits, then leaves the group
    await settled(cluster, 2)
    left_s = time.monotonic() - leave

    death = time.monotonic()
    members.stop("c", signal.SIGKILL)
    one = await settled(cluster, 1, timeout=SESSION_S + 10)
    died_s = time.monotonic() - death
    assert one.members[0].partitions == (0, 1, 2, 3, 4, 5)
    assert died_s > SESSION_S / 2  # only the session timeout tells a death (beats: 1/3)
    assert left_s < SESSION_S  # a leave does not wait for it
    late = await produce(cluster, 60, b"after-death-")
    await printed_all(members, late)
    print(f"rebalance after 2 joins {joined_s:.2f}s, leave {left_s:.2f}s, "
          f"SIGKILL {died_s:.2f}s (session {SESSION_S}s)")


async def _raw(cluster: LocalCluster) -> ClientConnection:
    return await ClientConnection(cluster.sc_addr).connect()


async def _request(conn: ClientConnection, api: ApiKey, **fields: Any) -> dict[Any, Any]:
    meta, _ = await conn.request(api, **fields)
    return meta


async def test_commit_from_a_stale_generation_is_refused(cluster: LocalCluster,
                                                         members: Members) -> None:
    conn = await _raw(cluster)
    try:
        a = await _request(conn, ApiKey.GROUP_JOIN, group="fenced", topic="events",
                           session_timeout_ms=5000)
        beat = await _request(conn, ApiKey.GROUP_HEARTBEAT, group="fenced",
                              member=a["member"], generation=a["generation"])
        assert [x["partition"] for x in beat["assignment"]] == list(range(6))
        await _request(conn, ApiKey.GROUP_COMMIT, group="fenced", member=a["member"],
                       generation=a["generation"], offsets=[{"partition": 0, "offset": 0}])
        b = await _request(conn, ApiKey.GROUP_JOIN, group="fenced", topic="events",
                           session_timeout_ms=5000)
        for member in (a, b):  # both acknowledge the new generation: it is handed out
            await _request(conn, ApiKey.GROUP_HEARTBEAT, group="fenced",
                           member=member["member"], generation=b["generation"])
        with pytest.raises(StaleGeneration) as stale:
            await _request(conn, ApiKey.GROUP_COMMIT, group="fenced", member=a["member"],
                           generation=a["generation"],
                           offsets=[{"partition": 0, "offset": 0}])
        assert stale.value.data["generation"] == b["generation"]
        with pytest.raises(UnknownMember):
            await _request(conn, ApiKey.GROUP_COMMIT, group="fenced", member="nobody",
                           generation=b["generation"],
                           offsets=[{"partition": 0, "offset": 0}])
        with pytest.raises(InvalidRequest) as bad:
            await _request(conn, ApiKey.GROUP_COMMIT, group="fenced", member=a["member"],
                           generation=b["generation"],
                           offsets=[{"partition": 0, "offset": -1}])
        assert bad.value.data["field"] == "offset"
        # The SC is still serving, and the refused commits stored nothing.
        async with Admin(cluster.sc_addr) as admin:
            (row,) = await admin.list_groups("fenced")
        assert {p.partition: p.offset for p in row.partitions}[0] == 0
        assert row.generation == b["generation"]
    finally:
        await conn.close()


def cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli.main", "--sc", cluster.sc_addr,
                           *args], capture_output=True, text=True, timeout=60, check=False)


async def first_offsets(cluster: LocalCluster, topic: str, name: str,
                        start: Offset | None = None) -> dict[int, int]:
    """The first offset a new member of ``name`` reads in each partition."""
    seen: dict[int, int] = {}
    async with Consumer(cluster.sc_addr, topic, group=name, offset=start or Offset.end(),
                        session_timeout_s=SESSION_S) as c, asyncio.timeout(15):
        async for chunk in c.batches():
            seen.setdefault(chunk.partition, chunk.records[0].offset)
            if len(seen) == 6:
                return seen
    raise AssertionError(seen)


async def test_reset_and_delete(cluster: LocalCluster, members: Members) -> None:
    await produce(cluster, 60, b"x")  # ten records per partition
    members.start("a")
    await settled(cluster, 1)
    refused = cli(cluster, "consumer", "reset", "workers", "--topic", "events",
                  "--to-offset", "3")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "it has 1 live member(s)" in refused.stderr
    assert cli(cluster, "consumer", "delete", "workers").returncode == 1
    assert members.stop("a") == 130

    # HW and lag are what the leaders last reported: a heartbeat old at most.
    async with asyncio.timeout(10):
        while True:
            listed = cli(cluster, "consumer", "list")
            assert listed.returncode == 0
            lines = listed.stdout.splitlines()
            if all(line.split()[8] != "-" for line in lines[1:]):
                break
            await asyncio.sleep(0.2)
    assert lines[0].split() == ["GROUP", "TOPIC", "STATE", "GEN", "PARTITION", "MEMBER",
                                "CLIENT", "OFFSET", "HW", "LAG"]
    assert [line.split()[7:] for line in lines[1:]] == [["10", "10", "0"]] * 6
    end = lines[0].index("OFFSET") + len("OFFSET")  # numbers right-aligned under it
    assert {line[end - 2:end] for line in lines[1:]} == {"10"}
    as_json = json.loads(cli(cluster, "consumer", "list", "-O", "json").stdout)
    assert [p["lag"] for p in as_json["groups"][0]["partitions"]] == [0] * 6

    done = cli(cluster, "consumer", "reset", "workers", "--topic", "events", "--to-offset", "3")
    assert done.returncode == 0, done.stderr
    assert await first_offsets(cluster, "events", "workers") == dict.fromkeys(range(6), 3)
    assert cli(cluster, "consumer", "reset", "workers", "--topic", "events",
               "--to-earliest", "-p", "2").returncode == 0
    async with Admin(cluster.sc_addr) as admin:
        (row,) = await admin.list_groups("workers")
    assert row.state == "empty"
    assert {p.partition: p.offset for p in row.partitions}[2] == 0
    assert cli(cluster, "consumer", "reset", "workers", "--topic", "events",
               "--to-time", str(int(time.time() * 1000) + 60_000)).returncode == 0
    async with Admin(cluster.sc_addr) as admin:
        (row,) = await admin.list_groups("workers")
    assert [p.offset for p in row.partitions] == [10] * 6  # nothing that late: the end

    both = cli(cluster, "consumer", "reset", "workers", "--topic", "events", "--to-earliest",
               "--to-latest")
    assert both.returncode == 2
    assert "choose one of" in both.stderr
    deleted = cli(cluster, "consumer", "delete", "workers")
    assert deleted.returncode == 0, deleted.stderr
    assert "6 stored position(s)" in deleted.stdout
    again = cli(cluster, "consumer", "delete", "workers")
    assert again.returncode == 1
    assert "does not exist" in again.stderr
    assert await first_offsets(cluster, "events", "workers",
                               Offset.beginning()) == dict.fromkeys(range(6), 0)


async def test_members_killed_and_restarted_while_producing_skip_nothing(
        cluster: LocalCluster, members: Members) -> None:
    names = ["a", "b", "c"]
    for name in names:
        members.start(name)
    await settled(cluster, 3)
    acked: set[tuple[int, int]] = set()
    stop = asyncio.Event()

    async def producer() -> None:
        async with Producer(cluster.sc_addr, linger_ms=5) as p:
            i = 0
            while not stop.is_set():
                futures = [await p.send("events", b"r%d" % (i + k), partition=(i + k) % 6)
                           for k in range(20)]
                i += 20
                for f in futures:
                    r = await f
                    acked.add((r.partition, r.offset))
                await asyncio.sleep(0.02)

    rng = random.Random(9)
    kills = 0
    task = asyncio.create_task(producer())
    try:
        deadline = time.monotonic() + 24
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            victims = rng.sample([n for n in names if n in members.procs], rng.choice([1, 2]))
            for name in victims:
                members.stop(name, signal.SIGKILL)
                kills += 1
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            for name in victims:
                members.start(name)
    finally:
        stop.set()
        await task
    await printed_all(members, acked, timeout=60)
    printed = [(p, o) for _, p, o in members.printed()]
    duplicates = len(printed) - len(set(printed))
    print(f"{len(acked)} acknowledged records, {kills} SIGKILLs over {members.runs} member "
          f"runs: none skipped, {duplicates} printed twice")


async def test_python_member_commits_what_it_processed_and_the_next_resumes(
        cluster: LocalCluster, members: Members) -> None:
    stored = await produce(cluster, 60, b"p")
    handed = 0
    async with Consumer(cluster.sc_addr, "events", group="app", offset=Offset.beginning(),
                        session_timeout_s=SESSION_S) as c, asyncio.timeout(15):
        async for _ in c:
            handed += 1
            if handed == 15:
                break
        committed = await c.commit()
    assert sum(committed.values()) == 15  # the position after each record handed out
    rest: list[tuple[int, int]] = []
    async with Consumer(cluster.sc_addr, "events", group="app", offset=Offset.beginning(),
                        session_timeout_s=SESSION_S) as c, asyncio.timeout(15):
        async for chunk in c.batches():
            rest.extend((chunk.partition, r.offset) for r in chunk.records)
            if len(rest) >= 45:
                break
    assert len(rest) == 45
    assert set(rest) == stored - {(p, o) for p, o in stored if o < committed.get(p, 0)}
    with pytest.raises(ValueError, match="group= does not combine"):
        Consumer(cluster.sc_addr, "events", group="app", partition=0)


async def test_members_rejoin_after_an_sc_restart_and_positions_survive(
        cluster: LocalCluster, members: Members) -> None:
    members.start("a")
    await settled(cluster, 1)
    before = await produce(cluster, 60, b"before-")
    await printed_all(members, before)
    async with asyncio.timeout(10):  # the member commits every second
        while [p.lag for p in (await settled(cluster, 1)).partitions] != [0] * 6:
            await asyncio.sleep(0.1)
    generation = (await settled(cluster, 1)).generation
    await cluster.kill_sc()
    await cluster.start_sc()
    row = await settled(cluster, 1, timeout=SESSION_S + 15)  # the member joined again
    assert row.generation > generation
    after = await produce(cluster, 60, b"after-")
    await printed_all(members, after)
    printed = [(p, o) for _, p, o in members.printed()]
    assert len(printed) == len(set(printed))  # it resumed at the stored positions
