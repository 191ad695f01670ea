"""Processes for the serial end-to-end tests and the benchmark: the firmware under
MicroPython, the gateway as ``python -m gateway.serial``, and the CLI consumer."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest

ROOT = Path(__file__).resolve().parents[3]
FIRMWARE = ROOT / "firmware"
MP = ROOT / "tests" / "firmware" / "mp"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A required executable; in CI its absence fails the test rather than skipping it."""
    found = shutil.which(name) or shutil.which(str(BIN / name))
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is required in CI (pip install -e '.[test]')")
    pytest.skip(f"{name} not installed")
    raise AssertionError


def build_firmware(out: Path) -> Path:
    """Compile the library and the device simulator with mpy-cross into ``out``."""
    cross = tool("mpy-cross")
    (out / "headwater").mkdir(parents=True, exist_ok=True)
    for src in sorted((FIRMWARE / "headwater").glob("*.py")):
        subprocess.run([cross, "-o", str(out / "headwater" / f"{src.stem}.mpy"), str(src)],
                       check=True)  # fmt: skip
    subprocess.run([cross, "-o", str(out / "device_sim.mpy"), str(MP / "device_sim.py")],
                   check=True)  # fmt: skip
    return out


class Device:
    """The firmware under ``micropython -X heapsize=64k``; tracks what it was told is safe."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.delivered: list[tuple[int, int]] = []
        self.done = asyncio.Event()
        self.lines: list[str] = []
        self._task = asyncio.create_task(self._read(), name="device-stdout")

    @classmethod
    async def start(cls, build: Path, tty: str, *, count: int, rate: int, workdir: Path,
                    device_id: str = "dev-1", pad: int = 26, heap: str = "64k",
                    spool: str = "") -> Device:  # fmt: skip
        env = {**os.environ, "HW_TTY": tty, "HW_COUNT": str(count), "HW_RATE": str(rate),
               "HW_ID": device_id, "HW_EPOCH": str(workdir / f"{device_id}.epoch"),
               "HW_PAD": str(pad), "HW_SPOOL": spool, "MICROPYPATH": str(build)}  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            tool("micropython"), "-X", f"heapsize={heap}", "-m", "device_sim",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )  # fmt: skip
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            self.lines.append(line)
            if line.startswith("D "):
                _, first, n = line.split()
                self.delivered.append((int(first), int(n)))
            elif line.startswith("DONE"):
                self.done.set()

    @property
    def delivered_count(self) -> int:
        return sum(n for _, n in self.delivered)

    def delivered_seqs(self) -> list[int]:
        return [first + i for first, n in self.delivered for i in range(n)]

    async def wait_delivered(self, n: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.delivered_count < n and not self.done.is_set():
                if self.proc.returncode is not None:
                    raise AssertionError("device exited:\n" + "\n".join(self.lines[-30:]))
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        try:
            # Read what it printed before it died: those records were acknowledged.
            await asyncio.wait_for(self._task, 5)
        except TimeoutError:
            self._task.cancel()


def start_gateway(tty: str | list[str], sc: str, topic: str, log: Path,
                  maps: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:  # fmt: skip
    ports = [tty] if isinstance(tty, str) else tty
    args = [a for p in ports for a in ("--port", p)] + [a for m in maps for a in ("--map", m)]
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.serial", *args, "--baud", "115200",
             "--sc", sc, "--topic", topic, "--stats-every", "1"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip


async def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    proc.send_signal(sig)
    while proc.poll() is None:
        await asyncio.sleep(0.02)


def last_stats(log: Path) -> dict[str, int]:
    stats: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if " stats {" in line:
            stats = json.loads(line.split(" stats ", 1)[1])
    return stats


async def consume_all(sc: str, topic: str) -> list[dict[str, Any]]:
    """Everything in ``topic`` as ``headwater consume -B -d --output json`` prints it."""
    proc = await asyncio.create_subprocess_exec(
        tool("headwater"), "--sc", sc, "consume", topic, "-B", "-d", "--output", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def reading_index(row: dict[str, Any]) -> int:
    raw = base64.b64decode(row["value"]) if row.get("value_b64") else row["value"].encode()
    value = cbor2.loads(raw)
    return int(value[0])
