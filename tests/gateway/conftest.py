"""Gateway test fixtures: the real ``gateway`` package, and a real mosquitto broker.

pytest puts ``tests/`` on sys.path, where ``tests/gateway`` is a namespace
directory that would shadow the project's ``gateway`` package: put the project
root first and forget any namespace module already imported under that name.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path[:1]:
    sys.path.insert(0, ROOT)
HELPERS = str(Path(__file__).resolve().parent / "mqtt")
if HELPERS not in sys.path:
    sys.path.append(HELPERS)  # gateway_memlog and friends, imported by the MQTT tests
for _name in [m for m in sys.modules if m == "gateway" or m.startswith("gateway.")]:
    if getattr(sys.modules[_name], "__file__", None) is None:
        del sys.modules[_name]

from mqtt_helpers import require_mosquitto  # noqa: E402 - after the path fix

from gateway.mqtt.testing import Mosquitto  # noqa: E402


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    require_mosquitto()
    async with Mosquitto(tmp_path / "mosquitto") as running:
        yield running
