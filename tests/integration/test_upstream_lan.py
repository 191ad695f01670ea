"""Exactly once from an edge site into the cloud through network faults, across real
hosts (network namespaces, ``tests/netlab.py``)::

    edge LAN 198.18.1.0/24                          cloud LAN 198.18.2.0/24
    e1      edge SC + SPU 1  ─┐                  ┌─  c1   cloud SC + SPU 1
    e2      SPU 2            ─┤                  ├─  c2   SPU 2
    e3      SPU 3            ─┼─ wan (router) ───┼─  c3   SPU 3
    sensor  the producer     ─┘  .1.254  .2.254  └─  app  reads the cloud
                                         └ the uplink

The uplink is the veth pair between the router and the cloud bridge: slowed to a
thin line both ways (``tc tbf``, plus a ``tc netem`` delay where the kernel has
netem: this machine's is built without it, and the test says so), cut without a
sound (a blackhole: packets vanish, nothing answers) or unplugged. A producer on
the edge LAN writes two partitions (replication 3, min ISR 2, ``upstream``) at a
steady rate with ``acks=all`` while
the test: cuts the uplink for a minute and SIGKILLs the edge leader of partition 0
meanwhile; once the link is back, SIGKILLs the holder of an uplink whose backlog is
on the way (connected, the cloud's answer not back yet); kills the cloud leader of
a home partition; flaps the link (two blackholes, two unplugs); kills the edge
node e1 whole (the site's SC and SPU 1). Then the producer stops, the uplinks
drain, and the project's history checker judges every send against the final
read of the cloud home partitions, with two more observers: the edge's final read
and a cloud consumer that followed the home partitions all along. Nothing
acknowledged may be lost, nothing twice, nothing out of order, nothing invented,
every record at its edge offset; and the cloud home partitions must equal the
edge partitions record for record (offset, value, timestamp).

Clients run as processes inside the namespaces: the producer writes one JSON line
per outcome; an ``agent`` on each side answers admin questions and final reads as
JSON lines (this module is also that program: ``python test_upstream_lan.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import netlab
import pytest
from checker import History, Report, check, value_of

from edge.secret import ClusterSecret

ROOT = Path(__file__).resolve().parents[2]
HW = [sys.executable, "-m", "edge.cli.main"]
ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                      str(ROOT / "tests" / "integration")]),
       "PYTHONUNBUFFERED": "1"}

TOPIC = "readings"
SITE = "orchard"
PARTITIONS = 2
EDGE_SC = "198.18.1.1:9003"
CLOUD_SC = "198.18.2.1:9003"
# The long cut: at least a minute, well past the uplink's 30 s request timeout, so
# every uplink has given up on its connection and gone offline before it ends.
CUT_S = 60.0
# Both directions of the uplink: a thin line (a poor LTE uplink), a few times what
# the producer writes, so the backlog after the cut takes seconds to cross.
UPLINK_RATE = "256kbit"
UPLINK_DELAY = "20ms"  # each way, where the kernel has netem
# Per partition: one record every 20 ms, at most 64 unanswered.
SEND_INTERVAL_S = 0.02
WINDOW = 64

pytestmark = [pytest.mark.root, pytest.mark.slow]


# -- the client programs (run inside the namespaces) --------------------------------


async def _produce(sc: str, out_path: str) -> None:
    """Send unique values (``p<partition>:<seq>``) to every partition until SIGTERM;
    one JSON line ``[partition, seq, outcome, offset]`` per answer, then ``"done"``."""
    from edge.client import Acks, Producer
    from edge.protocol.errors import HeadwaterError

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    out = open(out_path, "a", buffering=1)  # noqa: SIM115 - open for the whole run

    def record(part: int, seq: int, outcome: str, offset: int | None) -> None:
        out.write(json.dumps([part, seq, outcome, offset]) + "\n")

    async def answer(part: int, seq: int, fut: Any, slots: asyncio.Semaphore) -> None:
        try:
            meta = await fut
        except HeadwaterError:
            record(part, seq, "info", None)
        else:
            record(part, seq, "ok", meta.offset)
        finally:
            slots.release()

    async def one(p: Producer, part: int) -> None:
        slots = asyncio.Semaphore(WINDOW)
        pending: set[asyncio.Task[None]] = set()
        seq = 0
        while not stop.is_set():
            await slots.acquire()
            value = value_of(f"p{part}", seq).encode()
            try:
                fut = await p.send(TOPIC, value, partition=part)
            except HeadwaterError:
                # Raised while waiting for buffer space, the record may be queued.
                record(part, seq, "info", None)
                slots.release()
            else:
                task = asyncio.create_task(answer(part, seq, fut, slots))
                pending.add(task)
                task.add_done_callback(pending.discard)
            seq += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SEND_INTERVAL_S)
        with contextlib.suppress(HeadwaterError):
            await p.flush()
        await asyncio.gather(*pending)

    async with Producer(sc, acks=Acks.ALL, linger_ms=2, request_timeout_s=10.0,
                        delivery_timeout_s=60.0) as p:
        await asyncio.gather(*(one(p, part) for part in range(PARTITIONS)))
    out.write('"done"\n')
    out.close()


async def _follow(sc: str, out_path: str, partitions: list[int]) -> None:
    """Read the given partitions from the beginning and follow them until SIGTERM;
    one JSON line ``[partition, [[offset, value], ...]]`` per chunk received."""
    from edge.client import Consumer, Offset

    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with open(out_path, "a", buffering=1) as out:
        with contextlib.suppress(asyncio.CancelledError):
            async with Consumer(sc, TOPIC, partition=partitions,
                                offset=Offset.beginning()) as c:
                async for chunk in c.batches():
                    out.write(json.dumps([chunk.partition, [[r.offset, r.value.decode()]
                                                            for r in chunk.records]]) + "\n")
        out.write('"done"\n')


async def _ask(req: dict[str, Any]) -> Any:
    from edge.client import Admin, Consumer, Offset

    sc = req["sc"]
    op = req["op"]
    if op == "read":
        out: dict[str, list[list[Any]]] = {}
        for part in req["partitions"]:
            async with Consumer(sc, req["topic"], partition=part,
                                offset=Offset.beginning()) as c:
                out[str(part)] = [[r.offset, r.value.decode(), r.timestamp]
                                  for r in await c.fetch_until_end()]
        return out
    async with Admin(sc) as admin:
        if op == "spus":
            return await admin.list_spus()
        if op == "partitions":
            return await admin.list_partitions(req["topic"])
        if op == "create":
            await admin.create_topic(req["topic"], partitions=req["partitions"],
                                     replication=req["replication"], config=req["config"])
            await admin.wait_ready(req["topic"], timeout=20)
            return True
        if op == "upstream":
            return await admin.upstream_status()
        if op == "site":
            return await admin.describe_site(req["name"])
    raise ValueError(f"unknown op {op!r}")


async def _agent() -> None:
    """Answer one JSON request per stdin line with one JSON line on stdout:
    ``{"result": ...}`` or ``{"error": "..."}``, each within ``timeout`` seconds."""
    while line := await asyncio.to_thread(sys.stdin.readline):
        req = json.loads(line)
        try:
            async with asyncio.timeout(req.get("timeout", 15)):
                answer = {"result": await _ask(req)}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer, default=str) + "\n")
        sys.stdout.flush()


def _tool(argv: list[str]) -> None:
    if argv[0] == "produce":
        asyncio.run(_produce(argv[1], argv[2]))
    elif argv[0] == "follow":
        asyncio.run(_follow(argv[1], argv[2], [int(a) for a in argv[3:]]))
    elif argv[0] == "agent":
        asyncio.run(_agent())
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


# -- the test side --------------------------------------------------------------------


class AgentError(Exception):
    pass


class Agent:
    """A client process on one side of the uplink, asked over its stdin/stdout."""

    def __init__(self, host: netlab.Host, sc: str, log: Path) -> None:
        self.sc = sc
        handle = log.open("ab")
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            host.argv([sys.executable, __file__, "agent"]), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=handle, env={**os.environ, **ENV},
            start_new_session=True)
        handle.close()
        host.lab.processes.append(self.proc)

    def ask(self, op: str, **fields: Any) -> Any:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"op": op, "sc": self.sc, **fields}) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"agent for {self.sc} exited ({self.proc.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise AgentError(answer["error"])
        return answer["result"]

    def poll(self, op: str, **fields: Any) -> Any:
        """``ask``, or None while the cluster cannot answer (a node is down)."""
        try:
            return self.ask(op, **fields)
        except AgentError:
            return None


def until(what: str, cond: Callable[[], Any], timeout: float, every: float = 0.3) -> Any:
    """Poll ``cond`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(every)


class Lan:
    """Both sites, the router between them and every process, with a timeline."""

    def __init__(self, lab: netlab.Lab, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        edge_sw, cloud_sw = lab.bridge("edgesw"), lab.bridge("cloudsw")
        self.edge = {n: lab.host(f"e{n}", edge_sw, f"198.18.1.{n}") for n in (1, 2, 3)}
        self.cloud = {n: lab.host(f"c{n}", cloud_sw, f"198.18.2.{n}") for n in (1, 2, 3)}
        self.sensor = lab.host("sensor", edge_sw, "198.18.1.10")
        self.app = lab.host("app", cloud_sw, "198.18.2.10")
        self.wan = lab.router("wan", {edge_sw: "198.18.1.254", cloud_sw: "198.18.2.254"})
        for h in (*self.edge.values(), self.sensor):
            h.route("198.18.2.0/24", "198.18.1.254")
        for h in (*self.cloud.values(), self.app):
            h.route("198.18.1.0/24", "198.18.2.254")
        # The uplink: the router's leg on the cloud bridge, both of its ends.
        self.uplink = self.wan.legs[cloud_sw]
        self.secrets = {side: str(ClusterSecret.ensure(tmp / f"{side}.secret").path)
                        for side in ("edge", "cloud")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argvs: dict[str, tuple[netlab.Host, list[str]]] = {}
        self.t0 = time.monotonic()
        self.timeline: list[str] = []

    def mark(self, event: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.t0:6.1f}s  {event}")

    # processes

    def daemon(self, name: str, host: netlab.Host, side: str, *args: str) -> None:
        argv = [*HW, "run", *args, "--data-dir", str(self.tmp / name), "--log-level", "info",
                "--cluster-secret", self.secrets[side]]
        self.argvs[name] = (host, argv)
        self.start(name)

    def start(self, name: str) -> None:
        host, argv = self.argvs[name]
        self.procs[name] = host.start(argv, log=self.tmp / f"{name}.log", env=ENV)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def dead(self) -> list[str]:
        """Processes that ended by themselves."""
        return [n for n, p in self.procs.items() if p.poll() is not None]

    # the uplink

    def slow(self) -> None:
        delayed = [self.lab.limit_rate(end, UPLINK_RATE, delay=UPLINK_DELAY)
                   for end in self.uplink]
        if not all(delayed):
            # The kernel of this machine is built without sch_netem: the link is
            # thin (tbf) but not long; the cuts and unplugs below need no netem.
            print(f"no tc netem in this kernel: the uplink is rate-limited to "
                  f"{UPLINK_RATE} without the {UPLINK_DELAY} delay")

    def blackhole(self, *, on: bool) -> None:
        self.wan.blackhole(on=on)

    def unplug(self, *, plugged: bool) -> None:
        self.lab.set_link(self.uplink[1], up=plugged)

    # diagnostics

    def diagnose(self, agents: dict[str, Agent]) -> str:
        out = []
        with contextlib.suppress(Exception):
            out.append("upstream status: " + json.dumps(agents["edge"].poll("upstream")))
        with contextlib.suppress(Exception):
            out.append("site: " + json.dumps(agents["cloud"].poll("site", name=SITE)))
        for log in sorted(self.tmp.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            upstream = [ln for ln in lines if "upstream" in ln or "mirror" in ln]
            out.append(f"--- {log.name} ({len(lines)} lines), upstream lines:")
            out.extend(upstream[-15:])
            out.append(f"--- {log.name}, last lines:")
            out.extend(lines[-15:])
        return "\n".join(out)


class Sends:
    """The producer's outcomes, read from its file as it writes them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[tuple[int, int, str, int | None]] = []
        self.done = False
        self._pos = 0

    def refresh(self) -> Sends:
        if not self.path.exists():
            return self
        with self.path.open("rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._pos += len(complete)
        for line in complete.decode().splitlines():
            row = json.loads(line)
            if row == "done":
                self.done = True
            else:
                self.rows.append((row[0], row[1], row[2], row[3]))
        return self

    def acked(self, part: int | None = None) -> int:
        self.refresh()
        return sum(1 for p, _, outcome, _ in self.rows if outcome == "ok" and
                   part in (None, p))


class Reader:
    """A cloud consumer following the home partitions from the beginning for the
    whole run: what it saw must never contradict the final read."""

    def __init__(self, lan: Lan, partitions: list[int]) -> None:
        self.path = lan.tmp / "reader.jsonl"
        self.proc = lan.app.start([sys.executable, __file__, "follow", CLOUD_SC,
                                   str(self.path), *map(str, partitions)],
                                  log=lan.tmp / "reader.log", env=ENV)
        lan.procs["reader"] = self.proc
        self.chunks: list[tuple[int, list[list[Any]]]] = []
        self._pos = 0

    def refresh(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._pos += len(complete)
        for line in complete.decode().splitlines():
            row = json.loads(line)
            if row != "done":
                self.chunks.append((row[0], row[1]))

    def position(self, partition: int) -> int:
        if self.path.exists():
            self.refresh()
        last = [rows[-1][0] for p, rows in self.chunks if p == partition and rows]
        return last[-1] + 1 if last else 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        self.refresh()


def verdict(evidence: dict[str, Any]) -> Report:
    """Judge a run (what ``evidence.json`` holds): the checker over every send, the
    final cloud read of each home partition, the edge's final read and the cloud
    reader's chunks; then the home partitions against the edge record for record
    (offset, value, timestamp). Raises AssertionError; returns the checker's report."""
    homes = {int(p): c for p, c in evidence["homes"].items()}
    edge_of = {c: p for p, c in homes.items()}
    history = History()
    for part, seq, outcome, offset in evidence["sends"]:
        history.send(f"p{part}", seq, part, outcome, offset)
    for p, cloud_p in homes.items():
        history.final[p] = [(o, v) for o, v, _ in evidence["cloud"][str(cloud_p)]]
        # The edge's own log, as one more reader: a record it holds that the cloud
        # lacks is "vanished", one at another offset "inconsistent".
        history.poll("edge", p, [(o, v) for o, v, _ in evidence["edge"][str(p)]])
    for cloud_p, rows in evidence["reader"]:
        history.poll("cloud-reader", edge_of[cloud_p], [(o, v) for o, v in rows])
    report = check(history)
    assert report.valid, report.summary()
    for p, cloud_p in homes.items():
        cloud_rows = evidence["cloud"][str(cloud_p)]
        edge_rows = evidence["edge"][str(p)]
        assert [r[0] for r in cloud_rows] == list(range(len(cloud_rows))), \
            f"home partition of {p} does not start at 0 or has holes"
        assert cloud_rows == edge_rows, f"partition {p}: the cloud differs from the edge"
    acked = report.stats["acked"]
    assert acked > 0.7 * report.stats["sends"], report.summary()
    assert report.stats["polled_records"] >= 2 * acked, report.summary()
    return report


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    lab = netlab.Lab()
    try:
        yield Lan(lab, tmp_path)
    finally:
        lab.close()


def _leaders(edge: Agent) -> dict[int, int] | None:
    rows = edge.poll("partitions", topic=TOPIC)
    if not rows or any(r["leader"] is None for r in rows):
        return None
    return {r["partition"]: r["leader"] for r in rows}


def _full_isr(edge: Agent) -> bool:
    rows = edge.poll("partitions", topic=TOPIC)
    return bool(rows) and all(sorted(r["isr"]) == [1, 2, 3] and r["leader_online"]
                              for r in rows)


def _homes(cloud: Agent) -> dict[int, dict[str, Any]] | None:
    """edge partition -> its home partition's row (cloud_partition, leader, hw)"""
    info = cloud.poll("site", name=SITE)
    if info is None:
        return None
    rows = {m["edge_partition"]: m for m in info["mirrors"] if m["topic"] == TOPIC}
    return rows if len(rows) == PARTITIONS else None


def _cloud_hws(cloud: Agent) -> dict[int, int] | None:
    homes = _homes(cloud)
    if homes is None or any(m["hw"] is None for m in homes.values()):
        return None
    return {p: m["hw"] for p, m in homes.items()}


def _uplinks(edge: Agent) -> dict[int, dict[str, Any]] | None:
    """edge partition -> its uplink's status row, once every partition has one"""
    rows = {r["partition"]: r for r in edge.poll("upstream") or [] if r["topic"] == TOPIC}
    return rows if sorted(rows) == list(range(PARTITIONS)) else None


def test_exactly_once_through_cuts_kills_and_flaps(lan: Lan) -> None:
    edge_sc_private = "198.18.1.1:9004"
    cloud_sc_private = "198.18.2.1:9004"
    agents: dict[str, Agent] = {}
    try:
        # The cloud: an SC and three SPUs, and the site registered with it.
        lan.slow()
        lan.daemon("cloud-sc", lan.cloud[1], "cloud", "sc")
        for n in (1, 2, 3):
            lan.daemon(f"cloud-spu{n}", lan.cloud[n], "cloud", "spu", "--id", str(n),
                       "--sc", cloud_sc_private)
        cloud = agents["cloud"] = Agent(lan.app, CLOUD_SC, lan.tmp / "agent-cloud.log")
        until("three cloud SPUs online", lambda: len(
            [s for s in cloud.poll("spus") or [] if s["online"]]) == 3, 40)
        uplink_file = lan.tmp / "upstream.toml"
        reg = subprocess.run(lan.app.argv([*HW, "--sc", CLOUD_SC, "site", "register", SITE,
                                           "--export", str(uplink_file)]),
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, **ENV}, check=False)
        assert reg.returncode == 0, reg.stderr
        # The edge site: an SC and three SPUs on three hosts, the uplink in each SPU.
        lan.daemon("edge-sc", lan.edge[1], "edge", "sc")
        for n in (1, 2, 3):
            lan.daemon(f"edge-spu{n}", lan.edge[n], "edge", "spu", "--id", str(n),
                       "--sc", edge_sc_private, "--upstream", str(uplink_file))
        edge = agents["edge"] = Agent(lan.sensor, EDGE_SC, lan.tmp / "agent-edge.log")
        until("three edge SPUs online", lambda: len(
            [s for s in edge.poll("spus") or [] if s["online"]]) == 3, 40)
        edge.ask("create", topic=TOPIC, partitions=PARTITIONS, replication=3,
                 config={"upstream": True, "min_insync_replicas": 2}, timeout=30)
        lan.mark("both sites up, topic created")

        sends = Sends(lan.tmp / "sends.jsonl")
        producer = lan.sensor.start([sys.executable, __file__, "produce", EDGE_SC,
                                     str(sends.path)], log=lan.tmp / "producer.log", env=ENV)
        lan.procs["producer"] = producer
        until("the mirror flowing on the slow link", lambda: (
            (hws := _cloud_hws(cloud)) is not None and all(v > 0 for v in hws.values())), 40)
        homes = until("home partitions", lambda: _homes(cloud), 10)
        reader = Reader(lan, [homes[p]["cloud_partition"] for p in range(PARTITIONS)])
        lan.mark(f"mirror flowing; acked at the edge {sends.acked()}")

        # 1. The long cut, and an edge leader (its uplink offline) killed meanwhile.
        lan.blackhole(on=True)
        cut_at = time.monotonic()
        lan.mark("uplink cut (blackhole)")
        time.sleep(3)
        hws_in_cut = until("cloud HWs", lambda: _cloud_hws(cloud), 10)
        acked_in_cut = sends.acked()
        time.sleep(max(0.0, cut_at + 15 - time.monotonic()))
        leaders = until("edge leaders", lambda: _leaders(edge), 10)
        victim = leaders[0]
        lan.kill(f"edge-spu{victim}")
        lan.mark(f"SIGKILL edge SPU {victim} (leader of partition 0)")
        until("a new edge leader for partition 0", lambda: (
            (now := _leaders(edge)) is not None and now[0] != victim), 20)
        time.sleep(2)
        lan.start(f"edge-spu{victim}")
        lan.mark(f"edge SPU {victim} restarted")
        until("full edge ISR", lambda: _full_isr(edge), 30)
        time.sleep(max(0.0, cut_at + CUT_S - 3 - time.monotonic()))
        rows = until("the uplinks' status", lambda: _uplinks(edge), 10)
        assert all(r["state"] != "connected" for r in rows.values()), rows
        assert until("cloud HWs", lambda: _cloud_hws(cloud), 10) == hws_in_cut, \
            "the cloud moved during the cut"
        assert sends.acked() - acked_in_cut > 0.5 * (CUT_S / SEND_INTERVAL_S), \
            "the edge stopped taking writes without its cloud"
        time.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))
        lan.blackhole(on=False)
        restored = time.monotonic()
        lan.mark(f"uplink restored after {restored - cut_at:.0f}s; states "
                 f"{sorted(r['state'] for r in rows.values())}, lag "
                 f"{[r['lag'] for r in rows.values()]}")

        # 2. The uplink holder killed while its backlog is on the way: connected, the
        # cloud's answer to its first append not back yet.
        rows = until("an uplink reconnected with its backlog in flight", lambda: (
            (r := _uplinks(edge)) and any(x["state"] == "connected" and (x["lag"] or 0) > 100
                                          for x in r.values()) and r), 30, every=0.1)
        holder_row = max((x for x in rows.values() if x["state"] == "connected"),
                         key=lambda x: x["lag"] or 0)
        holder = holder_row["spu"]
        lan.kill(f"edge-spu{holder}")
        lan.mark(f"uplink of partition {holder_row['partition']} reconnected "
                 f"{time.monotonic() - restored:.1f}s after the cut; SIGKILL its holder, "
                 f"edge SPU {holder}, with {holder_row['lag']} records not yet acknowledged "
                 f"by the cloud")
        until("its uplink elsewhere", lambda: (
            (r := _uplinks(edge)) and r[holder_row["partition"]]["spu"] != holder), 20)
        time.sleep(1)
        lan.start(f"edge-spu{holder}")
        lan.mark(f"edge SPU {holder} restarted")
        until("the backlog across", lambda: (
            (r := _uplinks(edge)) and all(x["state"] == "connected" and
                                          (x["lag"] or 0) < 200 for x in r.values())), 40)
        lan.mark("backlog across")

        # 3. The cloud leader of a home partition killed.
        homes = until("home partitions", lambda: _homes(cloud), 10)
        cloud_victim = homes[0]["leader"]
        lan.kill(f"cloud-spu{cloud_victim}")
        lan.mark(f"SIGKILL cloud SPU {cloud_victim} (leads home partition "
                 f"{homes[0]['cloud_partition']})")
        until("a new cloud leader", lambda: (
            (h := _homes(cloud)) is not None and h[0]["leader"] not in (None, cloud_victim)), 20)
        acked = sends.acked()
        hws = until("cloud HWs", lambda: _cloud_hws(cloud), 10)
        until("the mirror going on", lambda: (
            (now := _cloud_hws(cloud)) is not None and all(now[p] > hws[p] for p in now)), 30)
        lan.start(f"cloud-spu{cloud_victim}")
        lan.mark(f"mirror going on without cloud SPU {cloud_victim} (edge acked "
                 f"{sends.acked() - acked} meanwhile); restarted it")

        # 4. The link flaps: silent cuts and unplugs, two seconds each.
        for i in range(4):
            if i % 2 == 0:
                lan.blackhole(on=True)
                time.sleep(2)
                lan.blackhole(on=False)
            else:
                lan.unplug(plugged=False)
                time.sleep(2)
                lan.unplug(plugged=True)
            time.sleep(2)
        lan.mark("four flaps done")

        # 5. The third edge kill: node e1 whole, the site's SC with its SPU.
        until("full edge ISR", lambda: _full_isr(edge), 30)
        holders = {p: r["spu"] for p, r in until("uplinks", lambda: _uplinks(edge), 10).items()}
        lan.kill("edge-sc")
        lan.kill("edge-spu1")
        lan.mark(f"SIGKILL edge node e1 (edge SC and SPU 1; uplink holders {holders})")
        time.sleep(3)
        lan.start("edge-sc")
        lan.start("edge-spu1")
        lan.mark("edge node e1 restarted")
        acked = sends.acked()
        until("writes going on", lambda: sends.acked() > acked + 100, 40)
        until("full edge ISR", lambda: _full_isr(edge), 30)

        # The end: stop writing, let the uplinks drain, the cloud reader catch up.
        time.sleep(2)
        producer.send_signal(signal.SIGTERM)
        producer.wait(70)
        assert producer.returncode == 0, (lan.tmp / "producer.log").read_text()
        assert sends.refresh().done
        last_acked = {p: max((o for q, _, outcome, o in sends.rows
                              if q == p and outcome == "ok" and o is not None), default=-1)
                      for p in range(PARTITIONS)}
        lan.mark(f"producer stopped: {len(sends.rows)} sends, {sends.acked()} acked")

        def drained() -> bool:
            rows = _uplinks(edge)
            hws = _cloud_hws(cloud)
            return (rows is not None and hws is not None and all(
                r["state"] == "connected" and r["lag"] == 0 and
                r["edge_end"] > last_acked[p] and hws[p] == r["edge_end"]
                for p, r in rows.items()))

        until("the cloud holding everything", drained, 60)
        rows = until("the uplinks' status", lambda: _uplinks(edge), 10)
        lan.mark("uplinks: " + ", ".join(
            f"{p}: SPU {r['spu']} {r['codec']} {r['raw_bytes']} B stored as {r['wire_bytes']} "
            f"B on the wire" for p, r in rows.items()))
        hws = until("cloud HWs", lambda: _cloud_hws(cloud), 10)
        until("the cloud reader at the end", lambda: all(
            reader.position(homes[p]["cloud_partition"]) >= hws[p]
            for p in range(PARTITIONS)), 30)
        reader.stop()
        assert reader.proc.returncode == 0, (lan.tmp / "reader.log").read_text()
        lan.mark("drained")

        # The verdict.
        edge_final = edge.ask("read", topic=TOPIC, partitions=list(range(PARTITIONS)),
                              timeout=60)
        cloud_final = cloud.ask("read", topic=TOPIC, partitions=[
            homes[p]["cloud_partition"] for p in range(PARTITIONS)], timeout=60)
        evidence = {"sends": sends.rows, "edge": edge_final, "cloud": cloud_final,
                    "homes": {p: homes[p]["cloud_partition"] for p in range(PARTITIONS)},
                    "reader": reader.chunks}
        (lan.tmp / "evidence.json").write_text(json.dumps(evidence))
        report = verdict(evidence)
        lan.mark(report.summary())
        assert [n for n in lan.dead() if n not in ("producer", "reader")] == [], lan.dead()
    except BaseException:
        print(lan.diagnose(agents))
        raise
    finally:
        print("timeline:", *lan.timeline, sep="\n")


if __name__ == "__main__":
    _tool(sys.argv[1:])
