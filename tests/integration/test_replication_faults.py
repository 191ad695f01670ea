"""Replication under faults: SC and three SPUs as separate processes on 127.0.0.1.

Each test runs a workload (idempotent producers, consumers reading throughout)
while it injects one kind of fault, then judges the whole history with the
checker: no acknowledged record lost, no duplicate, no offset holding two
records, no gap or backwards step seen by a consumer.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from pathlib import Path

from checker import History, check
from faults import (
    at_epoch,
    create_topic,
    kill_leader_cycle,
    leader_ahead_of_followers,
    leads,
    raw_batch,
    rows,
    spu_status,
    wait_for,
    wait_full_isr,
    wait_new_leader,
)
from workload import Workload, read_all, settled_ends

from edge.client import Acks, Admin, Producer
from edge.net.connection import ClientConnection
from edge.protocol.errors import NotLeader
from edge.protocol.messages import ApiKey
from edge.testing import LocalCluster

CYCLES = int(os.environ.get("HEADWATER_FAILOVER_CYCLES", "10"))


async def test_repeated_leader_sigkill(tmp_path: Path) -> None:
    """SIGKILL the leader of a partition, restart it, again and again. In half of
    the cycles the leader is first cut off from its followers (peer proxies) until
    it holds records they lack: acks=all must not have acknowledged any of them."""
    async with LocalCluster(tmp_path / "c", spus=3, private_proxy=True) as cluster:
        await create_topic(cluster, "kill", partitions=2)
        w = Workload(cluster.sc_addr, "kill", partitions=2, producers=3, consumers=2)
        w.start()
        try:
            await w.wait_acked(200)
            for cycle in range(CYCLES):
                await kill_leader_cycle(cluster, w, part=cycle % 2, cut_first=cycle % 4 >= 2)
            await wait_full_isr(cluster, w.topic)
            history = await w.stop()
        except BaseException:
            await w.cancel()
            raise
        report = check(history)
        print(report.summary())
        assert report.valid, report.summary()
        assert not w.errors
        assert report.stats["acked"] > 1000, report.summary()


async def test_paused_leader_steps_down_and_acknowledges_nothing(tmp_path: Path) -> None:
    """SIGSTOP the leader past the heartbeat timeout; produce requests queued in its
    sockets meanwhile (acks=leader and acks=all) are all refused after SIGCONT."""
    async with LocalCluster(tmp_path / "c", spus=3) as cluster:
        await create_topic(cluster, "pause")
        w = Workload(cluster.sc_addr, "pause", producers=2, consumers=2)
        w.start()
        raw: list[ClientConnection] = []
        try:
            await w.wait_acked(300)
            old = int((await rows(cluster, "pause"))[0]["leader"])
            old_epoch = int((await rows(cluster, "pause"))[0]["epoch"])
            raw = [await ClientConnection(cluster.spu_addr(old)).connect() for _ in range(2)]
            cluster.signal_spu(old, signal.SIGSTOP)
            stopped = time.monotonic()
            answers = []
            try:
                for i in range(40):
                    acks = Acks.LEADER if i % 2 == 0 else Acks.ALL
                    answers.append(raw[i % 2].send_request(
                        ApiKey.PRODUCE, raw_batch(f"raw:{i}"), topic="pause", partition=0,
                        acks=int(acks)))
                new = await wait_new_leader(cluster, "pause", 0, old)
                elected = time.monotonic()
                # Deposed for silence: 2 s after its last heartbeat (sent every 1 s).
                assert elected - stopped >= 1.0
                # Clients follow the new leader while the old one still hangs: the
                # producers give up their requests to it, the consumers their streams.
                await w.wait_acked(50, since=elected, partition=0, timeout=5.0)
                newest = max(s.offset or 0 for s in w.history.sends
                             if s.partition == 0 and s.outcome == "ok")
                await w.wait_consumed(0, newest, timeout=5.0)
            finally:
                cluster.signal_spu(old, signal.SIGCONT)
            # More requests after it runs again, until it has learned the new epoch.
            for i in range(40, 60):
                answers.append(raw[0].send_request(
                    ApiKey.PRODUCE, raw_batch(f"raw:{i}"), topic="pause", partition=0,
                    acks=int(Acks.LEADER)))
                await asyncio.sleep(0.02)
            results = await asyncio.wait_for(
                asyncio.gather(*answers, return_exceptions=True), 15)
            acknowledged = [r for r in results if not isinstance(r, BaseException)
                            and not r[0].get("err")]
            assert not acknowledged, f"the deposed leader acknowledged {acknowledged}"
            # Each answer is an error (not a dropped connection): NotLeader, retriable.
            codes = {r[0].get("err") if not isinstance(r, BaseException) else type(r).__name__
                     for r in results}
            assert codes == {int(NotLeader.code)}, codes
            status = await spu_status(cluster, old, "pause")
            assert status["leader"] is False
            assert status["epoch"] > old_epoch
            await w.wait_acked(100, since=time.monotonic(), partition=0)
            await wait_full_isr(cluster, "pause")
            history = await w.stop()
        except BaseException:
            await w.cancel()
            raise
        finally:
            for conn in raw:
                await conn.close()
        report = check(history)
        print(report.summary())
        # A raw value in the log would be "unexpected": the paused leader's tail was cut.
        assert report.valid, report.summary()
        assert new != old


async def produce_raw(addr: str, topic: str, values: list[str], acks: Acks) -> list[int]:
    """Produce one record per request straight to one SPU; returns the offsets."""
    async with ClientConnection(addr) as conn:
        answers = [conn.send_request(ApiKey.PRODUCE, raw_batch(v), topic=topic, partition=0,
                                     acks=int(acks)) for v in values]
        replies = await asyncio.gather(*answers)
    for meta, _ in replies:
        assert not meta.get("err"), meta
    return [int(meta["base"]) for meta, _ in replies]


async def test_diverged_follower_is_truncated_on_rejoin(tmp_path: Path) -> None:
    """A leader cut off from its followers appends records (acks=leader) that never
    replicate, is killed; another SPU leads a higher epoch and takes other records
    at the same offsets. The old leader, restarted, must drop its tail and end up
    identical to the new leader — checked by reading it after it leads again."""
    async with LocalCluster(tmp_path / "c", spus=3, private_proxy=True) as cluster:
        await create_topic(cluster, "div")
        row = (await rows(cluster, "div"))[0]
        old = int(row["leader"])
        assert old == row["replicas"][0]  # the preferred replica: rebalance returns to it
        h = History()
        async with Producer(cluster.sc_addr, acks=Acks.ALL) as p:
            for i in range(100):
                h.send("base", i, 0, "ok", (await (await p.send("div", f"base:{i}".encode()))
                                            ).offset)
        await wait_full_isr(cluster, "div")

        cluster.isolate(old)
        diverged = [f"div:{i}" for i in range(20)]
        div_offsets = await produce_raw(cluster.spu_addr(old), "div", diverged, Acks.LEADER)
        assert div_offsets == list(range(100, 120))
        assert await leader_ahead_of_followers(cluster, old, "div", 0)
        await cluster.kill_spu(old)
        new = await wait_new_leader(cluster, "div", 0, old)
        epoch = int((await rows(cluster, "div"))[0]["epoch"])
        # Heal only once both survivors follow the new epoch: the proxies hold what
        # the dead leader sent (as TCP would), and the old fetch connections, now
        # closed, must not deliver it.
        for spu in set(row["replicas"]) - {old}:
            await wait_for(lambda s=spu: at_epoch(cluster, s, "div", epoch),
                           what=f"SPU {spu} at epoch {epoch}")
        cluster.heal(old)
        async with Producer(cluster.sc_addr, acks=Acks.ALL) as p:
            for i in range(50):
                h.send("new", i, 0, "ok", (await (await p.send("div", f"new:{i}".encode()))
                                           ).offset)
        new_log = await read_all(cluster.sc_addr, "div", 0)
        new_status = await spu_status(cluster, new, "div")
        assert new_status["epoch"] > row["epoch"]

        await cluster.start_spu(old)
        await wait_full_isr(cluster, "div")
        async with Admin(cluster.sc_addr) as admin:
            meta = await admin.cluster.sc_request(ApiKey.PARTITION_REBALANCE, topic="div")
        assert meta["moved"] == 1
        await wait_for(lambda: leads(cluster, old, "div"), what=f"SPU {old} leading again")
        await settled_ends(cluster.sc_addr, "div", 1, 20)
        old_log = await read_all(cluster.sc_addr, "div", 0)
        old_status = await spu_status(cluster, old, "div")

    assert old_log == new_log
    assert old_status["leo"] == new_status["leo"] == 150
    # The same offsets hold the new leader's records, not the diverged ones.
    assert [v for o, v in new_log if o in div_offsets] == [f"new:{i}" for i in range(20)]
    h.final[0] = old_log
    report = check(h)
    assert report.valid, report.summary()


def worst_stall(w: Workload, start: float, end: float) -> float:
    """The longest a record sent in [start, end] waited for its ack, or the longest
    time in the window without any ack, whichever is larger."""
    acks = [a for a in w.acks_seen if start <= a.sent <= end]
    assert acks, "nothing was acknowledged in the window"
    times = [start, *sorted(a.acked for a in acks if a.acked <= end), end]
    waits = [a.acked - a.sent for a in acks]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return max(waits + gaps)


async def test_sc_restart_does_not_interrupt_produce(tmp_path: Path) -> None:
    """SIGKILL the SC mid-run and restart it: produce (acks=leader and acks=all) goes
    on without a stall while it is down, nothing is re-elected when it returns, and
    the SPUs and clients reconnect to it."""
    async with LocalCluster(tmp_path / "c", spus=3) as cluster:
        await create_topic(cluster, "sc-all", partitions=2)
        await create_topic(cluster, "sc-leader", partitions=2)
        loads = [Workload(cluster.sc_addr, "sc-all", partitions=2, producers=2, consumers=1,
                          acks=Acks.ALL, interval_s=0.002),
                 Workload(cluster.sc_addr, "sc-leader", partitions=2, producers=2,
                          consumers=1, acks=Acks.LEADER, interval_s=0.002)]
        for w in loads:
            w.start()
        late = Producer(cluster.sc_addr, acks=Acks.ALL)
        try:
            await late.cluster.refresh()
            for w in loads:
                await w.wait_acked(300)
            before = {t: await rows(cluster, t) for t in ("sc-all", "sc-leader")}
            killed = time.monotonic()
            await cluster.kill_sc()
            # Down for longer than the heartbeat timeout (2 s) and the SPUs' first
            # redial attempts: the length of the fault, not a wait for a condition.
            await asyncio.sleep(4.0)
            for w in loads:
                assert w.acked_since(killed) > 500
            restarted = time.monotonic()
            await cluster.start_sc()
            for spu in cluster.spu_ids:
                await cluster.wait_spu_online(spu, timeout=15)
            back = time.monotonic()
            for w in loads:
                await w.wait_acked(300, since=back)
            after = {t: await rows(cluster, t) for t in ("sc-all", "sc-leader")}
            # A client from before the outage asks the new SC about a new topic.
            await create_topic(cluster, "sc-new")
            await (await late.send("sc-new", b"after the SC came back"))
            histories = [await w.stop() for w in loads]
        except BaseException:
            for w in loads:
                await w.cancel()
            raise
        finally:
            await late.close()
        stalls = {w.topic: round(worst_stall(w, killed, back), 3) for w in loads}
        print(f"SC down {restarted - killed:.1f} s, SPUs back {back - restarted:.1f} s after "
              f"its restart; worst stall {stalls}")
        # 1.5 s: on the 2-core CI machine the acks=all stall around the SC's return
        # measured 1.2-1.3 s in some full-suite runs (0.5 s for acks=leader); a lost
        # SC must still never stall produce for a heartbeat timeout (2 s) or more.
        assert all(s < 1.5 for s in stalls.values()), stalls
        # An SC restart is not an SPU failure: same leaders, same epochs.
        for topic, rows_before in before.items():
            assert [(r["leader"], r["epoch"]) for r in after[topic]] == \
                   [(r["leader"], r["epoch"]) for r in rows_before], (rows_before, after[topic])
        for h in histories:
            report = check(h)
            assert report.valid, report.summary()


async def test_network_cut_heals_without_loss(tmp_path: Path) -> None:
    """Cut one SPU off from its peers (both directions, through the peer proxies)
    while producing with acks=all, until the ISRs drop it; then heal."""
    victim = 1
    async with LocalCluster(tmp_path / "c", spus=3, private_proxy=True) as cluster:
        await create_topic(cluster, "cut", partitions=3)
        w = Workload(cluster.sc_addr, "cut", partitions=3, producers=3, consumers=2)
        w.start()
        try:
            await w.wait_acked(300)
            await wait_full_isr(cluster, "cut")
            led = {r["partition"] for r in await rows(cluster, "cut") if r["leader"] == victim}
            others = {0, 1, 2} - led
            assert led
            assert others

            async def isr_split() -> bool:
                rs = await rows(cluster, "cut")
                return (all(r["isr"] == [victim] for r in rs if r["partition"] in led)
                        and all(victim not in r["isr"] for r in rs if r["partition"] in others))

            cut = time.monotonic()
            cluster.isolate(victim)
            try:
                await wait_for(isr_split, what="ISRs without the cut-off SPU")
                split = time.monotonic()
                # The majority side goes on with two replicas.
                for part in others:
                    await w.wait_acked(50, since=split, partition=part)
            finally:
                healed = time.monotonic()
                cluster.heal(victim)
            await wait_full_isr(cluster, "cut")
            for part in led | others:
                await w.wait_acked(50, since=time.monotonic(), partition=part)
            history = await w.stop()
        except BaseException:
            await w.cancel()
            raise
    print(f"cut {healed - cut:.1f} s (ISRs split after {split - cut:.1f} s)")
    # The cut-off leader acknowledged nothing sent after the cut before the heal: no
    # follower can have it, and alone in its ISR (< min_insync_replicas) it must
    # refuse. A record sent just before the cut may be acknowledged during it: the
    # ISR can shrink in two steps, and a follower that had fetched it keeps it on
    # two replicas meanwhile. Waiting acks failing when the ISR goes below min_isr
    # is tests/spu/test_spu_partition_state.py's.
    lone = [a for a in w.acks_seen if a.partition in led and a.sent > cut and a.acked < healed]
    assert not lone, f"{len(lone)} acks=all records acknowledged by a lone leader"
    report = check(history)
    print(report.summary())
    assert report.valid, report.summary()


async def test_restarted_deposed_leader_waits_for_the_sc(tmp_path: Path) -> None:
    """A leader killed and replaced comes back while the SC is down: its saved
    assignment still names it leader, but it must not acknowledge a write until
    the SC has told it where it stands."""
    async with LocalCluster(tmp_path / "c", spus=3) as cluster:
        await create_topic(cluster, "stale")
        old = int((await rows(cluster, "stale"))[0]["leader"])
        await produce_raw(cluster.spu_addr(old), "stale", ["before"], Acks.ALL)
        await cluster.kill_spu(old)
        new = await wait_new_leader(cluster, "stale", 0, old)
        await produce_raw(cluster.spu_addr(new), "stale", ["new:0"], Acks.ALL)
        await cluster.kill_sc()
        await cluster.start_spu(old)
        async with ClientConnection(cluster.spu_addr(old)) as conn:
            answers = [conn.send_request(ApiKey.PRODUCE, raw_batch(f"stale:{i}"),
                                         topic="stale", partition=0, acks=int(acks))
                       for i, acks in enumerate((Acks.LEADER, Acks.LEADER))]
            results = await asyncio.wait_for(asyncio.gather(*answers), 15)
        assert all(r[0].get("err") == int(NotLeader.code) for r in results), results
        await cluster.start_sc()
        await wait_for(lambda: at_epoch(cluster, old, "stale", 1), what="the old leader "
                       "following epoch 1")
        await wait_full_isr(cluster, "stale")
        log = [v for _, v in await read_all(cluster.sc_addr, "stale", 0)]
    assert log == ["before", "new:0"]
