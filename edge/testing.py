"""A real local Headwater for tests and examples.

``LocalCluster`` starts ``headwater run sc`` and ``headwater run spu`` as
separate processes on free 127.0.0.1 ports, waits until the SPU is registered,
and can SIGKILL and restart the SPU on the same data directory (crash tests).

    async with LocalCluster(tmp_path) as cluster:
        async with Admin(cluster.sc_addr) as admin: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge.net.connection import ClientConnection
from edge.protocol.errors import HeadwaterError
from edge.protocol.messages import ApiKey

START_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the daemon binds it right after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """One SC and ``spus`` SPUs as child processes."""

    def __init__(self, data_dir: Path, *, spus: int = 1, durability: str = "group",
                 log_level: str = "warning", extra_spu_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.host = "127.0.0.1"
        self.sc_port = free_port()
        self.sc_private_port = free_port()
        self.sc_addr = f"{self.host}:{self.sc_port}"
        self.sc_private_addr = f"{self.host}:{self.sc_private_port}"
        self.durability = durability
        self.log_level = log_level
        self.extra_spu_args = extra_spu_args or []
        self.env = {**os.environ, **(env or {})}
        self.spu_ids = list(range(1, spus + 1))
        self.spu_ports = {i: (free_port(), free_port()) for i in self.spu_ids}
        self.sc_proc: subprocess.Popen[bytes] | None = None
        self.spu_procs: dict[int, subprocess.Popen[bytes]] = {}

    def spu_addr(self, spu_id: int = 1) -> str:
        return f"{self.host}:{self.spu_ports[spu_id][0]}"

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.start_sc()
        for spu_id in self.spu_ids:
            await self.start_spu(spu_id)

    async def stop(self) -> None:
        for spu_id in list(self.spu_procs):
            await self.stop_spu(spu_id)
        await self.stop_sc()

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / log_name).open("ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "edge.cli.main", *args], stdout=log,
                stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        finally:
            log.close()

    async def start_sc(self) -> None:
        self.sc_proc = self._spawn(
            ["run", "sc", "--data-dir", str(self.data_dir / "sc"),
             "--public-addr", self.sc_addr, "--private-addr", self.sc_private_addr,
             "--log-level", self.log_level], "sc.log")
        await self._wait_answers(self.sc_addr, self.sc_proc, "sc.log")

    async def start_spu(self, spu_id: int = 1) -> None:
        public, private = self.spu_ports[spu_id]
        proc = self._spawn(
            ["run", "spu", "--id", str(spu_id), "--data-dir", str(self.data_dir / f"spu-{spu_id}"),
             "--public-addr", f"{self.host}:{public}", "--private-addr", f"{self.host}:{private}",
             "--sc", self.sc_private_addr, "--durability", self.durability,
             "--log-level", self.log_level, *self.extra_spu_args], f"spu-{spu_id}.log")
        self.spu_procs[spu_id] = proc
        await self._wait_answers(self.spu_addr(spu_id), proc, f"spu-{spu_id}.log")
        if self.sc_proc is not None and self.sc_proc.poll() is None:
            await self.wait_spu_online(spu_id)

    async def kill_spu(self, spu_id: int = 1, sig: int = signal.SIGKILL) -> None:
        proc = self.spu_procs.pop(spu_id, None)
        if proc is not None:
            proc.send_signal(sig)
            await asyncio.to_thread(proc.wait)

    async def stop_spu(self, spu_id: int = 1) -> int | None:
        """SIGTERM (clean shutdown); returns the exit code."""
        proc = self.spu_procs.pop(spu_id, None)
        if proc is None:
            return None
        return await _terminate(proc)

    async def kill_sc(self, sig: int = signal.SIGKILL) -> None:
        if self.sc_proc is not None:
            self.sc_proc.send_signal(sig)
            await asyncio.to_thread(self.sc_proc.wait)
            self.sc_proc = None

    async def stop_sc(self) -> int | None:
        proc, self.sc_proc = self.sc_proc, None
        return None if proc is None else await _terminate(proc)

    async def wait_spu_online(self, spu_id: int, timeout: float = START_TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(HeadwaterError):
                    spus = await _request(self.sc_addr, ApiKey.LIST_SPUS)
                    if any(s["id"] == spu_id and s["online"] for s in spus["spus"]):
                        return
                await asyncio.sleep(0.05)

    async def _wait_answers(self, addr: str, proc: subprocess.Popen[bytes], log: str) -> None:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                if proc.poll() is not None:
                    text = (self.data_dir / log).read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"process exited with {proc.returncode}:\n{text}")
                with contextlib.suppress(HeadwaterError, OSError):
                    await _request(addr, ApiKey.API_VERSIONS)
                    return
                await asyncio.sleep(0.05)


async def _request(addr: str, api: ApiKey, **fields: Any) -> dict[Any, Any]:
    conn = ClientConnection(addr)
    await conn.connect(handshake=False)
    try:
        meta, _ = await conn.request(api, timeout=5.0, **fields)
        return meta
    finally:
        await conn.close()


async def _terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
    except TimeoutError:
        proc.kill()
        return await asyncio.to_thread(proc.wait)
