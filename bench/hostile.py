"""Hostile soak: a healthy producer and consumer while another process attacks all four ports.

    .venv/bin/python bench/hostile.py [--minutes 3] [--rate 200] [--keep DIR]

Starts an SC and two SPUs (separate processes, default limits, log level info)
and a topic of one partition replicated twice. The healthy pair: an idempotent
producer with acks=all sending ``--rate`` records a second, and a consumer
following the partition. Meanwhile a second process (this script with
``--attack``) throws at the SC and SPU public and private ports: malformed frames
(random bytes, impossible lengths, non-map metadata, unknown APIs, 5000-digit
integers), spoofed peer requests (replica fetches with forged epochs and replica
ids, bogus registrations, heartbeats and ISR changes), slow connections (half a
frame, then a byte every few seconds), half-closed and silent connections,
oversized pipelines (30k long polls, 20k requests whose answers are never read),
half-sent 8 MiB frames on many connections, and bursts up to the connection cap.

At the end every acknowledged record is looked for in the partition. Reported:
records acknowledged and lost, the largest gap between acks and the largest ack
latency, the largest RSS of each process, whether every server is up, and how
many lines each log grew by. Exits 0 when nothing acknowledged was lost, the ack
gap stayed under 1 s, each SPU under 100 MB, all servers are up and the logs grew
by fewer than 400 lines; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.client import Acks, Admin, Consumer, Offset, Producer  # noqa: E402
from edge.net.connection import ClientConnection, split_addr  # noqa: E402
from edge.protocol.framing import encode_frame  # noqa: E402
from edge.protocol.messages import ApiKey  # noqa: E402
from edge.testing import LocalCluster  # noqa: E402

TOPIC = "healthy"
HUGE = 10**5000
RSS_LIMIT_MB = 100.0
ACK_GAP_LIMIT_S = 1.0
LOG_GROWTH_LIMIT = 400


# -- the attacker (a process of its own) --------------------------------------------------


@dataclass
class Attacks:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n


async def _open(addr: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.wait_for(asyncio.open_connection(*split_addr(addr)), 5)
    except (OSError, TimeoutError):
        return None


def _request(api: int, **fields: Any) -> bytes:
    return encode_frame({"api": api, "v": 0, "id": random.randrange(1, 2**31), **fields})


def _garbage() -> bytes:
    pick = random.randrange(6)
    if pick == 0:
        return os.urandom(random.randrange(1, 4096))
    if pick == 1:
        return struct.pack(">II", 2**31, 16)  # far past the frame limit
    if pick == 2:
        return struct.pack(">II", 20, 4096) + b"x" * 20  # meta longer than the frame
    if pick == 3:
        meta = cbor2.dumps([1, 2, 3])
        return struct.pack(">II", 4 + len(meta), len(meta)) + meta
    if pick == 4:
        return _request(random.randrange(100, 2**16))
    return _request(random.choice([2, 3, 4, 13, 40]), topic=TOPIC, partition=HUGE,
                    offset=HUGE, epoch=HUGE, name=HUGE)


async def malformed(addrs: list[str], stats: Attacks, deadline: float) -> None:
    while time.monotonic() < deadline:
        for addr in addrs:
            conn = await _open(addr)
            if conn is None:
                continue
            with contextlib.suppress(OSError):
                conn[1].write(_garbage())
                await asyncio.wait_for(conn[0].read(65536), 0.5)
            with contextlib.suppress(Exception):
                conn[1].transport.abort()
            stats.add("malformed frames")
        await asyncio.sleep(0.02)


def _spoofs(spu_private: bool) -> list[bytes]:
    if spu_private:
        return [
            _request(40, topic=TOPIC, partition=0, epoch=2**62, replica=4242, offset=0),
            _request(40, topic=TOPIC, partition=0, epoch=0, replica=2, offset=0,
                     max_wait_ms=5000),
            _request(41, topic=TOPIC, partition=0, epoch=2**40, leader_epoch=2**62),
        ]
    return [
        _request(30, spu=-1, public="\0\0\0\0\0", private="../../etc"),
        _request(30, spu=2**63, public="a:1", private="b:2"),
        _request(31, spu=99, health={"cpu": HUGE}, partitions=[], stats={}),
        _request(32, spu=1, topic=TOPIC, partition=0, epoch=2**62, isr=[4242]),
    ]


async def spoofed(spu_private: list[str], sc_private: str, stats: Attacks,
                  deadline: float) -> None:
    targets = [(a, _spoofs(True)) for a in spu_private] + [(sc_private, _spoofs(False))]
    while time.monotonic() < deadline:
        for addr, frames in targets:
            conn = await _open(addr)
            if conn is None:
                continue
            with contextlib.suppress(OSError, TimeoutError):
                for frame in frames:
                    conn[1].write(frame)
                await asyncio.wait_for(conn[0].read(65536), 0.5)
            conn[1].transport.abort()
            stats.add("spoofed peer requests", len(frames))
        await asyncio.sleep(0.05)


async def _slow_one(addr: str, stats: Attacks, deadline: float) -> None:
    conn = await _open(addr)
    if conn is None:
        return
    reader, writer = conn
    kind = random.randrange(3)
    try:
        if kind == 0:  # half a frame, then a byte every few seconds
            writer.write(struct.pack(">II", 1 << 20, 16) + b"s" * 100)
            while time.monotonic() < deadline and not writer.is_closing():
                await asyncio.sleep(3)
                if reader.at_eof():
                    break
                writer.write(b"s")
            stats.add("slow frames")
        elif kind == 1:  # half a frame, then half-closed
            writer.write(struct.pack(">II", 4096, 16) + b"h" * 10)
            writer.write_eof()
            stats.add("half-closed connections")
        else:  # connected, silent
            stats.add("silent connections")
        await asyncio.wait_for(reader.read(), max(deadline - time.monotonic(), 0.1))
    except (OSError, TimeoutError):
        pass
    finally:
        writer.transport.abort()


async def slow(addrs: list[str], stats: Attacks, deadline: float, per_port: int = 20) -> None:
    tasks: set[asyncio.Task[None]] = set()
    while time.monotonic() < deadline:
        while len(tasks) < per_port * len(addrs):
            task = asyncio.create_task(_slow_one(random.choice(addrs), stats, deadline))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.2)
    for task in list(tasks):
        task.cancel()


async def _pipeline(addr: str, frame: bytes, count: int, hold_s: float) -> None:
    conn = await _open(addr)
    if conn is None:
        return
    with contextlib.suppress(OSError):
        conn[1].write(frame * count)
        await asyncio.sleep(hold_s)  # never reads an answer
    conn[1].transport.abort()


async def _big_frames(addr: str, connections: int, hold_s: float) -> None:
    conns = [c for c in [await _open(addr) for _ in range(connections)] if c is not None]
    for _, writer in conns:
        writer.write(struct.pack(">II", 8 << 20, 16) + b"z" * (7 << 20))
    await asyncio.sleep(hold_s)
    for _, writer in conns:
        writer.transport.abort()


async def _cap_burst(addr: str, hold_s: float) -> int:
    held: list[ClientConnection] = []
    refused = 0
    for _ in range(600):
        try:
            held.append(await ClientConnection(addr).connect(handshake=False))
            await held[-1].request(ApiKey.API_VERSIONS, timeout=5)
        except Exception:
            refused += 1
            held.pop()
            break
    await asyncio.sleep(hold_s)
    for conn in held:
        await conn.close()
    return refused


async def oversized(addrs: dict[str, str], stats: Attacks, deadline: float) -> None:
    long_poll = _request(2, topic=TOPIC, partition=0, offset=0, max_wait_ms=60_000)
    watch = _request(17)
    cycle = 0
    while time.monotonic() < deadline:
        jobs = [_pipeline(addrs["spu"], long_poll, 30_000, 5),
                _pipeline(addrs["sc"], watch, 30_000, 5)]
        jobs += [_pipeline(a, _request(0), 20_000, 5) for a in addrs.values()]
        jobs.append(_big_frames(addrs["spu"], 20, 5))
        await asyncio.gather(*jobs, return_exceptions=True)
        stats.add("pipelined long polls", 60_000)
        stats.add("pipelined unread requests", 20_000 * len(addrs))
        stats.add("half-sent 8 MiB frames", 20)
        if cycle % 3 == 0:
            stats.add("connections refused at the cap", await _cap_burst(addrs["spu"], 2))
        cycle += 1
        await asyncio.sleep(3)


async def attack(args: argparse.Namespace) -> None:
    addrs = json.loads(args.attack)
    deadline = time.monotonic() + args.minutes * 60
    stats = Attacks()
    every = list(addrs.values())
    privates = [addrs["spu-private"], addrs["spu2-private"]]
    await asyncio.gather(
        malformed(every, stats, deadline),
        spoofed(privates, addrs["sc-private"], stats, deadline),
        slow(every, stats, deadline),
        oversized({k: addrs[k] for k in ("spu", "spu-private", "sc", "sc-private")}, stats,
                  deadline),
        return_exceptions=True)
    print(json.dumps(stats.counts))


# -- the healthy pair and the watch over the servers ----------------------------------------


@dataclass
class Healthy:
    sent: int = 0
    acked: list[bytes] = field(default_factory=list)
    failed: int = 0
    max_latency_s: float = 0.0
    max_gap_s: float = 0.0
    last_ack: float = 0.0
    consumed: int = 0
    max_consume_gap_s: float = 0.0


async def _await_ack(h: Healthy, fut: Any, value: bytes, sent: float) -> None:
    try:
        await fut
    except Exception:
        h.failed += 1
        return
    now = time.monotonic()
    h.acked.append(value)
    h.max_latency_s = max(h.max_latency_s, now - sent)
    if h.last_ack:
        h.max_gap_s = max(h.max_gap_s, now - h.last_ack)
    h.last_ack = now


async def produce(sc: str, h: Healthy, deadline: float, rate: float) -> None:
    pending: set[asyncio.Task[None]] = set()
    async with Producer(sc, acks=Acks.ALL) as p:
        while time.monotonic() < deadline:
            value = f"{h.sent:010d}".encode()
            fut = await p.send(TOPIC, value)
            task = asyncio.create_task(_await_ack(h, fut, value, time.monotonic()))
            pending.add(task)
            task.add_done_callback(pending.discard)
            h.sent += 1
            await asyncio.sleep(1 / rate)
        await p.flush()
        await asyncio.gather(*pending)


async def consume(sc: str, h: Healthy, deadline: float) -> None:
    last = time.monotonic()
    async with Consumer(sc, TOPIC, offset=Offset.beginning()) as c:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                async for _ in c:
                    now = time.monotonic()
                    h.consumed += 1
                    h.max_consume_gap_s = max(h.max_consume_gap_s, now - last)
                    last = now


async def watch(procs: dict[str, psutil.Process], rss: dict[str, float], stop: asyncio.Event
                ) -> None:
    while not stop.is_set():
        for name, proc in procs.items():
            with contextlib.suppress(psutil.Error):
                rss[name] = max(rss.get(name, 0.0), proc.memory_info().rss / 2**20)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def _log_lines(c: LocalCluster) -> dict[str, int]:
    return {p.name: len(p.read_text(errors="replace").splitlines())
            for p in sorted(c.data_dir.glob("*.log"))}


async def _server_counters(c: LocalCluster) -> dict[str, Any]:
    out = {}
    for spu_id in c.spu_ids:
        async with ClientConnection(c.spu_addr(spu_id)) as conn:
            meta, _ = await conn.request(ApiKey.PARTITION_STATUS)
        out[f"spu-{spu_id}"] = meta["servers"]
    return out


async def soak(data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    async with LocalCluster(data_dir, spus=2, log_level="info") as c:
        async with Admin(c.sc_addr) as admin:
            await admin.create_topic(TOPIC, partitions=1, replication=2)
            await admin.wait_ready(TOPIC)
        addrs = {"sc": c.sc_addr, "sc-private": c.sc_private_addr, "spu": c.spu_addr(1),
                 "spu-private": f"127.0.0.1:{c.spu_ports[1][1]}", "spu2": c.spu_addr(2),
                 "spu2-private": f"127.0.0.1:{c.spu_ports[2][1]}"}
        procs = {"sc": psutil.Process(c.sc_proc.pid) if c.sc_proc else None,
                 **{f"spu-{i}": psutil.Process(p.pid) for i, p in c.spu_procs.items()}}
        lines_before = _log_lines(c)
        h, rss, stop = Healthy(), {}, asyncio.Event()
        watcher = asyncio.create_task(watch({k: v for k, v in procs.items() if v}, rss, stop))
        deadline = time.monotonic() + args.minutes * 60
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--attack", json.dumps(addrs), "--minutes",
            str(args.minutes), stdout=subprocess.PIPE)
        await asyncio.gather(produce(c.sc_addr, h, deadline, args.rate),
                             consume(c.sc_addr, h, deadline + 5))
        out, _ = await attacker.communicate()
        stop.set()
        await watcher
        async with Consumer(c.sc_addr, TOPIC, offset=Offset.beginning()) as reader:
            stored = [r.value for r in await reader.fetch_until_end()]
        counters = await _server_counters(c)
        up = {name: p is not None and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
              for name, p in procs.items()}
        lines_after = _log_lines(c)
    present = set(stored)
    return {
        "minutes": args.minutes, "rate": args.rate, "sent": h.sent, "acked": len(h.acked),
        "send_failures": h.failed, "lost": sum(1 for v in h.acked if v not in present),
        "duplicates": len(stored) - len(present), "consumed_live": h.consumed,
        "max_ack_gap_s": round(h.max_gap_s, 3), "max_ack_latency_s": round(h.max_latency_s, 3),
        "max_consume_gap_s": round(h.max_consume_gap_s, 3),
        "rss_max_mb": {k: round(v, 1) for k, v in rss.items()}, "servers_up": up,
        "log_growth_lines": {k: lines_after[k] - lines_before.get(k, 0) for k in lines_after},
        "attacks": json.loads(out.decode() or "{}"), "server_counters": counters,
    }


def verdict(r: dict[str, Any]) -> list[str]:
    problems = []
    if r["lost"]:
        problems.append(f"{r['lost']} acknowledged record(s) lost")
    if r["max_ack_gap_s"] >= ACK_GAP_LIMIT_S:
        problems.append(f"ack gap {r['max_ack_gap_s']} s >= {ACK_GAP_LIMIT_S} s")
    for name, mb in r["rss_max_mb"].items():
        if name.startswith("spu") and mb >= RSS_LIMIT_MB:
            problems.append(f"{name} RSS {mb} MB >= {RSS_LIMIT_MB} MB")
    problems += [f"{name} is down" for name, up in r["servers_up"].items() if not up]
    problems += [f"{name} grew by {n} lines" for name, n in r["log_growth_lines"].items()
                 if n >= LOG_GROWTH_LIMIT]
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=200.0, help="healthy records per second")
    ap.add_argument("--keep", type=Path, help="keep the cluster's data and logs here")
    ap.add_argument("--attack", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.attack:
        # Writes to connections the servers cut are the point; asyncio warns per write.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        asyncio.run(attack(args))
        return
    if args.keep:
        report = asyncio.run(soak(args.keep, args))
    else:
        with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
            report = asyncio.run(soak(Path(tmp), args))
    print(json.dumps(report, indent=2))
    problems = verdict(report)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
