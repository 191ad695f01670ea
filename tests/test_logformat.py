"""Daemon log lines: syslog priorities under systemd, JSON lines on request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge.testing import free_port


def _run_sc(tmp_path: Path, *extra: str, env: dict[str, str]) -> list[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli.main", "run", "sc", "--data-dir", str(tmp_path / "sc"),
         "--public-addr", f"127.0.0.1:{port}", "--private-addr", f"127.0.0.1:{free_port()}",
         "--log-level", "info", "--insecure-private", *extra],
        stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err.splitlines()


def test_under_systemd_lines_carry_their_priority(tmp_path: Path) -> None:
    lines = _run_sc(tmp_path, env={"JOURNAL_STREAM": "8:12345"})
    serving = [line for line in lines if "SC serving clients" in line]
    assert serving
    assert serving[0].startswith("<6>INFO edge.sc.service: ")
    assert all(line.startswith(("<2>", "<3>", "<4>", "<6>", "<7>")) for line in lines), lines


def test_json_lines(tmp_path: Path) -> None:
    lines = _run_sc(tmp_path, "--log-format", "json", env={})
    docs = [json.loads(line) for line in lines]
    assert docs
    serving = [d for d in docs if "SC serving clients" in d["msg"]]
    assert serving[0]["level"] == "info"
    assert serving[0]["logger"] == "edge.sc.service"
    assert isinstance(serving[0]["ts"], float)
