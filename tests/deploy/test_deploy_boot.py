"""The converged edge root booted with systemd (systemd-nspawn): the real units, for real.

The chroot converge (test_deploy_converge) cannot start services. Here a copy of
that root boots with systemd as its PID 1, which starts the units the playbook
enabled; then the edge playbook runs again through the nsenter connection with
services managed, and a change of one setting restarts only what it touches.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_harness import (
    EDGE_HOST,
    EdgeRoot,
    copy_tree,
    remove_tree,
    require_tools,
    run_playbook,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(1800)]

BOOT_TIMEOUT_S = 120.0
NSENTER_CONNECTION = {
    "ansible_connection": "community.docker.nsenter",
    "ansible_python_interpreter": "/usr/bin/python3",
    "ansible_become": False,
}


@dataclass
class Booted:
    edge: EdgeRoot
    root: Path
    work: Path
    leader: int
    inventory: Path

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A command inside the container (all of its namespaces)."""
        return subprocess.run(
            ["nsenter", "--target", str(self.leader), "--mount", "--uts", "--ipc", "--net",
             "--pid", "--", *argv],
            check=False, capture_output=True, text=True, timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "--value", "-p", prop, unit).stdout.strip()

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID") or 0)

    def wait_active(self, unit: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run("systemctl", "is-active", unit).stdout.strip() == "active":
                return
            time.sleep(0.5)
        status = self.run("systemctl", "status", "--no-pager", "-l", unit).stdout
        journal = self.run("journalctl", "--no-pager", "-n", "60", "-u", unit).stdout
        pytest.fail(f"{unit} is not active after {timeout}s:\n{status}\n{journal}")


def _leader(nspawn: subprocess.Popen[bytes]) -> int:
    """Host PID of the container's PID 1 (a descendant of nspawn whose NSpid ends in 1)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            nspid = fields.get("NSpid", "").split()
            if len(nspid) > 1 and nspid[-1] == "1" and _descends(int(entry.name), nspawn.pid):
                return int(entry.name)
        if nspawn.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail("systemd-nspawn did not start a container")


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


@pytest.fixture(scope="module")
def booted(edge_root: EdgeRoot) -> Iterator[Booted]:
    require_tools("systemd-nspawn", "nsenter")
    work = Path(tempfile.mkdtemp(prefix="headwater-boot-", dir="/var/tmp"))
    root = copy_tree(edge_root.root, work / "root")
    log = (work / "console.log").open("wb")
    # The host's network (no --private-network): the services listen on loopback
    # ports the test picked, reachable from here as on the node itself.
    nspawn = subprocess.Popen(
        ["systemd-nspawn", "--quiet", "--boot", f"--directory={root}", "--register=no",
         "--keep-unit", "--console=passive", f"--machine=hw-{os.getpid()}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        leader = _leader(nspawn)
        inventory = work / "hosts.yml"
        text = edge_root.inventory.read_text()
        shutil.copy2(edge_root.inventory, inventory)
        # The cluster secret the controller made lives next to the inventory.
        shutil.copytree(edge_root.work / "credentials", work / "credentials")
        import json

        data = json.loads(text)
        host = data["all"]["hosts"][EDGE_HOST]
        for key in ("ansible_connection", "ansible_become"):
            host.pop(key, None)
        host.update(NSENTER_CONNECTION, ansible_nsenter_pid=leader, ansible_host=EDGE_HOST)
        inventory.write_text(json.dumps(data, indent=2))
        booted = Booted(edge_root, root, work, leader, inventory)
        _wait_for_boot(booted, work / "console.log")
        yield booted
    finally:
        nspawn.send_signal(signal.SIGTERM)  # nspawn powers the container off
        try:
            nspawn.wait(60)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(10)
        log.close()
        remove_tree(work)


def _wait_for_boot(booted: Booted, console: Path) -> None:
    """Until systemd in the container has finished starting up (or gave up on a unit)."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    state = None
    while time.monotonic() < deadline:
        # Until systemd has made its private socket, systemctl cannot connect at all.
        state = booted.run("systemctl", "is-system-running", "--wait",
                           timeout=max(1.0, deadline - time.monotonic()))
        if state.stdout.strip() in ("running", "degraded"):
            return
        time.sleep(0.5)
    detail = f"{state.stdout}{state.stderr}" if state is not None else ""
    pytest.fail(f"container did not boot: {detail}\n"
                f"{console.read_text(errors='replace')[-4000:]}")


def _units(edge: EdgeRoot) -> list[str]:
    return ["mosquitto.service", "headwater-sc.service",
            *(f"headwater-spu@{i}.service" for i in edge.spu_ids), "headwater-gateway.service"]


def test_enabled_units_start_at_boot_and_report_ready(booted: Booted) -> None:
    for unit in _units(booted.edge):
        booted.wait_active(unit)
        assert booted.show(unit, "Type") == "notify" or unit == "mosquitto.service"
    sc = f"127.0.0.1:{booted.edge.ports['sc']}"
    ping = booted.run("/opt/headwater/venv/bin/headwater", "ping", sc)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_services_run_sandboxed_as_the_service_user(booted: Booted) -> None:
    for unit in _units(booted.edge)[1:]:
        booted.wait_active(unit)
        assert booted.show(unit, "User") == "headwater"
        assert booted.show(unit, "ProtectSystem") == "strict"
        assert booted.show(unit, "MemoryMax") not in ("", "infinity"), unit
        assert int(booted.show(unit, "LimitNOFILE")) >= 4096, unit
        assert booted.show(unit, "NRestarts") == "0", f"{unit} crashed and was restarted"
        pid = booted.main_pid(unit)
        status = booted.run("cat", f"/proc/{pid}/status").stdout
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1] != "0", f"{unit} runs as root"
        assert "NoNewPrivs:\t1" in status, unit


def test_playbook_with_systemd_running_changes_nothing(booted: Booted) -> None:
    for unit in _units(booted.edge):
        booted.wait_active(unit)
    result = run_playbook("edge.yml", booted.inventory, tmp=booted.work)
    assert result.returncode == 0, result.output[-8000:]
    assert "nothing is started" not in result.output
    # The health checks ran (not skipped) against the live services.
    assert "TASK [headwater_spu : Wait until the SC lists every SPU of this host as online]" \
        in result.output
    assert "skipping: [edge-node]" not in _section(result.output, "Wait for every SPU instance")
    recap = result.recap()[EDGE_HOST]
    assert recap["changed"] == 0, result.changed_tasks()
    print(f"\nedge.yml against the booted node: {result.seconds:.1f}s")


def test_a_change_restarts_only_what_it_touches(booted: Booted) -> None:
    edge = booted.edge
    for unit in _units(edge):
        booted.wait_active(unit)
    before = _pids(booted)
    # A third SPU, and the gateway's unit changes (its log level is on ExecStart).
    extra = {"headwater_spu_count": 3, "headwater_gateway_log_level": "debug"}
    grown = run_playbook("edge.yml", booted.inventory, tmp=booted.work, extra_vars=extra)
    assert grown.returncode == 0, grown.output[-8000:]
    _assert_restarted(booted, before, {"headwater-gateway.service"})
    booted.wait_active("headwater-spu@9.service")
    assert booted.show("headwater-spu@9.service", "UnitFileState") == "enabled"

    before = _pids(booted)
    shrunk = run_playbook("edge.yml", booted.inventory, tmp=booted.work)
    assert shrunk.returncode == 0, shrunk.output[-8000:]
    assert booted.run("systemctl", "is-active", "headwater-spu@9.service").stdout.strip() \
        == "inactive"
    assert booted.show("headwater-spu@9.service", "UnitFileState") == "disabled"
    assert not (booted.root / "etc/headwater/spu-9.toml").exists()
    assert (booted.root / "var/lib/headwater/spu-9").is_dir(), "a retired SPU's data was removed"
    _assert_restarted(booted, before, {"headwater-gateway.service"})


def _pids(booted: Booted) -> dict[str, tuple[int, int]]:
    """MainPID and NRestarts (systemd's own restarts after a crash) of every unit."""
    return {unit: (booted.main_pid(unit), int(booted.show(unit, "NRestarts") or 0))
            for unit in _units(booted.edge)}


def _assert_restarted(booted: Booted, before: dict[str, tuple[int, int]],
                      expected: set[str]) -> None:
    for unit, (pid, restarts) in before.items():
        booted.wait_active(unit)
        now, now_restarts = booted.main_pid(unit), int(booted.show(unit, "NRestarts") or 0)
        if unit in expected:
            assert now != pid, f"{unit} changed but was not restarted"
            continue
        if now == pid:
            continue
        journal = booted.run("journalctl", "--no-pager", "-n", "40", "-u", unit).stdout
        if now_restarts > restarts and unit == "mosquitto.service":
            # Debian's broker crashed and systemd restarted it (Restart=on-failure from
            # the role's drop-in): not a restart the playbook made.
            warnings.warn(f"mosquitto crashed during the run:\n{journal}", stacklevel=2)
            continue
        assert now == pid, (f"{unit} restarted (systemd restarts {restarts} -> {now_restarts}) "
                            f"but nothing of it changed:\n{journal}")


def test_systemctl_stop_is_a_clean_sigterm_exit(booted: Booted) -> None:
    unit = f"headwater-spu@{booted.edge.spu_ids[-1]}.service"
    booted.wait_active(unit)
    stop = booted.run("systemctl", "stop", unit)
    assert stop.returncode == 0, stop.stderr
    assert booted.show(unit, "Result") == "success"
    assert booted.show(unit, "ExecMainStatus") == "0"
    assert booted.show(unit, "ExecMainCode") == "1"  # CLD_EXITED: it exited, was not killed
    start = booted.run("systemctl", "start", unit)
    assert start.returncode == 0, start.stderr
    booted.wait_active(unit)


def test_an_sc_restart_keeps_the_spus_registered(booted: Booted) -> None:
    # A rolling restart of the SC: the SPUs register again by themselves, and the
    # SPU play's health check (cluster status) waits for that.
    for unit in _units(booted.edge):
        booted.wait_active(unit)
    before = _pids(booted)
    extra = {"headwater_sc_heartbeat_timeout_s": 3.0, "headwater_spu_health_retries": 10}
    result = run_playbook("edge.yml", booted.inventory, tmp=booted.work, extra_vars=extra)
    assert result.returncode == 0, result.output[-4000:]
    _assert_restarted(booted, before, {"headwater-sc.service"})


def _section(output: str, task: str) -> str:
    start = output.find(task)
    if start < 0:
        return ""
    end = output.find("\nTASK [", start + 1)
    return output[start:end if end > 0 else None]
