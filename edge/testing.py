"""A real local Headwater for tests and examples.

``LocalCluster`` starts ``headwater run sc`` and ``headwater run spu`` as
separate processes on free 127.0.0.1 ports, waits until the SPU is registered,
and can SIGKILL and restart the SPU on the same data directory (crash tests).
The processes share a cluster secret created in the data directory
(``secret_path``), as a real deployment's private ports require.

    async with LocalCluster(tmp_path) as cluster:
        async with Admin(cluster.sc_addr) as admin: ...

With ``private_proxy=True`` every SPU's private (peer) port sits behind a
:class:`TcpProxy` in the test process and the SPU advertises the proxy's
address, so ``isolate(spu_id)`` can cut that SPU off from its peers (both
directions, connections held open like a real partition) and ``heal`` joins
it again. The SC links are not proxied: the SC still sees the SPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from edge.net.connection import ClientConnection, split_addr
from edge.protocol.errors import HeadwaterError
from edge.protocol.messages import ApiKey
from edge.secret import GENERATED_NAME, ClusterSecret

START_TIMEOUT_S = 30.0


LOW_PORT = 10000
# free_port hands out every fourth port: a daemon that also binds the next ones
# (`headwater local --sc-port P` takes P and P + 1) never meets another's.
PORT_STRIDE = 4


def ephemeral_start() -> int:
    """First port of the kernel's ephemeral range (outgoing connections' local ports)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@functools.cache
def _candidates() -> Iterator[int]:
    """Every PORT_STRIDE-th port from LOW_PORT to the ephemeral range once, from a
    random start, then around again: this process hands out no port twice in a row."""
    ports = range(LOW_PORT, ephemeral_start() - PORT_STRIDE, PORT_STRIDE)
    first = random.randrange(len(ports))
    return itertools.cycle(itertools.chain(ports[first:], ports[:first]))


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the daemon binds it right after).

    Chosen below the kernel's ephemeral range: a port the kernel hands out
    (``bind(0)``) can be taken by any outgoing connection on the machine between
    this check and the daemon's bind.
    """
    span = (ephemeral_start() - LOW_PORT) // PORT_STRIDE
    if span < 1000:  # an unusual range: fall back to the kernel's choice
        with socket.socket() as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    ports = _candidates()
    for _ in range(span):
        port = next(ports)
        if port_free(port, host):
            return port
    raise RuntimeError(f"no free port from {LOW_PORT} to {ephemeral_start() - 1}")


class LocalCluster:
    """One SC and ``spus`` SPUs as child processes.

    ``spu_settings`` go into a TOML config file given to every SPU (any
    ``SpuConfig`` key, e.g. ``replica_lag_s``); command-line flags win over it.
    ``limits`` become the ``[limits]`` table of the SC and of every SPU;
    ``sc_settings`` go into the SC's config file (``metrics_addr``, ...).
    """

    def __init__(self, data_dir: Path, *, spus: int = 1, durability: str = "group",
                 log_level: str = "warning", extra_spu_args: list[str] | None = None,
                 env: dict[str, str] | None = None,
                 spu_settings: dict[str, str | int | float | bool] | None = None,
                 private_proxy: bool = False,
                 limits: dict[str, int | float] | None = None,
                 sc_settings: dict[str, str | int | float | bool] | None = None) -> None:
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
        self.spu_settings = dict(spu_settings or {})
        self.limits = dict(limits or {})
        self.sc_settings = dict(sc_settings or {})
        self.secret_path = self.data_dir / GENERATED_NAME
        self.proxies: dict[int, TcpProxy] = (
            {i: TcpProxy(f"{self.host}:{self.spu_ports[i][1]}", origin=self._spu_of_port)
             for i in self.spu_ids} if private_proxy else {})

    def spu_addr(self, spu_id: int = 1) -> str:
        return f"{self.host}:{self.spu_ports[spu_id][0]}"

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        ClusterSecret.ensure(self.secret_path)
        for proxy in self.proxies.values():
            await proxy.start()
        await self.start_sc()
        for spu_id in self.spu_ids:
            await self.start_spu(spu_id)

    async def stop(self) -> None:
        for spu_id in list(self.spu_procs):
            await self.stop_spu(spu_id)
        await self.stop_sc()
        for proxy in self.proxies.values():
            await proxy.close()

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
             "--cluster-secret", str(self.secret_path), "--log-level", self.log_level,
             *self._sc_config_args()], "sc.log")
        await self._wait_answers(self.sc_addr, self.sc_proc, "sc.log")

    async def start_spu(self, spu_id: int = 1) -> None:
        public, private = self.spu_ports[spu_id]
        proc = self._spawn(
            ["run", "spu", "--id", str(spu_id), "--data-dir", str(self.data_dir / f"spu-{spu_id}"),
             "--public-addr", f"{self.host}:{public}", "--private-addr", f"{self.host}:{private}",
             "--sc", self.sc_private_addr, "--durability", self.durability,
             "--cluster-secret", str(self.secret_path), "--log-level", self.log_level,
             *self._config_args(spu_id),
             *self.extra_spu_args], f"spu-{spu_id}.log")
        self.spu_procs[spu_id] = proc
        await self._wait_answers(self.spu_addr(spu_id), proc, f"spu-{spu_id}.log")
        if self.sc_proc is not None and self.sc_proc.poll() is None:
            await self.wait_spu_online(spu_id)

    def _config_args(self, spu_id: int) -> list[str]:
        settings = dict(self.spu_settings)
        if spu_id in self.proxies:
            settings["advertise_private"] = self.proxies[spu_id].addr
        if not settings and not self.limits:
            return []
        path = self.data_dir / f"spu-{spu_id}.toml"
        path.write_text(_toml_text(settings, self.limits))
        return ["--config", str(path)]

    def _sc_config_args(self) -> list[str]:
        if not self.limits and not self.sc_settings:
            return []
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "sc.toml"
        path.write_text(_toml_text(self.sc_settings, self.limits))
        return ["--config", str(path)]

    def signal_spu(self, spu_id: int, sig: int) -> None:
        """Send a signal and return at once (SIGSTOP / SIGCONT)."""
        self.spu_procs[spu_id].send_signal(sig)

    def isolate(self, spu_id: int) -> None:
        """Cut every peer link of ``spu_id``, both directions (needs ``private_proxy``)."""
        for other, proxy in self.proxies.items():
            if other == spu_id:
                proxy.set_down(True)
            else:
                proxy.block(spu_id)

    def heal(self, spu_id: int) -> None:
        for other, proxy in self.proxies.items():
            if other == spu_id:
                proxy.set_down(False)
            else:
                proxy.unblock(spu_id)

    def _spu_of_port(self, port: int) -> int | None:
        """Which SPU process owns the local TCP port ``port`` (the dialling side)."""
        for spu_id, proc in list(self.spu_procs.items()):
            with contextlib.suppress(psutil.Error):
                for c in psutil.Process(proc.pid).net_connections(kind="tcp"):
                    if c.laddr and c.laddr.port == port:
                        return spu_id
        return None

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
        """Wait until the SC has the SPU's registration and a heartbeat (health): a
        restarted SC reports known SPUs online for a grace period before they dial in."""
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(HeadwaterError):
                    spus = await _request(self.sc_addr, ApiKey.LIST_SPUS)
                    if any(s["id"] == spu_id and s["online"] and s["health"]
                           for s in spus["spus"]):
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


def _toml_text(settings: dict[str, str | int | float | bool],
               limits: dict[str, int | float]) -> str:
    text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in settings.items())
    if limits:
        text += "[limits]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in limits.items())
    return text


def _toml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return repr(value)


class _Link:
    """One proxied connection; forwarding waits while ``gate`` is clear."""

    def __init__(self, peer_port: int) -> None:
        self.peer_port = peer_port
        self.origin: int | None = None
        self.origin_known = False
        self.gate = asyncio.Event()
        self.gate.set()


class TcpProxy:
    """Forwards TCP connections to ``target``; links can be cut and healed.

    A cut link is held open but carries nothing, like a network partition: the
    peers notice only through their own timeouts, and data still in flight
    moves on when the link heals. ``set_down`` cuts every link to the target;
    ``block(origin)`` cuts the links dialled by one SPU (``origin`` maps the
    dialling side's port to an SPU id). ``forwarded`` counts the bytes carried
    towards the target; with ``capture`` set they are kept there too (a test
    looks for what must not travel in clear).
    """

    def __init__(self, target: str, *, origin: Callable[[int], int | None] | None = None
                 ) -> None:
        self.target = target
        self._origin = origin or (lambda port: None)
        self.down = False
        self.blocked: set[int] = set()
        self.addr = ""
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.forwarded = 0
        self.capture: bytearray | None = None

    async def start(self, host: str = "127.0.0.1") -> str:
        self._server = await asyncio.start_server(self._accept, host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.addr = f"{host}:{port}"
        return self.addr

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def set_down(self, down: bool) -> None:
        self.down = down
        self._apply()

    def block(self, origin: int) -> None:
        self.blocked.add(origin)
        self._apply()

    def unblock(self, origin: int) -> None:
        self.blocked.discard(origin)
        self._apply()

    def _cut(self, link: _Link) -> bool:
        if self.down:
            return True
        if not self.blocked:
            return False
        if not link.origin_known:
            link.origin, link.origin_known = self._origin(link.peer_port), True
        return link.origin in self.blocked

    def _apply(self) -> None:
        for link in self._links:
            if self._cut(link):
                link.gate.clear()
            else:
                link.gate.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link = _Link(int(writer.get_extra_info("peername")[1]))
        self._links.add(link)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self._cut(link):
                link.gate.clear()
            await link.gate.wait()
            up_reader, upstream = await asyncio.open_connection(*split_addr(self.target))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pump(reader, upstream, link, self._carried))
                tg.create_task(_pump(up_reader, writer, link))
        except (OSError, ExceptionGroup):
            pass
        finally:
            self._links.discard(link)
            self._tasks.discard(task)
            for w in (writer, upstream):
                if w is not None:
                    w.transport.abort()


    def _carried(self, data: bytes) -> None:
        self.forwarded += len(data)
        if self.capture is not None and len(self.capture) < 64 * 1024 * 1024:
            self.capture += data


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link,
                seen: Callable[[bytes], None] | None = None) -> None:
    while data := await reader.read(65536):
        await link.gate.wait()
        if seen is not None:
            seen(data)
        writer.write(data)
        await writer.drain()
    # One side closed: end the whole link, as a TCP connection would.
    raise ConnectionResetError("peer closed")


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


class HaCluster(LocalCluster):
    """``scs`` SC processes sharing the etcd cluster at ``etcd`` (HOST:PORT client
    endpoints), one active and the others standby, and ``spus`` SPUs given every
    SC's private address. ``sc_addr`` is the comma-separated list of the SCs'
    public addresses, as clients are given it. ``sc_ports`` (public, private) pins
    the SCs' ports: an SQLite SC's, for one that takes over its data migrated."""

    def __init__(self, data_dir: Path, *, etcd: list[str], scs: int = 2,
                 prefix: str = "/headwater", ttl_s: int = 2,
                 sc_ports: list[tuple[int, int]] | None = None, **kwargs: Any) -> None:
        super().__init__(data_dir, **kwargs)
        self.etcd = list(etcd)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.sc_ports = sc_ports or [(free_port(), free_port()) for _ in range(scs)]
        self.sc_publics = [f"{self.host}:{pub}" for pub, _ in self.sc_ports]
        self.sc_addr = ",".join(self.sc_publics)
        self.sc_private_addr = ",".join(f"{self.host}:{priv}" for _, priv in self.sc_ports)
        self.sc_procs: dict[int, subprocess.Popen[bytes]] = {}

    async def start_sc(self) -> None:
        for index in range(len(self.sc_ports)):
            await self.start_sc_number(index)
        await self.wait_active()
        self.sc_proc = next(iter(self.sc_procs.values()))  # start_spu waits for online

    async def start_sc_number(self, index: int) -> None:
        pub, priv = self.sc_ports[index]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / f"sc-{index}.toml"
        config.write_text(
            f'metadata = "etcd://{",".join(self.etcd)}"\n'
            + _toml_text(self.sc_settings, self.limits)
            + f'[etcd]\nprefix = "{self.prefix}"\nttl_s = {self.ttl_s}\n')
        proc = self._spawn(
            ["run", "sc", "--config", str(config), "--data-dir", str(self.data_dir / f"sc-{index}"),
             "--public-addr", f"{self.host}:{pub}", "--private-addr", f"{self.host}:{priv}",
             "--cluster-secret", str(self.secret_path), "--log-level", self.log_level],
            f"sc-{index}.log")
        self.sc_procs[index] = proc
        await self._wait_answers(self.sc_publics[index], proc, f"sc-{index}.log")

    async def stop_sc(self) -> int | None:
        codes = [await _terminate(proc) for proc in self.sc_procs.values()]
        self.sc_procs.clear()
        self.sc_proc = None
        return max(codes, default=None)

    def signal_sc(self, index: int, sig: int) -> None:
        self.sc_procs[index].send_signal(sig)

    async def kill_sc_number(self, index: int) -> None:
        proc = self.sc_procs.pop(index)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)

    async def active(self) -> int | None:
        """Which SC answers as active now (role "sc" in its API_VERSIONS), if any."""
        for index, addr in enumerate(self.sc_publics):
            if index not in self.sc_procs:
                continue
            with contextlib.suppress(HeadwaterError, OSError):
                if (await _request(addr, ApiKey.API_VERSIONS)).get("role") == "sc":
                    return index
        return None

    async def wait_active(self, timeout: float = START_TIMEOUT_S,
                          other_than: int | None = None) -> int:
        async with asyncio.timeout(timeout):
            while True:
                found = await self.active()
                if found is not None and found != other_than:
                    return found
                await asyncio.sleep(0.02)

    async def wait_spu_online(self, spu_id: int, timeout: float = START_TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout):
            while True:
                index = await self.active()
                if index is not None:
                    with contextlib.suppress(HeadwaterError):
                        spus = await _request(self.sc_publics[index], ApiKey.LIST_SPUS)
                        if any(s["id"] == spu_id and s["online"] and s["health"]
                               for s in spus["spus"]):
                            return
                await asyncio.sleep(0.05)
