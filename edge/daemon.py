"""Running services in the foreground: signals, readiness, clean stop.

Used by ``headwater run sc|spu`` (under systemd: ``Type=notify``) and by
``headwater local``. SIGTERM and SIGINT start a clean stop: listeners close,
partitions flush, fsync and close their files, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import Callable, Sequence
from typing import Protocol

from edge import sdnotify, tls

log = logging.getLogger(__name__)


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: an SPU keeps two or three
    descriptors open per hosted partition, and the usual soft limit of 1,024 is
    reached near 400 partitions (a cloud SPU holding many sites' mirrors).
    systemd units set LimitNOFILE, which sets both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target,
                        exc)


async def serve(services: Sequence[Service], *, ready_text: Callable[[], str],
                on_ready: Callable[[], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Start ``services`` in order, report ready, wait for a signal, stop in reverse.

    SIGHUP (``systemctl reload``) loads the TLS certificates again, as does a
    change of their files; nothing restarts."""
    stop = stop or asyncio.Event()
    raise_open_files_limit()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, tls.reload_certificates)
    certificates = asyncio.create_task(tls.watch(), name="tls-watch")
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
        certificates.cancel()
        for service in reversed(started):
            await service.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _watchdog(interval: float) -> None:
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
