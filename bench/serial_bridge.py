"""Serial bridge benchmark: records/s over a pty, and the fraction of line rate.

    python bench/serial_bridge.py [--runs 3] [--seconds 8]

A real SPU (LocalCluster) and the gateway as its own process
(``python -m gateway.serial``) on the slave end of a pty; this script plays the
device on the master end, speaking the serial protocol with the device's
rules (window of 4 frames, frames up to 1024 bytes, retransmit after 1 s),
with 32-byte readings.

A pty has no baud rate: in the paced runs the writer holds each frame back
until the previous one would have left a UART at the given baud rate (10 bits
per byte, 8N1). "Line rate" is what that UART could carry in records/s with
full frames; the fraction is acknowledged records/s over that. The unpaced run
writes as fast as the bridge acknowledges. Prints the median of ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

import cbor2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.client import Admin  # noqa: E402
from edge.testing import LocalCluster  # noqa: E402
from gateway.serial.codec import FrameDecoder, FrameReceived  # noqa: E402
from gateway.serial.frames import (  # noqa: E402
    MAX_FRAME,
    Ack,
    DeviceRecord,
    Hello,
    Nak,
    Records,
    Welcome,
    wire,
)

WINDOW = 4
RTO_S = 1.0
READING = 32


def reading(i: int) -> bytes:
    value = cbor2.dumps([i, b"x" * 20])
    return value + b"\x00" * (READING - len(value)) if len(value) < READING else value[:READING]


class Device:
    """The device end of the line: windowed frames, cumulative ACKs, go-back-N."""

    def __init__(self, fd: int, count: int, bytes_per_s: float | None, epoch: int = 1) -> None:
        self.fd, self.count, self.bps, self.epoch = fd, count, bytes_per_s, epoch
        self.values = [reading(i) for i in range(count)]
        self.acked = 0
        self.send = 0
        self.inflight: list[tuple[int, int]] = []
        self.cuts: dict[int, int] = {}
        self.line_free = 0.0
        self.progress = asyncio.Event()
        self.welcomed = asyncio.Event()
        self.hold_until = 0.0
        self.bytes_sent = 0
        self.decoder = FrameDecoder()
        self.limit = count
        self.last_progress = 0.0
        self.retransmits = 0

    def on_readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        for ev in self.decoder.feed(data):
            if not isinstance(ev, FrameReceived):
                continue
            f = ev.frame
            if isinstance(f, Welcome):
                self.welcomed.set()
            elif isinstance(f, Ack) and f.next_seq > self.acked:
                self.acked = f.next_seq
                self.last_progress = time.monotonic()
                self.inflight = [x for x in self.inflight if x[0] + x[1] > self.acked]
                self.send = max(self.send, self.acked)
            elif isinstance(f, Nak) and f.stream:
                if f.retry_after_ms:
                    self.hold_until = time.monotonic() + f.retry_after_ms / 1000
                self.rewind(f.next_seq)
            self.progress.set()

    def rewind(self, target: int) -> None:
        if target not in self.cuts and target != self.acked:
            target = self.acked
        self.inflight = [x for x in self.inflight if x[0] + x[1] <= target]
        self.send = target

    def frame(self) -> tuple[bytes, int]:
        base = self.send
        n = self.cuts.get(base, 0)
        if not n:
            size = 16 + 3 + 4
            while base + n < self.limit and n < 255 and size + 10 + READING <= MAX_FRAME:
                size += 10 + READING
                n += 1
            self.cuts[base] = n
        recs = tuple(DeviceRecord(0, self.values[i]) for i in range(base, base + n))
        return wire(Records(self.epoch, base, self.acked, "env", recs)), n

    async def write(self, data: bytes) -> None:
        if self.bps:
            now = time.monotonic()
            start = max(now, self.line_free)
            self.line_free = start + len(data) / self.bps
            if start > now:
                await asyncio.sleep(start - now)
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await asyncio.sleep(0.001)
        self.bytes_sent += len(data)

    async def run(self) -> float:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.fd, self.on_readable)
        while not self.welcomed.is_set():
            await self.write(wire(Hello(self.epoch, "bench-1", "bench")))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.welcomed.wait(), 1.0)
        # Warm-up: the gateway's first produce also learns the topic and connects.
        self.limit = 1
        await self._pump()
        self.limit = self.count
        start = time.monotonic()
        await self._pump()
        loop.remove_reader(self.fd)
        # A record cannot be delivered before its last byte has crossed the line.
        return max(time.monotonic(), self.line_free) - start

    async def _pump(self) -> None:
        self.last_progress = time.monotonic()
        while self.acked < self.limit:
            now = time.monotonic()
            if self.inflight and now - self.last_progress > RTO_S:
                self.retransmits += 1
                self.rewind(self.acked)
                self.last_progress = now
            if now >= self.hold_until and len(self.inflight) < WINDOW and self.send < self.limit:
                data, n = self.frame()
                self.inflight.append((self.send, n))
                self.send += n
                await self.write(data)
                continue
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), 0.05)


def line_capacity(baud: int) -> float:
    per_frame = len(Device(-1, 255, None).frame()[0])  # a full frame on the wire
    records = (MAX_FRAME - 16 - 3 - 4) // (10 + READING)
    return baud / 10 / per_frame * records


_boots = iter(range(1, 1 << 15))


async def one_run(sc: str, topic: str, baud: int | None, count: int, workdir: Path) -> float:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    path = os.ttyname(slave)
    log = (workdir / "gateway.log").open("ab")
    gw = subprocess.Popen(
        [sys.executable, "-m", "gateway.serial", "--port", path, "--baud", str(baud or 921600),
         "--sc", sc, "--topic", topic, "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        # Every run is a new boot of the same device: a new epoch, sequences from 0.
        dev = Device(master, count, baud / 10 if baud else None, next(_boots))
        elapsed = await dev.run()
        return (count - 1) / elapsed
    finally:
        gw.terminate()
        gw.wait()
        os.close(master)
        os.close(slave)
        log.close()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="target length of a paced run")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with LocalCluster(work / "cluster") as cluster:
            async with Admin(cluster.sc_addr) as admin:
                await admin.create_topic("bench", partitions=1, replication=1)
            print(f"reading {READING} B, frames up to {MAX_FRAME} B, window {WINDOW}; "
                  f"SPU durability: {cluster.durability}; medians of {args.runs} runs")  # fmt: skip
            for baud in (None, 115200, 921600):
                count = 20000 if baud is None else int(line_capacity(baud) * args.seconds)
                rates = [await one_run(cluster.sc_addr, "bench", baud, count, work)
                         for _ in range(args.runs)]  # fmt: skip
                rate = statistics.median(rates)
                if baud is None:
                    print(f"unpaced pty:  {rate:8.0f} records/s  (runs: "
                          f"{', '.join(f'{r:.0f}' for r in rates)})")  # fmt: skip
                else:
                    cap = line_capacity(baud)
                    print(f"{baud:>7} baud: {rate:8.0f} records/s of {cap:.0f} at line rate "
                          f"= {100 * rate / cap:5.1f} %  (runs: "
                          f"{', '.join(f'{r:.0f}' for r in rates)})")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
