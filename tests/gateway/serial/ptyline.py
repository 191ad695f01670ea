"""A serial line made of two pty pairs joined by a relay that can damage traffic.

    device process --/dev/pts/A-- [master A] <-relay-> [master B] --/dev/pts/B (via a
    symlink)-- gateway process

The relay runs on the caller's event loop. It can inject garbage and flip bits
in either direction, and ``unplug()`` closes the gateway side like a USB cable
pulled out (the symlink then points to a new pty, as udev would for a new
ttyUSB). A pty has no baud rate; ``bytes_per_s`` paces the relay at a line rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import termios
import tty
from pathlib import Path


def _raw_pty() -> tuple[int, int, str]:
    # The relay keeps the slave open too: a master whose slave nobody holds
    # reports EIO on every read, which would spin the event loop.
    master, slave = os.openpty()
    tty.setraw(slave)
    attrs = termios.tcgetattr(slave)
    attrs[6][termios.VMIN] = 0  # reads return at once (the device's poll loop never blocks)
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    name = os.ttyname(slave)
    os.set_blocking(master, False)
    return master, slave, name


class PtyLine:
    def __init__(self, workdir: Path, *, seed: int = 1) -> None:
        self.gateway_path = str(workdir / "ttyHW0")
        self.rng = random.Random(seed)
        self.garbage_rate = 0.0  # chance per chunk of inserting noise, each direction
        self.flip_rate = 0.0  # chance per chunk of flipping one bit
        self.damaged = 0
        self.bytes_up = 0  # device -> gateway
        self.bytes_down = 0
        self._dev, self._dev_slave, self.device_path = _raw_pty()
        self._gw = self._gw_slave = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending_up = bytearray()
        self._pending_down = bytearray()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._dev, self._pump, True)
        self._plug()

    def _plug(self) -> None:
        assert self._loop is not None
        self._gw, self._gw_slave, name = _raw_pty()
        tmp = self.gateway_path + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(name, tmp)
        os.replace(tmp, self.gateway_path)
        self._loop.add_reader(self._gw, self._pump, False)

    def unplug(self) -> None:
        """Close the gateway side (reads there fail with EIO), then offer a new pty."""
        assert self._loop is not None
        self._loop.remove_reader(self._gw)
        self._loop.remove_writer(self._gw)
        os.close(self._gw)
        os.close(self._gw_slave)
        self._pending_down.clear()
        self._plug()

    def close(self) -> None:
        if self._loop is not None:
            for fd in (self._dev, self._gw):
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
        for fd in (self._dev, self._gw, self._dev_slave, self._gw_slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.gateway_path)

    def _damage(self, data: bytes) -> bytes:
        out = bytearray(data)
        if out and self.rng.random() < self.flip_rate:
            bit = self.rng.randrange(len(out) * 8)
            out[bit // 8] ^= 1 << (bit % 8)
            self.damaged += 1
        if self.rng.random() < self.garbage_rate:
            pos = self.rng.randrange(len(out) + 1)
            out[pos:pos] = self.rng.randbytes(self.rng.randrange(1, 24))
            self.damaged += 1
        return bytes(out)

    def _pump(self, up: bool) -> None:
        src, dst = (self._dev, self._gw) if up else (self._gw, self._dev)
        try:
            data = os.read(src, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # no process holds the other end open right now: drop
        if not data:
            return
        if up:
            self.bytes_up += len(data)
        else:
            self.bytes_down += len(data)
        pending = self._pending_up if up else self._pending_down
        pending += self._damage(data)
        self._flush(dst, pending)

    def _flush(self, fd: int, pending: bytearray) -> None:
        assert self._loop is not None
        while pending:
            try:
                n = os.write(fd, pending)
            except BlockingIOError:
                self._loop.add_writer(fd, self._flush, fd, pending)
                return
            except OSError:
                pending.clear()  # nobody is listening on that side: the line drops it
                break
            del pending[:n]
        self._loop.remove_writer(fd)
