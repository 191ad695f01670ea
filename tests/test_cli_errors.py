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
    (["topic", "alter", "t", "--retention-time", "7"], {}, "give a unit"),
    (["topic", "alter", "t", "--segment-bytes", "1KiB"], {}, "at least 4096 bytes"),
    (["topic", "alter", "t"], {}, "nothing to change"),
    (["produce", "t", "-m", "x", "--compression", "lz9"], {}, "--compression must be"),
])
def test_bad_input_is_one_line(args: list[str], env: dict[str, str], message: str) -> None:
    out = hw(*args, env=env)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert message in out.stderr


def test_a_port_that_is_not_headwater_says_so_in_seconds() -> None:
    import socket
    import time

    from edge.testing import free_port

    port = free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    banner = socket.create_server(("127.0.0.1", 0))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        start = time.monotonic()
        silent = hw("--sc", f"127.0.0.1:{port}", "topic", "list")
        assert time.monotonic() - start < 15
        assert silent.returncode == 1
        assert "gave no Headwater answer within 5s" in silent.stderr
        assert len(silent.stderr.strip().splitlines()) == 1

        import threading

        def greet() -> None:
            conn, _ = banner.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            time.sleep(2)
            conn.close()

        threading.Thread(target=greet, daemon=True).start()
        other = hw("--sc", f"127.0.0.1:{banner.getsockname()[1]}", "topic", "list")
        assert other.returncode == 1
        assert "does not speak the Headwater protocol" in other.stderr
        assert len(other.stderr.strip().splitlines()) == 1
    finally:
        http.kill()
        http.wait(10)
        banner.close()


def test_a_broken_profile_does_not_lock_the_user_out(tmp_path: object) -> None:
    from pathlib import Path

    home = Path(str(tmp_path))
    env = {"XDG_CONFIG_HOME": str(home)}
    added = hw("profile", "add", "p1", "--sc", "127.0.0.1:9003", "--tls-ca", "/nonexistent",
               env=env)
    assert added.returncode == 2
    assert "profile p1: --tls-ca /nonexistent is not a readable file" in added.stderr
    (home / "headwater").mkdir()
    (home / "headwater" / "profiles.toml").write_text(
        'current = "p1"\n[profiles.p1]\nsc = "127.0.0.1:9003"\ntls_ca = "/gone.pem"\n')
    listed = hw("profile", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "p1" in listed.stdout
    used = hw("topic", "list", env=env)
    assert used.returncode == 1
    assert "profile p1" in used.stderr
    assert "Traceback" not in used.stderr
    assert hw("profile", "delete", "p1", env=env).returncode == 0
    assert "no profiles" in hw("profile", "list", env=env).stdout
