"""What the private-port handshake adds to opening a connection.

Run: .venv/bin/python bench/handshake_cost.py [--connections 300]

Starts an SC in this process on 127.0.0.1 (cluster secret in a temp dir) and
opens connections to its private port: with the handshake (hello, AUTHENTICATE,
the server's proof, then API_VERSIONS, what an SPU does), and without it to the
public port (API_VERSIONS only). Reports the median and p99 setup time of each.
SPUs open private connections rarely (one to the SC, one per followed leader,
and again after a failure), so this is a cost per reconnect, not per request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from edge.net.auth import PrivateAuth, dialer
from edge.net.connection import Authenticator, ClientConnection
from edge.sc.config import ScConfig
from edge.sc.service import Sc
from edge.secret import ClusterSecret


async def setup_times(addr: str, count: int, authenticate: Authenticator | None
                      ) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        conn = ClientConnection(addr, authenticate=authenticate)
        await conn.connect()
        times.append((time.perf_counter() - start) * 1000)
        await conn.close()
    return times


def summary(name: str, times: list[float]) -> str:
    p99 = sorted(times)[int(len(times) * 0.99) - 1]
    return f"{name:<32} median {statistics.median(times):6.3f} ms   p99 {p99:6.3f} ms"


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="headwater-handshake-") as tmp:
        secret = ClusterSecret.ensure(Path(tmp) / "cluster.secret")
        sc = Sc(ScConfig(data_dir=Path(tmp) / "sc", public_addr="127.0.0.1:0",
                         private_addr="127.0.0.1:0", cluster_secret=secret))
        await sc.start()
        try:
            plain = await setup_times(sc.public_addr, count, None)
            proven = await setup_times(sc.private_addr, count,
                                       dialer(PrivateAuth(secret=secret), 1))
        finally:
            await sc.stop()
    print(summary("public port (no handshake)", plain))
    print(summary("private port (handshake)", proven))
    print(f"added by the handshake: {statistics.median(proven) - statistics.median(plain):.3f} "
          "ms (median)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    asyncio.run(main(parser.parse_args().connections))
