"""Discovery benchmark: SPU start to registered with an SC found on mDNS, and the
idle cost of discovery on an SPU.

    sudo .venv/bin/python bench/discovery.py [--runs 20] [--idle-s 60]

Two hosts (network namespaces on a bridge, as in tests/netlab.py): h1 runs an SC
with ``--site bench``; on h2 SPU processes start ``--runs`` times each way, with
``--site bench`` (the SC found on the LAN) and with the SC's static address, and the
time from process start to the SPU's "registered with SC" log line is measured.
Then one SPU of each kind idles for ``--idle-s`` seconds: RSS and CPU over that
window, side by side. Prints medians; needs root (namespaces).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

import netlab  # noqa: E402

from edge.bench import machine  # noqa: E402
from edge.secret import ClusterSecret  # noqa: E402

HW = [sys.executable, "-m", "edge.cli.main"]
ENV = {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def spu_argv(spu_id: int, data: Path, *, discovered: bool) -> list[str]:
    where = ["--site", "bench"] if discovered else ["--sc", "198.18.0.1:9004"]
    return [*HW, "run", "spu", "--id", str(spu_id), "--data-dir", str(data / f"spu-{spu_id}"),
            "--log-level", "info", "--cluster-secret", str(secret_file(data)), *where]


def secret_file(data: Path) -> Path:
    return ClusterSecret.ensure(data / "cluster.secret").path


def time_to_register(host: netlab.Host, argv: list[str]) -> float:
    start = time.monotonic()
    proc = subprocess.Popen(host.argv(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **ENV}, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "registered with SC" in line:
                return time.monotonic() - start
        raise RuntimeError(f"SPU exited before registering: {proc.wait()}")
    finally:
        proc.terminate()
        proc.wait(30)


def idle_cost(host: netlab.Host, argv: list[str], idle_s: float, log: Path
              ) -> tuple[float, float]:
    """RSS (MiB) and CPU (% of one core) of an idle SPU after it settled."""
    proc = host.start(argv, log=log, env=ENV)
    deadline = time.monotonic() + 30
    while "registered with SC" not in log.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"SPU did not register: {log}")
        time.sleep(0.1)
    time.sleep(5)
    p = psutil.Process(proc.pid)
    before = p.cpu_times()
    time.sleep(idle_s)
    after = p.cpu_times()
    rss = p.memory_info().rss / 2**20
    cpu = (after.user + after.system - before.user - before.system) / idle_s * 100
    proc.terminate()
    proc.wait(30)
    return rss, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--idle-s", type=float, default=60.0)
    args = ap.parse_args()
    lab = netlab.Lab()
    with tempfile.TemporaryDirectory(prefix="hw-discovery-") as tmp:
        data = Path(tmp)
        try:
            sw = lab.bridge("sw")
            h1 = lab.host("h1", sw, "198.18.0.1")
            h2 = lab.host("h2", sw, "198.18.0.2")
            sc_log = data / "sc.log"
            h1.start([*HW, "run", "sc", "--data-dir", str(data / "sc"), "--site", "bench",
                      "--cluster-secret", str(secret_file(data))], log=sc_log, env=ENV)
            while "announcing" not in sc_log.read_text(errors="replace"):
                time.sleep(0.1)
            times: dict[str, list[float]] = {"mdns": [], "static": []}
            for i in range(args.runs):
                for kind in ("mdns", "static"):
                    spu_id = 1 + 2 * i + (kind == "static")
                    times[kind].append(time_to_register(
                        h2, spu_argv(spu_id, data, discovered=kind == "mdns")))
                print(f"run {i + 1}/{args.runs}: mdns {times['mdns'][-1]:.2f} s, "
                      f"static {times['static'][-1]:.2f} s", flush=True)
            idle = {kind: idle_cost(h2, spu_argv(1000 + n, data, discovered=kind == "mdns"),
                                    args.idle_s, data / f"idle-{kind}.log")
                    for n, kind in enumerate(("mdns", "static"))}
        finally:
            lab.close()
    mdns, static = (statistics.median(times[k]) for k in ("mdns", "static"))
    print(f"\nmachine: {machine()}")
    print(f"SPU start -> registered, median of {args.runs}: with an SC found on mDNS "
          f"{mdns:.2f} s (min {min(times['mdns']):.2f}, max {max(times['mdns']):.2f}); "
          f"with a static address {static:.2f} s; ratio {mdns / static:.2f}")
    (rss_m, cpu_m), (rss_s, cpu_s) = idle["mdns"], idle["static"]
    print(f"idle SPU over {args.idle_s:.0f} s: with discovery {rss_m:.1f} MiB RSS, "
          f"{cpu_m:.2f} % of a core; without {rss_s:.1f} MiB, {cpu_s:.2f} %; "
          f"discovery costs {rss_m - rss_s:+.1f} MiB and {cpu_m - cpu_s:+.2f} % of a core")


if __name__ == "__main__":
    main()
