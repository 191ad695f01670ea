"""An SC whose metadata is older than the cluster: a backup restored after a failover.

A backup of the SC's database is taken; then the leader of a partition is stopped,
the SC elects the other replica at a higher leader epoch, and the old leader comes
back as a follower. The SC is stopped and the backup restored: the SC now believes
an older epoch (and the old leader) than both SPUs hold. When the SPUs register it
must learn their epochs and move past them, so that its assignments are accepted:
produce with ``acks=all`` and consume work again at once on every partition, no
record acknowledged before the restore is lost, and no SPU spins in a retry loop.
Then the SC's lock on its data directory: a second SC there fails at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import psutil
import pytest
from faults import rows, wait_for, wait_new_leader
from workload import read_all

from edge.client import Acks, Admin, Producer
from edge.protocol.errors import StorageError
from edge.sc import backup
from edge.sc.config import ScConfig
from edge.sc.service import Sc
from edge.testing import LocalCluster, free_port

TOPIC = "t"
PARTITIONS = 2
# What two SPUs in step with each other (and idle but for heartbeats and long polls)
# use at most, in percent of one core; a retry loop without a pause takes far more.
MAX_IDLE_CPU_PERCENT = 15.0
CPU_WINDOW_S = 2.0


async def produce(cluster: LocalCluster, label: str, *, count: int = 5,
                  timeout: float = 30.0) -> dict[int, list[str]]:
    """``count`` records to each partition with acks=all; the values acknowledged."""
    acked: dict[int, list[str]] = {}
    async with asyncio.timeout(timeout), Producer(cluster.sc_addr, acks=Acks.ALL,
                                                   delivery_timeout_s=timeout) as p:
        for part in range(PARTITIONS):
            values = [f"{label}.{part}:{i}" for i in range(count)]
            futures = [await p.send(TOPIC, v.encode(), partition=part) for v in values]
            for fut in futures:
                await fut
            acked[part] = values
    return acked


def merge(into: dict[int, list[str]], more: dict[int, list[str]]) -> None:
    for part, values in more.items():
        into.setdefault(part, []).extend(values)


async def full_isr(cluster: LocalCluster) -> bool:
    return all(sorted(r["isr"]) == cluster.spu_ids for r in await rows(cluster, TOPIC))


async def spu_cpu_percent(cluster: LocalCluster) -> dict[int, float]:
    """Each SPU process's CPU use over ``CPU_WINDOW_S``, in percent of one core."""
    procs = {i: psutil.Process(p.pid) for i, p in cluster.spu_procs.items()}
    for proc in procs.values():
        proc.cpu_percent(None)
    await asyncio.sleep(CPU_WINDOW_S)
    return {i: proc.cpu_percent(None) for i, proc in procs.items()}


async def test_restored_sc_behind_the_spus_epochs_moves_past_them(tmp_path: Path) -> None:
    out = tmp_path / "backup"
    async with LocalCluster(tmp_path / "c", spus=2) as cluster:
        sc_dir = cluster.data_dir / "sc"
        async with Admin(cluster.sc_addr) as admin:
            await admin.create_topic(TOPIC, partitions=PARTITIONS, replication=2)
            await admin.wait_ready(TOPIC)
        await wait_for(lambda: full_isr(cluster), what="an ISR of two")
        acked = await produce(cluster, "before-backup")
        before = {r["partition"]: (r["leader"], r["epoch"]) for r in await rows(cluster, TOPIC)}
        await asyncio.to_thread(backup.make_backup, sc_dir, out)
        merge(acked, await produce(cluster, "after-backup"))

        # A failover the backup does not know of: the old leader of partition 0 is
        # stopped, the other SPU leads at a higher epoch, the old one comes back.
        old, old_epoch = before[0]
        await cluster.stop_spu(old)
        new = await wait_new_leader(cluster, TOPIC, 0, old)
        merge(acked, await produce(cluster, "one-spu"))
        await cluster.start_spu(old)
        await wait_for(lambda: full_isr(cluster), what="the old leader back in the ISR")
        merge(acked, await produce(cluster, "rejoined"))
        moved = {r["partition"]: (r["leader"], r["epoch"]) for r in await rows(cluster, TOPIC)}
        assert moved[0][0] == new
        assert moved[0][1] > old_epoch

        assert await cluster.stop_sc() == 0
        await asyncio.to_thread(backup.restore, backup.check_backup(out), sc_dir)
        await cluster.start_sc()
        for spu in cluster.spu_ids:
            await cluster.wait_spu_online(spu)

        # Writes and reads of every partition work again within a few seconds.
        merge(acked, await produce(cluster, "restored", timeout=10.0))
        for part in range(PARTITIONS):
            values = [v for _, v in await read_all(cluster.sc_addr, TOPIC, part)]
            assert values == acked[part], (part, values, acked[part])
        after = {r["partition"]: (r["leader"], r["epoch"]) for r in await rows(cluster, TOPIC)}
        # The SC's epoch of the failed-over partition moved past what the SPUs held.
        assert after[0][1] > moved[0][1], (before, moved, after)
        assert after[1][1] >= moved[1][1], (before, moved, after)
        # The SPUs agree with the SC and nobody spins.
        await wait_for(lambda: full_isr(cluster), what="an ISR of two after the restore")
        cpu = await spu_cpu_percent(cluster)
        assert all(v < MAX_IDLE_CPU_PERCENT for v in cpu.values()), cpu
        log = (cluster.data_dir / "sc.log").read_text()
        assert log.count(f"SC's epoch for {TOPIC}/0 was behind the SPUs'") == 1, log
        assert f"SC's epoch for {TOPIC}/1 was behind" not in log, log


# --- one SC per data directory ------------------------------------------------------


def sc_config(data_dir: Path) -> ScConfig:
    return ScConfig(data_dir=data_dir, public_addr="127.0.0.1:0", private_addr="127.0.0.1:0",
                    insecure_private=True)


async def test_a_second_sc_on_the_same_data_directory_fails_at_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "sc"
    first = Sc(sc_config(data_dir))
    await first.start()
    try:
        with pytest.raises(StorageError) as refused:
            Sc(sc_config(data_dir))
        text = str(refused.value)
        assert str(data_dir) in text, text
        assert f"PID {os.getpid()}" in text, text
        assert "\n" not in text
        # Another process, the way systemd starts one: it exits at once, saying why.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli.main", "run", "sc", "--data-dir", str(data_dir),
            "--public-addr", f"127.0.0.1:{free_port()}",
            "--private-addr", f"127.0.0.1:{free_port()}", "--insecure-private",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode != 0
        assert f"{data_dir} is in use by a running SC (PID {os.getpid()})" in out.decode()
        assert "Traceback" not in out.decode()
        assert len(out.decode().strip().splitlines()) == 1, out.decode()
        # Restore refuses while it runs, naming the lock.
        made = await asyncio.to_thread(backup.make_backup, data_dir, tmp_path / "b")
        running = r"is running as PID \d+ \(it holds sc\.lock\): stop it"
        with pytest.raises(backup.BackupError, match=running):
            backup.restore(made, data_dir)
    finally:
        await first.stop()
    # Released on stop: restore and a new SC both get the directory.
    await asyncio.to_thread(backup.restore, backup.check_backup(tmp_path / "b"), data_dir)
    second = Sc(sc_config(data_dir))
    await second.start()
    await second.stop()
