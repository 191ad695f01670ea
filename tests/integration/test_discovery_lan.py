"""A site assembles itself across real hosts: network namespaces on a bridge, mDNS
multicast between them, not one address in any configuration.

Hosts: h1 runs the SC and SPU 1, h2 and h3 one SPU each, ``laptop`` is where the
CLI runs, h5 runs the SC of another site on the same LAN. Everyone is given only
a site name.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import netlab
import pytest
import support

from edge.secret import ClusterSecret
from gateway.mqtt.testing import broker_config, find_mosquitto

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HW = [sys.executable, "-m", "edge.cli.main"]
TOOLS = [sys.executable, str(Path(__file__).with_name("mdns_tools.py"))]
ENV = {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _until(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.2)


class Site:
    def __init__(self, lab: netlab.Lab, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        sw = lab.bridge("sw")
        self.h1 = lab.host("h1", sw, "198.18.0.1")
        self.h2 = lab.host("h2", sw, "198.18.0.2")
        self.h3 = lab.host("h3", sw, "198.18.0.3")
        self.laptop = lab.host("laptop", sw, "198.18.0.4")
        self.h5 = lab.host("h5", sw, "198.18.0.5")
        self.logs: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def daemon(self, name: str, host: netlab.Host, *args: str, log: str | None = None
               ) -> None:
        log = log or name
        self.logs[log] = self.tmp / f"{log}.log"
        # Each site is a cluster with a secret of its own.
        site = args[args.index("--site") + 1] if "--site" in args else "static"
        secret = ClusterSecret.ensure(self.tmp / f"{site}.secret").path
        self.procs[name] = host.start(
            [*HW, "run", *args, "--data-dir", str(self.tmp / name), "--log-level", "info",
             "--cluster-secret", str(secret)],
            log=self.logs[log], env=ENV)

    def cli(self, *args: str, timeout: float = 60, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.laptop.argv([*HW, *args]), input=stdin, capture_output=True,
                              text=True, timeout=timeout, check=check,
                              env={**os.environ, **ENV})

    def spus(self, site: str = "lan1") -> list[dict[str, Any]]:
        out = self.cli("--sc", f"mdns:{site}", "spu", "list", "-O", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else []

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    lab = netlab.Lab()
    try:
        s = Site(lab, tmp_path)
        s.daemon("sc", s.h1, "sc", "--site", "lan1")
        s.daemon("spu1", s.h1, "spu", "--id", "1", "--site", "lan1")
        s.daemon("spu2", s.h2, "spu", "--id", "2", "--site", "lan1")
        s.daemon("spu3", s.h3, "spu", "--id", "3", "--site", "lan1")
        s.daemon("sc-lan2", s.h5, "sc", "--site", "lan2")
        yield s
    finally:
        lab.close()


def _online(spus: list[dict[str, Any]]) -> bool:
    return len(spus) == 3 and all(s["online"] for s in spus)


def _registrations(site: Site, spu: int) -> int:
    return len(re.findall(rf"SPU {spu} online", site.log("sc")))


def test_a_site_assembles_follows_its_sc_and_ignores_strangers(site: Site) -> None:
    spus = _until("three SPUs registered through mDNS", lambda: _online(site.spus()) and
                  site.spus(), 40)
    # Each SPU registered the address the SC reached it on, not loopback.
    assert sorted(s["public"] for s in spus) == [
        "198.18.0.1:9005", "198.18.0.2:9005", "198.18.0.3:9005"]

    site.cli("--sc", "mdns:lan1", "topic", "create", "t", "-p", "3", "-r", "3")
    _until("replicas on every host", lambda: all(
        len(p.get("isr") or []) == 3
        for p in json.loads(site.cli("--sc", "mdns:lan1", "partition", "list", "-O",
                                     "json").stdout)), 30)
    values = [f"reading-{i}" for i in range(30)]
    site.cli("--sc", "mdns:lan1", "produce", "t", stdin="\n".join(values) + "\n")
    got = site.cli("--sc", "mdns:lan1", "consume", "t", "-B", "-d").stdout.split()
    assert sorted(got) == sorted(values)

    # A gateway on h2 finds the site by name and puts its topics on h2's SPU.
    _gateway_pushes_to_its_own_host(site)

    # The other site on the same LAN is seen, and never joined.
    assert site.spus("lan2") == []
    found = json.loads(site.cli("discover", "-O", "json", "-t", "3").stdout)
    assert {(r["site"], r["role"], r["id"]) for r in found} >= {
        ("lan1", "sc", None), ("lan1", "spu", 1), ("lan1", "spu", 2), ("lan1", "spu", 3),
        ("lan2", "sc", None)}

    # The SC's host gets a new address; every SPU registers again within 10 s.
    before = {n: _registrations(site, n) for n in (1, 2, 3)}
    changed = time.monotonic()
    site.h1.set_address("198.18.0.11")
    _until("all SPUs registered again", lambda: all(
        _registrations(site, n) > before[n] for n in (1, 2, 3)), 10)
    back_after = time.monotonic() - changed
    spus = _until("SPUs online at the new address", lambda: _online(site.spus()) and
                  site.spus(), 10)
    assert "198.18.0.11:9005" in {s["public"] for s in spus}
    site.cli("--sc", "mdns:lan1", "produce", "t", stdin="after-move\n")
    print(f"SPUs back {back_after:.1f}s after the SC's address changed")

    # A forged SC for this site with another cluster id: no SPU dials it, not even
    # one that starts again while it is announced.
    forger = site.laptop.start([*TOOLS, "forge", "lan1", "f0e1d2c3b4a5", "9904"],
                               log=site.tmp / "forger.log", env=ENV)
    _until("forged announcement out", lambda: "announced" in
           (site.tmp / "forger.log").read_text(), 20)
    _until("SPUs saw it", lambda: all("f0e1d2c3b4a5" in site.log(f"spu{n}") for n in (1, 3)),
           10)
    site.procs["spu2"].send_signal(signal.SIGTERM)
    site.procs["spu2"].wait(20)
    before = {2: _registrations(site, 2)}
    site.daemon("spu2", site.h2, "spu", "--id", "2", "--site", "lan1", log="spu2-again")
    _until("SPU 2 back with the real SC", lambda: _registrations(site, 2) > before[2], 20)
    assert forger.poll() is None
    assert "connection" not in (site.tmp / "forger.log").read_text()
    ignored = {log: [line for line in site.log(log).splitlines()
                     if "ignoring SC announcement" in line and "f0e1d2c3b4a5" in line]
               for log in ("spu1", "spu3", "spu2-again")}
    assert len(ignored["spu1"]) == len(ignored["spu3"]) == 1, ignored
    # A restarted SPU may register before it hears the forgery at all.
    assert len(ignored["spu2-again"]) <= 1, ignored
    # A client has joined no cluster: it refuses to guess between the two.
    refused = site.cli("--sc", "mdns:lan1", "topic", "list", check=False)
    assert refused.returncode == 1
    assert "SCs of different clusters announce site lan1" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


PUBLISH = """
import asyncio, sys, aiomqtt, cbor2
async def main():
    async with aiomqtt.Client("127.0.0.1", 1883, identifier="device-pub") as c:
        for seq in range(20):
            await c.publish("headwater/dev1/temperature", cbor2.dumps(
                {"d": "dev1", "e": 1, "s": seq, "t": 1700000000000 + seq, "v": seq * 0.5}),
                qos=1)
asyncio.run(main())
"""


def _gateway_pushes_to_its_own_host(site: Site) -> None:
    broker = find_mosquitto()
    support.require(broker is not None, "mosquitto is not installed")
    assert broker is not None
    conf = site.tmp / "mosquitto.conf"
    conf.write_text(broker_config(port=1883, data_dir=site.tmp / "mosquitto"))
    (site.tmp / "mosquitto").mkdir()
    site.h2.start([broker, "-c", str(conf)], log=site.tmp / "mosquitto.log")
    gw = site.tmp / "gateway.toml"
    gw.write_text('site = "lan1"\ncreate_topics = true\n[status]\nlisten = "127.0.0.1:0"\n'
                  '[mqtt]\nhost = "127.0.0.1"\nport = 1883\nclient_id = "gw-h2"\n'
                  '[[mqtt.rules]]\nfilter = "headwater/+/temperature"\n'
                  'topic = "temperature"\nformat = "cbor"\n')
    site.logs["gateway"] = site.tmp / "gateway.log"
    site.h2.start([sys.executable, "-m", "gateway", "run", "--config", str(gw)],
                  log=site.logs["gateway"], env=ENV)
    _until("gateway created its topic", lambda: "created topic temperature (led by SPU 2 "
           "on this host)" in site.log("gateway"), 30)
    _until("broker up", lambda: site.h2.run([sys.executable, "-c", PUBLISH], check=False,
                                             timeout=30).returncode == 0, 20)
    parts = json.loads(site.cli("--sc", "mdns:lan1", "partition", "list", "-t", "temperature",
                                "-O", "json").stdout)
    assert [p["leader"] for p in parts] == [2]
    _until("the 20 device records in the topic", lambda: len(site.cli(
        "--sc", "mdns:lan1", "consume", "temperature", "-B", "-d").stdout.splitlines()) == 20,
        20)


def test_a_clean_stop_withdraws_the_announcement_at_once(site: Site) -> None:
    watcher = site.laptop.start([*TOOLS, "watch", "lan2"], log=site.tmp / "watch.log",
                                env=ENV)
    events = site.tmp / "watch.log"

    def seen(kind: str) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, events.read_text().splitlines())
                if e.get("event") == kind]

    _until("lan2 SC seen", lambda: seen("added"), 20)
    site.procs["sc-lan2"].send_signal(signal.SIGTERM)
    site.procs["sc-lan2"].wait(20)
    stopped = time.time()
    (removed,) = _until("lan2 SC withdrawn", lambda: seen("removed"), 5)
    assert removed["t"] - stopped < 1.0
    assert watcher.poll() is None


def test_mdns_port_taken_leaves_the_node_static_until_it_is_free(tmp_path: Path) -> None:
    lab = netlab.Lab()
    try:
        sw = lab.bridge("sw")
        h = lab.host("h", sw, "198.18.2.1")
        # Another mDNS stack holding UDP 5353 without SO_REUSEADDR.
        holder = h.start([sys.executable, "-c",
                          "import socket,time; s=socket.socket(socket.AF_INET, "
                          "socket.SOCK_DGRAM); s.bind(('0.0.0.0', 5353)); print('bound', "
                          "flush=True); time.sleep(600)"], log=tmp_path / "holder.log")
        _until("5353 held", lambda: "bound" in (tmp_path / "holder.log").read_text(), 10)
        log = tmp_path / "sc.log"
        secret = ClusterSecret.ensure(tmp_path / "cluster.secret").path
        sc = h.start([*HW, "run", "sc", "--data-dir", str(tmp_path / "sc"), "--site", "x",
                      "--log-level", "info", "--cluster-secret", str(secret)], log=log, env=ENV)
        _until("SC serving", lambda: "SC serving clients" in log.read_text(), 20)
        _until("discovery off", lambda: "mDNS discovery off" in log.read_text(), 10)
        ping = h.run([*HW, "--sc", "127.0.0.1:9003", "ping"], check=False)
        assert ping.returncode == 0, ping.stderr
        assert sc.poll() is None
        lines = [line for line in log.read_text().splitlines() if "mDNS" in line]
        assert len(lines) == 1, lines
        assert "5353" in lines[0]
        assert "static configuration" in lines[0]
        assert holder.poll() is None
        # The other stack goes away: the SC announces itself without a restart.
        holder.kill()
        _until("announced once 5353 is free", lambda: "announcing x-sc-" in log.read_text(), 15)
        assert sc.poll() is None
    finally:
        lab.close()
