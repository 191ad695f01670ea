"""The gateway process: status endpoint, CLI, serial + MQTT under one runner, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mqtt_helpers import DLQ, TOPIC, create_topics, device_payload, publish, wait_until

from edge.testing import LocalCluster, free_port
from gateway.config import GatewayConfig, StatusConfig, parse_config
from gateway.mqtt.testing import Mosquitto
from gateway.runner import Gateway
from gateway.status import StatusServer, read_status, table_rows


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


async def test_status_server_tcp_and_unix(tmp_path: Path) -> None:
    snapshot = {"version": 1, "bridges": {"mqtt": {"kind": "mqtt", "counters": {"received": 3}}}}
    async with StatusServer(StatusConfig(listen="127.0.0.1:0"), lambda: snapshot) as server:
        assert await read_status(server.address) == snapshot
    sock = tmp_path / "run" / "gw.sock"
    async with StatusServer(StatusConfig(listen=f"unix:{sock}"), lambda: snapshot):
        assert await read_status(f"unix:{sock}") == snapshot
        assert oct(sock.stat().st_mode & 0o777) == "0o660"
    assert not sock.exists()


def test_table_rows_are_aligned_columns() -> None:
    headers, rows = table_rows({"bridges": {
        "serial:/dev/ttyUSB0": {"kind": "serial", "counters": {"received": 5, "naks": 1}},
        "mqtt": {"kind": "mqtt", "counters": {"received": 7, "reconnects": 2}},
    }})
    assert headers[:3] == ["bridge", "kind", "received"]
    assert rows[0][:3] == ["mqtt", "mqtt", 7]
    assert rows[1][:3] == ["serial:/dev/ttyUSB0", "serial", 5]


def test_check_config_reports_ok_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "gateway.toml"
    good.write_text('sc = "127.0.0.1:9003"\n[mqtt]\n[[mqtt.rules]]\n'
                    'filter = "headwater/+/t"\ntopic = "t"\n')
    ok = cli("run", "--config", str(good), "--check-config")
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    assert "1 rule(s)" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text() + 'format = "yaml"\n')
    failed = cli("run", "--config", str(bad), "--check-config")
    assert failed.returncode == 2
    assert "mqtt.rules[0].format" in failed.stderr
    env = {**os.environ, "HEADWATER_GATEWAY_CONFIG": str(good)}
    assert cli("run", "--check-config", env=env).returncode == 0


def test_status_without_a_gateway_fails_clearly(tmp_path: Path) -> None:
    result = cli("status", "--listen", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot read the gateway status" in result.stderr


def test_headwater_cli_mounts_the_gateway() -> None:
    result = subprocess.run([sys.executable, "-m", "edge.cli.main", "gateway", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "status" in result.stdout
    assert "run" in result.stdout


async def test_serial_and_mqtt_bridges_under_one_runner(
    broker: Mosquitto, cluster: LocalCluster
) -> None:
    await create_topics(cluster.sc_addr, TOPIC, DLQ)
    primary, secondary = os.openpty()  # a serial port with no device talking on it
    try:
        config: GatewayConfig = parse_config({
            "sc": cluster.sc_addr, "status": {"listen": "127.0.0.1:0"},
            "serial": [{"path": os.ttyname(secondary), "default_topic": TOPIC}],
            "mqtt": {"host": broker.host, "port": broker.port, "client_id": "gw-runner",
                     "rules": [{"filter": "headwater/+/temperature", "topic": TOPIC}]},
        })
        gateway = Gateway(config, shutdown_grace_s=5)
        running = asyncio.create_task(gateway.run(handle_signals=False))
        await wait_until(lambda: gateway.status_address is not None, what="status endpoint")
        assert gateway.status_address is not None
        await wait_until(lambda: gateway.snapshot()["bridges"]["mqtt"]["counters"]["connected"]
                         == 1, what="mqtt connected")
        await publish(broker, [("headwater/d1/temperature", device_payload("d1", 0))])
        await wait_until(lambda: gateway.snapshot()["bridges"]["mqtt"]["counters"]["produced"]
                         == 1, what="produced")
        status = await read_status(gateway.status_address)
        assert set(status["bridges"]) == {"mqtt", f"serial:{os.ttyname(secondary)}"}
        assert status["sc"] == cluster.sc_addr
        # In a thread: the gateway answering it runs on this event loop.
        shown = await asyncio.to_thread(cli, "status", "--listen", gateway.status_address,
                                        "--output", "json")
        assert json.loads(shown.stdout)["bridges"]["mqtt"]["counters"]["produced"] == 1
        gateway.stop()
        async with asyncio.timeout(20):
            await running
    finally:
        os.close(primary)
        os.close(secondary)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signals_stop_the_process_cleanly(tmp_path: Path, sig: str) -> None:
    # Nothing to connect to: the gateway keeps retrying, and must still stop at once.
    config = tmp_path / "gateway.toml"
    status_port = free_port()
    config.write_text(f'sc = "127.0.0.1:{free_port()}"\n[status]\nlisten = "127.0.0.1:'
                      f'{status_port}"\n[mqtt]\nport = {free_port()}\n[[mqtt.rules]]\n'
                      'filter = "a/+"\ntopic = "a"\n')
    process = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        asyncio.run(_wait_status(f"127.0.0.1:{status_port}"))
        process.send_signal(getattr(__import__("signal"), sig))
        out, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, out
    assert "gateway stopped" in out


async def _wait_status(listen: str) -> None:
    async with asyncio.timeout(20):
        while True:
            try:
                await read_status(listen, timeout_s=1)
            except OSError:
                await asyncio.sleep(0.05)
            else:
                return
