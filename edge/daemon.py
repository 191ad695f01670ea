"""Running services in the foreground: signals, readiness, clean stop.

Used by ``headwater run sc|spu`` (under systemd: ``Type=notify``) and by
``headwater local``. SIGTERM and SIGINT start a clean stop: listeners close,
partitions flush, fsync and close their files, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Protocol

from edge import sdnotify

log = logging.getLogger(__name__)


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def serve(services: Sequence[Service], *, ready_text: Callable[[], str],
                on_ready: Callable[[], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Start ``services`` in order, report ready, wait for a signal, stop in reverse."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[Service] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        text = ready_text()
        sdnotify.ready(text)
        if on_ready is not None:
            on_ready()
        watchdog = sdnotify.watchdog_interval()
        pinger = (asyncio.create_task(_watchdog(watchdog / 2), name="watchdog")
                  if watchdog else None)
        await stop.wait()
        if pinger is not None:
            pinger.cancel()
        sdnotify.stopping("stopping: flushing partitions")
        log.info("stopping")
    finally:
        for service in reversed(started):
            await service.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _watchdog(interval: float) -> None:
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
