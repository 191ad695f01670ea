"""Firmware unit tests under the real MicroPython unix port, with a 64 KB heap.

Every firmware module and test module is compiled with mpy-cross first (as a
device runs it); each MicroPython test function then runs in its own
``micropython -X heapsize=64k`` process, with the golden vectors of
tests/vectors/serial.json and tests/gateway/mqtt/mqtt_vectors.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MP = HERE / "mp"
ROOT = HERE.parents[1]
FIRMWARE = ROOT / "firmware"
VECTORS = ROOT / "tests" / "vectors" / "serial.json"
MQTT_VECTORS = ROOT / "tests" / "gateway" / "mqtt" / "mqtt_vectors.json"
MODULES = ["t_cobs", "t_cbor", "t_buffer", "t_serial_link", "t_mqtt_link"]
HEAP = "64k"


def tool(name: str) -> str:
    """Path of a required tool; in CI a missing tool fails the test instead of skipping."""
    found = shutil.which(name) or shutil.which(str(Path(sys.executable).parent / name))
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is required in CI (pip install -e '.[test]')")
    pytest.skip(f"{name} not installed")
    raise AssertionError  # unreachable


@pytest.fixture(scope="session")
def mp_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Compiled firmware and tests, and the vectors split by section."""
    cross = tool("mpy-cross")
    build = tmp_path_factory.mktemp("mpy")
    (build / "headwater").mkdir()
    for src in sorted((FIRMWARE / "headwater").glob("*.py")):
        subprocess.run([cross, "-o", str(build / "headwater" / (src.stem + ".mpy")), str(src)],
                       check=True)  # fmt: skip
    for src in sorted(MP.glob("*.py")):
        if src.name != "runner.py":
            subprocess.run([cross, "-o", str(build / (src.stem + ".mpy")), str(src)], check=True)
    split = tmp_path_factory.mktemp("vectors")
    for section, value in json.loads(VECTORS.read_text()).items():
        (split / f"{section}.json").write_text(json.dumps(value))
    return build, split


def run_mp(build: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HW_MP_PATH": str(build[0]), "HW_VECTORS_DIR": str(build[1]),
           "HW_MQTT_VECTORS": str(MQTT_VECTORS)}
    return subprocess.run(
        [tool("micropython"), "-X", f"heapsize={HEAP}", str(MP / "runner.py"), *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def _cases() -> list[tuple[str, str]]:
    out = []
    for module in MODULES:
        src = (MP / f"{module}.py").read_text()
        names = [
            line[4:].split("(")[0] for line in src.splitlines() if line.startswith("def test_")
        ]
        out += [(module, n) for n in names]
    return out


@pytest.mark.parametrize(("module", "name"), _cases(), ids=str)
def test_micropython(mp_build: tuple[Path, Path], module: str, name: str) -> None:
    proc = run_mp(mp_build, module, name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"PASS {name}" in proc.stdout, proc.stdout + proc.stderr


def test_runner_lists_what_the_driver_expects(mp_build: tuple[Path, Path]) -> None:
    for module in MODULES:
        proc = run_mp(mp_build, module, "--list")
        listed = set(proc.stdout.split())
        assert listed == {n for m, n in _cases() if m == module}, proc.stderr
