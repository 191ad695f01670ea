"""``headwater local --site``, ``headwater discover`` and ``--sc mdns:SITE`` as a user types them.

On this machine's own interfaces: each test uses a site name of its own (see
test_discovery_loopback.py for why there is no private mDNS port).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.testing import free_port

HW = [sys.executable, "-m", "edge.cli.main"]


def hw(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HW, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, "HEADWATER_SC": ""})


@pytest.fixture
def local_site(tmp_path: Path) -> Iterator[tuple[str, int]]:
    site = f"cli{secrets.token_hex(4)}"
    sc_port, spu_port = free_port(), free_port()
    log = (tmp_path / "local.log").open("wb")
    proc = subprocess.Popen([*HW, "local", "--site", site, "--data-dir", str(tmp_path / "d"),
                             "--sc-port", str(sc_port), "--spu-port", str(spu_port),
                             "--log-level", "info"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "announcing" not in (tmp_path / "local.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "local.log").read_text()
            time.sleep(0.1)
        yield site, sc_port
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        log.close()
    text = (tmp_path / "local.log").read_text()
    assert "stopped; data flushed" in text


def test_discover_lists_the_local_site_and_mdns_addresses_work(
        local_site: tuple[str, int]) -> None:
    site, sc_port = local_site
    table = hw("discover", "--site", site, "-t", "2")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["ROLE", "SITE", "ID", "ADDRESSES"]
    assert {r.split()[0] for r in rows} == {"sc", "spu"}
    # Columns are aligned: every row has its SITE where the header has it.
    col = header.index("SITE")
    assert all(r[col:].startswith(site) for r in rows)
    (sc,) = [r for r in json.loads(hw("discover", "--site", site, "-t", "2", "-O",
                                      "json").stdout) if r["role"] == "sc"]
    assert sc["public_port"] == sc_port
    made = hw("--sc", f"mdns:{site}", "topic", "create", "found")
    assert made.returncode == 0, made.stderr
    listed = hw("--sc", f"mdns:{site}", "topic", "list", "-O", "json")
    assert [t["name"] for t in json.loads(listed.stdout)] == ["found"]


def test_nothing_found_is_one_line_and_a_failure() -> None:
    site = f"none{secrets.token_hex(4)}"
    empty = hw("discover", "--site", site, "-t", "0.5")
    assert empty.returncode == 1
    assert "nothing announced for site" in empty.stderr
    missing = hw("--sc", f"mdns:{site}", "topic", "list")
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1
    assert f"no SC announced for mdns:{site}" in missing.stderr
    bad = hw("--sc", "mdns:bad/site", "topic", "list")
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
