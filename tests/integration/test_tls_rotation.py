"""Certificates for a fleet (``headwater tls``) and their rotation without a restart.

The PKI is made with the CLI (the ``cryptography`` package, no openssl). A real SC
process reloads its certificate on SIGHUP and when the files change, and stays
the same process; an SC and SPU in-process keep a producer and a consumer running
while every certificate is replaced underneath them, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from support import require

from edge.client import Acks, Consumer, Offset, Producer
from edge.sc.config import ScConfig
from edge.sc.service import Sc
from edge.spu.config import SpuConfig
from edge.spu.service import Spu
from edge.testing import free_port
from edge.tls import TlsConfig, client_context, reload_certificates

HW = [sys.executable, "-m", "edge.cli.main"]


@pytest.fixture(autouse=True)
def _cryptography() -> None:
    """headwater tls needs the [tls] extra (the test extra has it)."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        require(False, "the cryptography package (pip install 'headwater[tls]')")


def tls(*args: str) -> str:
    out = subprocess.run([*HW, "tls", *args], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def make_pki(directory: Path) -> None:
    tls("init", "--dir", str(directory))
    tls("issue", "--dir", str(directory), "--kind", "sc", "--host", "127.0.0.1")
    tls("issue", "--dir", str(directory), "--kind", "spu", "--id", "1", "--host", "127.0.0.1")
    tls("issue", "--dir", str(directory), "--kind", "user", "alice")


def reissue(directory: Path, live: Path) -> None:
    """New certificates from the same CA, copied over the live files (as a renewal
    is rolled out: each file replaced whole)."""
    tls("issue", "--dir", str(directory), "--kind", "sc", "--host", "127.0.0.1", "--force")
    tls("issue", "--dir", str(directory), "--kind", "spu", "--id", "1", "--host",
        "127.0.0.1", "--force")
    for name in ("sc.crt", "sc.key", "spu-1.crt", "spu-1.key"):
        shutil.copy(directory / name, live / f".{name}")
        os.replace(live / f".{name}", live / name)


async def served_serial(addr: str, ca: Path) -> str:
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    _, writer = await asyncio.open_connection(host, int(port), ssl=ctx,
                                              server_hostname=host)
    try:
        cert = writer.get_extra_info("peercert")
        return str(cert["serialNumber"])
    finally:
        writer.close()


def test_the_cli_makes_a_pki_whose_certificates_name_their_owners(tmp_path: Path) -> None:
    make_pki(tmp_path)
    shown = tls("show", str(tmp_path / "spu-1.crt"))
    assert "CN=spu-1" in shown
    assert "spu-1.headwater" in shown
    assert "127.0.0.1" in shown
    assert "days left" in shown
    for key in ("ca.key", "sc.key", "spu-1.key", "alice.key"):
        assert (tmp_path / key).stat().st_mode & 0o077 == 0
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    ctx.load_cert_chain(str(tmp_path / "alice.crt"), str(tmp_path / "alice.key"))
    refused = subprocess.run([*HW, "tls", "issue", "--dir", str(tmp_path), "--kind", "sc"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "--force" in refused.stderr


async def test_a_running_sc_reloads_its_certificate_on_sighup_and_on_file_change(
        tmp_path: Path) -> None:
    pki, live = tmp_path / "pki", tmp_path / "live"
    make_pki(pki)
    live.mkdir()
    for name in ("ca.crt", "sc.crt", "sc.key"):
        shutil.copy(pki / name, live / name)
    public = f"127.0.0.1:{free_port()}"
    config = tmp_path / "sc.toml"
    config.write_text(f'data_dir = "{tmp_path / "sc"}"\npublic_addr = "{public}"\n'
                      f'private_addr = "127.0.0.1:{free_port()}"\ninsecure_private = true\n'
                      f'[tls]\ncert = "{live / "sc.crt"}"\nkey = "{live / "sc.key"}"\n'
                      f'ca = "{live / "ca.crt"}"\n')
    log = (tmp_path / "sc.log").open("wb")
    proc = subprocess.Popen([*HW, "run", "sc", "--config", str(config), "--log-level",
                             "info"], stdout=log, stderr=subprocess.STDOUT)
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    first = await served_serial(public, live / "ca.crt")
                    break
                except OSError:
                    await asyncio.sleep(0.1)
        reissue(pki, live)
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            while (second := await served_serial(public, live / "ca.crt")) == first:
                await asyncio.sleep(0.1)
        # Without a signal: a changed file is noticed by the watcher.
        reissue(pki, live)
        async with asyncio.timeout(30):
            while (third := await served_serial(public, live / "ca.crt")) == second:
                await asyncio.sleep(0.2)
        assert len({first, second, third}) == 3
        assert proc.poll() is None  # the same process all along
        # A broken renewal (a key of another certificate) is refused; the old one stays.
        shutil.copy(pki / "alice.key", live / "sc.key")
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        assert await served_serial(public, live / "ca.crt") == third
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
    text = (tmp_path / "sc.log").read_text()
    assert text.count("TLS certificates reloaded") >= 2, text
    assert "not reloaded, the old ones stay in use" in text, text


async def test_producer_and_consumer_run_through_a_rotation_and_lose_nothing(
        tmp_path: Path) -> None:
    pki, live = tmp_path / "pki", tmp_path / "live"
    make_pki(pki)
    live.mkdir()
    for name in ("ca.crt", "sc.crt", "sc.key", "spu-1.crt", "spu-1.key"):
        shutil.copy(pki / name, live / name)
    ca = live / "ca.crt"
    sc = Sc(ScConfig(data_dir=tmp_path / "sc", public_addr="127.0.0.1:0",
                     private_addr="127.0.0.1:0", insecure_private=True,
                     tls=TlsConfig(cert=live / "sc.crt", key=live / "sc.key", ca=ca)))
    await sc.start()
    spu = Spu(SpuConfig(id=1, data_dir=tmp_path / "spu", public_addr="127.0.0.1:0",
                        private_addr="127.0.0.1:0", sc=sc.private_addr, insecure_private=True,
                        tls=TlsConfig(cert=live / "spu-1.crt", key=live / "spu-1.key", ca=ca)))
    await spu.start()
    try:
        assert spu.link is not None
        await asyncio.wait_for(spu.link.registered_once.wait(), 10)
        client = client_context(TlsConfig(ca=ca))
        from edge.client import Admin

        async with Admin(sc.public_addr, ssl=client) as admin:
            await admin.create_topic("t")
            await admin.wait_ready("t")
        before = await served_serial(spu.public_addr, ca)
        sent: list[bytes] = []
        async with Producer(sc.public_addr, acks=Acks.ALL, ssl=client) as p:
            for i in range(300):
                await (await p.send("t", b"%d" % i))
                sent.append(b"%d" % i)
                if i == 100:
                    reissue(pki, live)
                    assert reload_certificates() >= 2
                await asyncio.sleep(0.005)
        assert await served_serial(spu.public_addr, ca) != before
        async with Consumer(sc.public_addr, "t", offset=Offset.beginning(),
                            stop_at_end=True, ssl=client) as c:
            got = [r.value async for r in c]
        assert got == sent
    finally:
        await spu.stop()
        await sc.stop()
