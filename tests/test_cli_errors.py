"""CLI input is checked where it enters: one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HW = [sys.executable, "-m", "edge.cli.main"]


def hw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HW, *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "HEADWATER_SC": "", **(env or {})})


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--sc", "127.0.0.1:99999", "topic", "list"], {}, "port 99999 out of range"),
    (["--sc", "nonsense", "topic", "list"], {}, "must be HOST:PORT"),
    (["topic", "list"], {"HEADWATER_SC": "nonsense"}, "(from HEADWATER_SC)"),
    (["topic", "create", "t", "--retention-time", "7"], {}, "give a unit"),
    (["topic", "create", "t", "--segment-time", "10ms"], {}, "at least 1s"),
    (["topic", "create", "t", "--segment-bytes", "4096"], {}, "give a unit"),
    (["topic", "create", "t", "--retention-bytes", "10B"], {}, "at least 4096 bytes"),
])
def test_bad_input_is_one_line(args: list[str], env: dict[str, str], message: str) -> None:
    out = hw(*args, env=env)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert message in out.stderr
