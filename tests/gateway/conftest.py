"""Gateway test fixtures: the real ``gateway`` package, and a real mosquitto broker.

pytest puts ``tests/`` on sys.path, where ``tests/gateway`` is a namespace
directory that would shadow the project's ``gateway`` package: put the project
root first and forget any namespace module already imported under that name.
"""

from __future__ import annotations

import os
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

from gateway.mqtt.testing import Mosquitto, find_mosquitto  # noqa: E402 - after the path fix

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_mosquitto() -> str:
    """The broker binary; a missing one skips locally and FAILS in CI (``CI=true``)."""
    path = find_mosquitto()
    if path is None:
        reason = "mosquitto is not installed (Debian package: mosquitto)"
        if IN_CI:
            pytest.fail(f"CI requires it: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    require_mosquitto()
    async with Mosquitto(tmp_path / "mosquitto") as running:
        yield running
