"""Failover soak: the leader-SIGKILL workload of the fault tests, for as long as you like.

    .venv/bin/python bench/failover_soak.py --minutes 30 [--partitions 2] [--producers 3]
                                            [--consumers 2] [--interval-ms 5] [--keep DIR]

Starts an SC and three SPUs (separate processes, private ports behind the test
proxies) and runs the workload of ``test_repeated_leader_sigkill``: idempotent
producers with acks=all, consumers reading every partition from the beginning,
and a loop that SIGKILLs the leader of a partition and restarts it — in half of
the cycles after cutting it off from its followers until it holds records they
lack. Each producer sends to each partition every ``--interval-ms`` (the history
is kept in memory: about 1 KB per record). When the time is up the history is
checked (no acknowledged record lost, no duplicate, no offset holding two
records, no gap or backwards step seen by a consumer). Exits 0 when the history
is valid, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from checker import Report, check  # noqa: E402
from faults import create_topic, kill_leader_cycle, wait_full_isr  # noqa: E402
from workload import Workload  # noqa: E402

from edge.testing import LocalCluster  # noqa: E402


async def soak(data_dir: Path, args: argparse.Namespace) -> tuple[Report, list[float]]:
    failovers: list[float] = []
    async with LocalCluster(data_dir, spus=3, private_proxy=True) as cluster:
        await create_topic(cluster, "soak", partitions=args.partitions)
        w = Workload(cluster.sc_addr, "soak", partitions=args.partitions,
                     producers=args.producers, consumers=args.consumers,
                     interval_s=args.interval_ms / 1000)
        w.start()
        deadline = time.monotonic() + args.minutes * 60
        try:
            await w.wait_acked(200)
            cycle = 0
            while time.monotonic() < deadline:
                part = cycle % args.partitions
                cut = cycle % 4 >= 2
                took = await kill_leader_cycle(cluster, w, part=part, cut_first=cut)
                failovers.append(took)
                cycle += 1
                print(f"cycle {cycle}: partition {part}{' (cut first)' if cut else ''}, "
                      f"first ack {took:.2f}s after the kill, {w.acked():,} acked so far",
                      file=sys.stderr)
            await wait_full_isr(cluster, "soak", timeout=120)
            history = await w.stop(settle_timeout=300)
        except BaseException:
            await w.cancel()
            raise
    return check(history), failovers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--producers", type=int, default=3)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--keep", type=Path, help="keep the cluster's data and logs here")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report, failovers = asyncio.run(soak(args.keep, args))
    else:
        with tempfile.TemporaryDirectory(prefix="hw-soak-") as d:
            report, failovers = asyncio.run(soak(Path(d), args))
    print(report.summary())
    if failovers:
        print(f"{len(failovers)} leader kills; first ack after the kill: median "
              f"{statistics.median(failovers):.2f}s, max {max(failovers):.2f}s")
    print("VALID" if report.valid else "INVALID")
    sys.exit(0 if report.valid else 1)


if __name__ == "__main__":
    main()
