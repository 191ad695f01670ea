"""``python -m gateway.serial``: run the serial bridge for one or more ports.

Example: ``python -m gateway.serial --port /dev/ttyUSB0 --baud 115200
--sc 127.0.0.1:9003 --topic readings --map temp=temperatures``.
Runs until SIGTERM or SIGINT; logs the counters every ``--stats-every`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys

from gateway.serial.bridge import SerialBridge, SerialPortConfig

log = logging.getLogger("gateway.serial")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gateway.serial", description=__doc__)
    p.add_argument("--port", action="append", required=True, help="serial device; repeatable")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--sc", required=True, help="SC address host:port")
    p.add_argument("--topic", required=True, help="topic for streams without a --map entry")
    p.add_argument("--map", action="append", default=[], metavar="STREAM=TOPIC")
    p.add_argument("--stats-every", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def _topic_map(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        stream, sep, topic = item.partition("=")
        if not sep or not stream or not topic:
            raise SystemExit(f"--map wants STREAM=TOPIC, got {item!r}")
        out[stream] = topic
    return out


async def _main(args: argparse.Namespace) -> None:
    from edge.client import Producer  # imported here: keeps --help fast on a Pi

    topic_map = _topic_map(args.map)
    ports = [
        SerialPortConfig(path=p, baudrate=args.baud, topic_map=topic_map, default_topic=args.topic)
        for p in args.port
    ]
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
    async with Producer(args.sc, idempotent=True) as producer:
        bridge = SerialBridge(ports=ports, producer=producer)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(bridge.run(), name="serial-bridge")
            tg.create_task(_report(bridge, args.stats_every), name="serial-stats")


async def _report(bridge: SerialBridge, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        log.info("stats %s", json.dumps(bridge.stats(), sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )  # fmt: skip
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
