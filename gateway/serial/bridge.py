"""Serial bridge: devices on serial ports -> idempotent batches on the SPU.

One task per port. I/O stays on the event loop without threads: pyserial opens
the device with O_NONBLOCK and configures it (baud rate, raw mode, exclusive
lock); the bridge then registers the file descriptor with ``loop.add_reader``
and moves bytes with ``os.read``/``os.write``. That costs no thread per port
(8 MiB of stack each on a Pi), no GIL hand-off per chunk, and a vanished port
(USB unplug) shows up as EIO/EOF on the next read, where the port is closed and
reopened with jittered backoff while the process keeps running.

Per port, frames are produced strictly one at a time: a device's batches must
reach the SPU in sequence order, and a later batch must never land while an
earlier one is being retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol

import serial

from edge.logstate import LogOnce
from edge.net.backoff import Backoff
from edge.protocol.errors import HeadwaterError
from gateway.serial.codec import FrameDecoder, FrameReceived
from gateway.serial.frames import Frame, wire
from gateway.serial.session import DeviceSession, LinkTiming, ProduceJob

log = logging.getLogger(__name__)

STAT_KEYS: Final = (
    "received", "produced", "duplicates", "bad_frames", "naks", "reconnects",
    "frames_in", "frames_out", "hellos", "produce_errors", "ports_open",
)  # fmt: skip
_READ_CHUNK: Final = 4096
# A device that sent no clock (ts 0) or a clock before 2020 gets the gateway's time.
_MIN_DEVICE_TS_MS: Final = 1_577_836_800_000
_STREAM_HEADER: Final = "stream"


@dataclass(frozen=True, kw_only=True)
class SerialPortConfig:
    """One serial port and where its device's streams go."""

    path: str
    baudrate: int = 115200
    topic_map: Mapping[str, str] = field(default_factory=dict, hash=False)
    default_topic: str

    def __post_init__(self) -> None:
        if not self.path or self.baudrate <= 0 or not self.default_topic:
            raise ValueError("path, a positive baudrate and default_topic are required")
        object.__setattr__(self, "topic_map", MappingProxyType(dict(self.topic_map)))

    def topic_for(self, stream: str) -> str:
        return self.topic_map.get(stream, self.default_topic)


@dataclass(frozen=True, kw_only=True)
class BridgeTiming:
    """Timing of the port loop; tests shrink it."""

    link: LinkTiming = field(default_factory=LinkTiming)
    produce_timeout_s: float = 3.0  # then NAK BUSY and let the device hold its data
    reopen_min_s: float = 0.2
    reopen_max_s: float = 5.0
    write_buffer_bytes: int = 16 * 1024  # ACKs beyond this are dropped: the device retries
    log_repeat_s: float = 60.0  # the same failure is logged at most this often per port


class ProduceOutcome(Protocol):
    @property
    def duplicate(self) -> bool: ...


class BatchProducer(Protocol):
    """The part of ``edge.client.Producer`` the bridge uses."""

    async def send_batch(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes]],
        *,
        partition: int | None = None,
        partition_key: bytes | None = None,
        producer_id: int,
        producer_epoch: int,
        base_sequence: int,
        timestamps_ms: Sequence[int] | None = None,
        headers: Sequence[dict[str, bytes] | None] | None = None,
        timeout_s: float = 30.0,
    ) -> ProduceOutcome: ...


class _PortGoneError(Exception):
    pass


class SerialBridge:
    """Runs every configured port until cancelled."""

    def __init__(
        self,
        *,
        ports: Sequence[SerialPortConfig],
        producer: BatchProducer,
        timing: BridgeTiming | None = None,
    ) -> None:
        if not ports or len({p.path for p in ports}) != len(ports):
            raise ValueError("at least one port, each path once")
        self._timing = timing or BridgeTiming()
        self._ports = [_Port(cfg, producer, self._timing) for cfg in ports]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for port in self._ports:
                tg.create_task(port.run(), name=f"serial-bridge:{port.cfg.path}")

    def stats(self) -> dict[str, int]:
        """Counters summed over all ports."""
        total = dict.fromkeys(STAT_KEYS, 0)
        for port in self._ports:
            for k, v in port.stats().items():
                total[k] = total.get(k, 0) + v
        return total

    def port_stats(self) -> dict[str, dict[str, int]]:
        return {p.cfg.path: p.stats() for p in self._ports}


class _Port:
    def __init__(self, cfg: SerialPortConfig, producer: BatchProducer, timing: BridgeTiming):
        self.cfg = cfg
        self._producer = producer
        self._timing = timing
        self._session = DeviceSession(timing=timing.link)
        self._counters = dict.fromkeys(("reconnects", "frames_out", "produce_errors"), 0)
        self._open = False
        self._logs = LogOnce(log, repeat_s=timing.log_repeat_s)
        self._fd = -1
        self._out = bytearray()
        self._jobs = asyncio.Event()

    def stats(self) -> dict[str, int]:
        return {**self._session.stats, **self._counters, "ports_open": int(self._open)}

    async def run(self) -> None:
        backoff = Backoff(self._timing.reopen_min_s, self._timing.reopen_max_s)
        opened_before = False
        while True:
            try:
                ser = self._open_port()
            except (OSError, serial.SerialException) as exc:
                self._logs.warning("open", "serial %s: cannot open: %s", self.cfg.path, exc)
                await backoff.sleep()
                continue
            if opened_before:
                self._counters["reconnects"] += 1
            opened_before = True
            backoff.reset()
            log.info("serial %s: open at %d baud", self.cfg.path, self.cfg.baudrate)
            try:
                await self._serve(ser)
            except _PortGoneError as exc:
                self._logs.warning("gone", "serial %s: port went away: %s", self.cfg.path, exc)
            finally:
                self._close(ser)

    def _open_port(self) -> serial.Serial:
        ser = serial.Serial(
            port=self.cfg.path, baudrate=self.cfg.baudrate, timeout=0, write_timeout=0,
            exclusive=True,
        )  # fmt: skip
        self._fd = ser.fileno()
        self._out.clear()
        # Whatever is on the other end now has to introduce itself again.
        self._session.reset()
        self._open = True
        return ser

    def _close(self, ser: serial.Serial) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._fd)
        loop.remove_writer(self._fd)
        self._open = False
        with contextlib.suppress(OSError, serial.SerialException):
            ser.close()

    async def _serve(self, ser: serial.Serial) -> None:
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[str] = loop.create_future()
        decoder = FrameDecoder()
        loop.add_reader(self._fd, self._on_readable, decoder, gone)
        async with asyncio.TaskGroup() as tg:
            producing = tg.create_task(self._produce_loop(), name=f"serial-produce:{ser.port}")
            try:
                reason = await gone
            finally:
                producing.cancel()
        raise _PortGoneError(reason)

    # -- reading ---------------------------------------------------------------

    def _on_readable(self, decoder: FrameDecoder, gone: asyncio.Future[str]) -> None:
        try:
            data = os.read(self._fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._port_gone(gone, f"read: {errno.errorcode.get(exc.errno or 0, exc)}")
            return
        if not data:
            self._port_gone(gone, "end of file")
            return
        now = time.monotonic()
        for event in decoder.feed(data):
            if isinstance(event, FrameReceived):
                self._send(self._session.on_frame(event.frame, now))
            else:
                self._logs.warning(
                    "bad", "serial %s: bad frame (%s, %d bytes)", self.cfg.path, event.reason,
                    event.size,
                )  # fmt: skip
                self._send(self._session.on_bad_frame(now))
        self._jobs.set()

    def _port_gone(self, gone: asyncio.Future[str], reason: str) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        if not gone.done():
            gone.set_result(reason)

    # -- writing ---------------------------------------------------------------

    def _send(self, frames: list[Frame]) -> None:
        for frame in frames:
            data = wire(frame)
            if len(self._out) + len(data) > self._timing.write_buffer_bytes:
                self._logs.warning("wfull", "serial %s: write buffer full", self.cfg.path)
                continue
            self._out += data
            self._counters["frames_out"] += 1
        self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._out:
            try:
                n = os.write(self._fd, self._out)
            except BlockingIOError:
                loop.add_writer(self._fd, self._flush)
                return
            except OSError as exc:
                # The reader notices the same failure and reopens the port.
                self._logs.warning("write", "serial %s: write failed: %s", self.cfg.path, exc)
                self._out.clear()
                break
            del self._out[:n]
        loop.remove_writer(self._fd)

    # -- producing ---------------------------------------------------------------

    async def _produce_loop(self) -> None:
        while True:
            job = self._session.next_job()
            if job is None:
                self._jobs.clear()
                await self._jobs.wait()
                continue
            self._send(await self._produce(job))

    async def _produce(self, job: ProduceJob) -> list[Frame]:
        topic = self.cfg.topic_for(job.stream)
        key = job.device_id.encode("ascii")
        now_ms = int(time.time() * 1000)
        stamps = [r.ts_ms if r.ts_ms >= _MIN_DEVICE_TS_MS else now_ms for r in job.records]
        header = {_STREAM_HEADER: job.stream.encode("ascii")}
        timeout = self._timing.produce_timeout_s
        try:
            async with asyncio.timeout(timeout + 1.0):
                result = await self._producer.send_batch(
                    topic, [(key, r.value) for r in job.records], partition_key=key,
                    producer_id=job.producer_id, producer_epoch=job.producer_epoch,
                    base_sequence=job.base_seq, timestamps_ms=stamps,
                    headers=[header] * len(job.records), timeout_s=timeout,
                )  # fmt: skip
        except HeadwaterError as exc:
            self._counters["produce_errors"] += 1
            self._logs.warning(
                type(exc).__name__, "serial %s: produce to %s failed: %s", self.cfg.path, topic, exc
            )
            return self._session.on_produce_failed(job, retriable=exc.retriable)
        except (TimeoutError, OSError) as exc:
            self._counters["produce_errors"] += 1
            self._logs.warning("timeout", "serial %s: SPU unavailable: %r", self.cfg.path, exc)
            return self._session.on_produce_failed(job, retriable=True)
        except asyncio.CancelledError:
            self._session.on_produce_failed(job, retriable=True)
            raise
        except Exception:
            # A client bug must not take every device of this gateway down with it.
            self._counters["produce_errors"] += 1
            log.exception("serial %s: unexpected error while producing", self.cfg.path)
            return self._session.on_produce_failed(job, retriable=True)
        return self._session.on_produced(job, duplicate=result.duplicate)
