"""One SPU per data directory: a second one started on it (two units pointed at one
directory on a Pi) refuses to start with one line that names the running one, and
the first one keeps serving what it has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge.client import Admin, Consumer, Offset, Producer
from edge.testing import LocalCluster, free_port


async def test_a_second_spu_on_one_data_dir_refuses_to_start(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "c") as c:
        async with Admin(c.sc_addr) as admin:
            await admin.create_topic("t")
        running = c.spu_procs[1]
        second = subprocess.run(
            [sys.executable, "-m", "edge.cli.main", "run", "spu", "--id", "2",
             "--data-dir", str(c.data_dir / "spu-1"),
             "--public-addr", f"127.0.0.1:{free_port()}",
             "--private-addr", f"127.0.0.1:{free_port()}",
             "--sc", c.sc_private_addr, "--cluster-secret", str(c.secret_path)],
            check=False, capture_output=True, text=True, timeout=60, env=c.env)
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert lines == [f"error: {c.data_dir / 'spu-1'} is in use by a running SPU "
                         f"(PID {running.pid}): stop it first, or give this one another "
                         "data_dir"], second.stderr
        assert running.poll() is None
        async with Producer(c.sc_addr) as p:
            await (await p.send("t", b"still here"))
        async with Consumer(c.sc_addr, "t", offset=Offset.beginning(),
                            stop_at_end=True) as cons:
            assert [r.value async for r in cons] == [b"still here"]
