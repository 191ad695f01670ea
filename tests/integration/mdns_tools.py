"""Processes the LAN tests run inside namespaces: a forger and a watcher.

``forge SITE CLUSTER PORT``: announce an SC of SITE with another cluster id whose
ports point at a listener here; print ``connection`` for every TCP connection
it receives (nothing may ever dial it).
``watch SITE``: print one JSON line per announcement seen or withdrawn, with
the wall-clock time, so a test can time a goodbye from another process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from edge.discovery.announcer import Announcer
from edge.discovery.directory import Directory
from edge.discovery.mdns import Mdns
from edge.discovery.txt import Announcement, Role


async def forge(site: str, cluster: str, port: int) -> None:
    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        print("connection", flush=True)
        writer.close()

    server = await asyncio.start_server(connected, "0.0.0.0", port)
    announcer = Announcer(Mdns(), Announcement(role=Role.SC, site=site, cluster=cluster,
                                               public_port=port, private_port=port),
                          bind_host="0.0.0.0")
    announcer.start()
    await announcer.registered.wait()
    print("announced", flush=True)
    async with server:
        await server.serve_forever()


async def watch(site: str) -> None:
    directory = Directory(Mdns())
    await directory.start()
    seen: set[str] = set()
    print(json.dumps({"event": "started", "t": time.time()}), flush=True)
    while True:
        await directory.wait_changed(1.0)
        now = {n for n, e in directory.entries.items() if e.announcement.site == site}
        for name in sorted(now - seen):
            print(json.dumps({"event": "added", "name": name, "t": time.time()}), flush=True)
        for name in sorted(seen - now):
            print(json.dumps({"event": "removed", "name": name, "t": time.time()}), flush=True)
        seen = now


if __name__ == "__main__":
    if sys.argv[1] == "forge":
        asyncio.run(forge(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        asyncio.run(watch(sys.argv[2]))
