"""Node health for heartbeats and ``cluster status`` (psutil)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

_PROCESS: psutil.Process | None = None


def snapshot(data_dir: Path) -> dict[str, Any]:
    """CPU, memory, disk and temperature of this node and process."""
    global _PROCESS  # noqa: PLW0603 - one Process object keeps cpu_percent's baseline
    if _PROCESS is None:
        _PROCESS = psutil.Process(os.getpid())
        _PROCESS.cpu_percent(None)
    vm = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage(str(data_dir))
        disk_info = {"disk_total": disk.total, "disk_used": disk.used, "disk_free": disk.free}
    except OSError:
        disk_info = {}
    return {
        "time_ms": int(time.time() * 1000),
        "cpu_percent": psutil.cpu_percent(None),
        "process_cpu_percent": _PROCESS.cpu_percent(None),
        "mem_total": vm.total,
        "mem_available": vm.available,
        "rss": _PROCESS.memory_info().rss,
        "load1": os.getloadavg()[0],
        "temperature_c": _temperature(),
        **disk_info,
    }


def _temperature() -> float | None:
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader()
    except (OSError, RuntimeError):
        return None
    # A Raspberry Pi reports its SoC as cpu_thermal; x86 as coretemp or k10temp.
    for name in ("cpu_thermal", "coretemp", "k10temp", "soc_thermal"):
        if sensors.get(name):
            return float(sensors[name][0].current)
    for entries in sensors.values():
        if entries:
            return float(entries[0].current)
    return None
