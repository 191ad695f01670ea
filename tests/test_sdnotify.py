"""sd_notify against a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import sdnotify


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can pass the 108-byte sun_path limit; systemd's own
    # socket lives at /run/systemd/notify.
    path = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def path_socket(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    address = str(short_dir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        yield server


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"headwater-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield server


def test_ready_to_path_socket(path_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1") is True
    assert path_socket.recv(4096) == b"READY=1"


def test_several_states_in_one_datagram(path_socket: socket.socket) -> None:
    assert sdnotify.notify(sdnotify.READY, "STATUS=listening on 0.0.0.0:9005") is True
    assert path_socket.recv(4096) == b"READY=1\nSTATUS=listening on 0.0.0.0:9005"


def test_abstract_namespace(abstract_socket: socket.socket) -> None:
    assert sdnotify.notify("STOPPING=1") is True
    assert abstract_socket.recv(4096) == b"STOPPING=1"


def test_helpers_send_expected_bytes(abstract_socket: socket.socket) -> None:
    assert sdnotify.ready("registered as SPU 7\n")
    assert abstract_socket.recv(4096) == b"READY=1\nSTATUS=registered as SPU 7"
    assert sdnotify.ready()
    assert abstract_socket.recv(4096) == b"READY=1"
    assert sdnotify.status("draining  two\tpartitions")
    assert abstract_socket.recv(4096) == b"STATUS=draining two partitions"
    assert sdnotify.stopping("SIGTERM")
    assert abstract_socket.recv(4096) == b"STOPPING=1\nSTATUS=SIGTERM"
    assert sdnotify.stopping()
    assert abstract_socket.recv(4096) == b"STOPPING=1"


def test_utf8_status(path_socket: socket.socket) -> None:
    assert sdnotify.status("Zürich site up")
    assert path_socket.recv(4096) == "STATUS=Zürich site up".encode()


def test_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False


@pytest.mark.parametrize("value", ["", "@", "relative/socket", "vsock:2:1234", "/" + "x" * 200])
def test_unusable_socket_values_are_no_ops(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False


def test_missing_socket_reports_false(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "gone"))
    assert sdnotify.notify("READY=1") is False
    assert "sd_notify" in caplog.text


@pytest.mark.parametrize("state", ["READY", "=1", "READY=1\nSTATUS=x", ""])
def test_malformed_states_raise(monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    # Malformed states are a bug in the caller, reported also outside systemd.
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        sdnotify.notify(state)


def test_no_states_raise() -> None:
    with pytest.raises(ValueError, match="at least one"):
        sdnotify.notify()


def test_oversized_message_raises() -> None:
    with pytest.raises(ValueError, match="bytes over"):
        sdnotify.notify("STATUS=" + "x" * sdnotify.MAX_MESSAGE_BYTES)


def test_child_process_notifies(path_socket: socket.socket) -> None:
    # What a daemon under systemd does: the variable is inherited, the child sends.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    code = "from edge import sdnotify; raise SystemExit(0 if sdnotify.ready('up') else 1)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)
    assert path_socket.recv(4096) == b"READY=1\nSTATUS=up"


def test_watchdog_interval() -> None:
    pid = str(os.getpid())
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2500000"}) == 2.5
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": pid}) == 2.5
    other = {"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert sdnotify.watchdog_interval(other) is None
