"""The edge playbook converges a real Debian root, twice, and what it installs runs.

The root is a debootstrap'd bookworm reached through Ansible's chroot connection
(see deploy_harness). systemd is not running there, so the roles install and
enable the units but start nothing; the tests then run each daemon from its
rendered unit (ExecStart, User, StateDirectory, ...) and talk to it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_harness import (
    EDGE_HOST,
    EdgeRoot,
    RunningUnit,
    Unit,
    node_units,
    run_in_root,
    run_playbook,
    start_unit,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(1800)]

HEADWATER = "/opt/headwater/venv/bin/headwater"
SYSTEM = Path("etc/systemd/system")
# Directives every Headwater unit must carry (the hardening list).
REQUIRED = {
    "Type": "notify",
    "User": "headwater",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "Restart": "on-failure",
    "StandardError": "journal",
}
REQUIRED_PRESENT = ("StateDirectory", "RestrictAddressFamilies", "MemoryMax", "LimitNOFILE",
                    "SystemCallFilter", "CapabilityBoundingSet")
# systemd-analyze security rates exposure from 0 (locked down) to 10 (wide
# open); "OK" is below 4. The threshold is in tenths. Measured: SC and SPU 1.6,
# the gateway 1.8 (it needs tty devices, so no PrivateDevices), mosquitto 2.7 with
# the role's drop-in (7.9 as Debian ships it: it starts as root and drops to its
# user itself, so it keeps CAP_CHOWN, CAP_SETUID, CAP_SETGID, CAP_DAC_OVERRIDE).
EXPOSURE_THRESHOLD = {"headwater-sc.service": 20, "headwater-spu@7.service": 20,
                      "headwater-gateway.service": 20, "mosquitto.service": 30}


def units(edge: EdgeRoot) -> list[str]:
    return ["headwater-sc.service", *(f"headwater-spu@{i}.service" for i in edge.spu_ids),
            "headwater-gateway.service", "mosquitto.service"]


def test_first_run_converges_and_says_services_are_not_managed(edge_root: EdgeRoot) -> None:
    recap = edge_root.first.recap()[EDGE_HOST]
    assert recap["failed"] == 0
    assert recap["unreachable"] == 0
    assert recap["changed"] > 0
    assert "nothing is started, restarted or health-checked" in edge_root.first.output
    print(f"\ntree {'built' if edge_root.tree_built else 'cached'} in "
          f"{edge_root.tree_seconds:.1f}s, copied in {edge_root.copy_seconds:.1f}s; "
          f"edge.yml first run {edge_root.first.seconds:.1f}s, "
          f"second {edge_root.second.seconds:.1f}s")


def test_second_run_changes_nothing(edge_root: EdgeRoot) -> None:
    second = edge_root.second
    assert second.returncode == 0, second.output[-8000:]
    recap = second.recap()[EDGE_HOST]
    assert recap["failed"] == 0
    assert recap["changed"] == 0, f"changed on the second run: {second.changed_tasks()}"


def test_units_are_installed_and_enabled(edge_root: EdgeRoot) -> None:
    wants = edge_root.root / SYSTEM / "multi-user.target.wants"
    for name in units(edge_root):
        assert (wants / name).is_symlink(), f"{name} is not enabled"
    assert (edge_root.root / SYSTEM / "headwater-spu@.service").is_file()
    assert not (edge_root.root / SYSTEM / "headwater-spu@7.service").exists()


@pytest.mark.parametrize("unit", ["headwater-sc.service", "headwater-spu@.service",
                                  "headwater-gateway.service"])
def test_unit_has_the_hardening(edge_root: EdgeRoot, unit: str) -> None:
    parsed = Unit.read(edge_root.root / SYSTEM / unit)
    for key, value in REQUIRED.items():
        assert parsed.get(key) == value, f"{unit}: {key}={parsed.get(key)!r}, want {value!r}"
    for key in REQUIRED_PRESENT:
        assert parsed.all(key), f"{unit}: no {key}="
    assert parsed.get("StartLimitBurst", section="Unit")
    assert parsed.get("StartLimitIntervalSec", section="Unit")
    assert parsed.get("ExecStart").startswith(HEADWATER + " ")
    assert parsed.get("WantedBy", section="Install") == "multi-user.target"


def test_systemd_analyze_verify_passes(edge_root: EdgeRoot) -> None:
    # --root resolves ExecStart inside the root: the binary must really be there.
    names = units(edge_root)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={edge_root.root}", *names],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if "headwater" in line or "/etc/systemd/system/mosquitto" in line]
    assert not ours, "\n".join(ours)


@pytest.mark.parametrize("unit", sorted(EXPOSURE_THRESHOLD))
def test_systemd_security_exposure_is_low(edge_root: EdgeRoot, unit: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={edge_root.root}",
         f"--threshold={EXPOSURE_THRESHOLD[unit]}", "--no-pager", unit],
        check=False, capture_output=True, text=True, timeout=120,
    )
    overall = [line for line in result.stdout.splitlines() if "Overall exposure" in line]
    assert result.returncode == 0, "\n".join(overall) or result.stdout + result.stderr
    print(overall)


def test_files_belong_to_root_and_are_readable_by_the_service(edge_root: EdgeRoot) -> None:
    root = edge_root.root
    passwd = {line.split(":")[0]: line.split(":") for line in
              (root / "etc/passwd").read_text().splitlines()}
    assert passwd["headwater"][6] == "/usr/sbin/nologin"
    gid = int(passwd["headwater"][3])
    for name in ["sc.toml", "gateway.toml", "cluster.secret",
                 *(f"spu-{i}.toml" for i in edge_root.spu_ids)]:
        st = (root / "etc/headwater" / name).stat()
        assert (st.st_uid, st.st_gid) == (0, gid), name
        assert stat.S_IMODE(st.st_mode) == 0o640, name
    # One cluster secret, generated on the controller, shared by the SC and the SPUs.
    made = (edge_root.work / "credentials" / "cluster.secret").read_text().strip()
    assert len(made) == 64
    assert (root / "etc/headwater/cluster.secret").read_text().strip() == made
    for name in ["sc.toml", *(f"spu-{i}.toml" for i in edge_root.spu_ids)]:
        config = tomllib.loads((root / "etc/headwater" / name).read_text())
        assert config["cluster_secret_file"] == "/etc/headwater/cluster.secret", name
    venv = (root / "opt/headwater/venv/bin/headwater").stat()
    assert venv.st_uid == 0
    assert not venv.st_mode & stat.S_IWOTH


def test_gateway_config_and_udev_rules(edge_root: EdgeRoot) -> None:
    gateway = tomllib.loads((edge_root.root / "etc/headwater/gateway.toml").read_text())
    assert gateway["serial"] == [
        {"path": "/dev/headwater/bench-1", "baud": 921600, "default_topic": "bench",
         "topics": {"humidity": "humidity", "temperature": "temperature"}},
        {"path": "/dev/ttyAMA0", "baud": 115200, "default_topic": "readings"},
    ]
    assert gateway["mqtt"]["rules"] == [
        {"filter": "headwater/+/temperature", "topic": "temperature", "format": "cbor"}]
    assert gateway["mqtt"]["client_id"] == f"headwater-gateway-{EDGE_HOST}"
    rules = (edge_root.root / "etc/udev/rules.d/70-headwater-gateway.rules").read_text()
    assert ('SUBSYSTEM=="tty", ATTRS{idVendor}=="2e8a", ATTRS{idProduct}=="0005", '
            'ATTRS{serial}=="E6616407E3A1", SYMLINK+="headwater/bench-1", GROUP="dialout", '
            'MODE="0660"') in rules
    unit = Unit.read(edge_root.root / SYSTEM / "headwater-gateway.service")
    assert unit.get("SupplementaryGroups") == "dialout"
    assert unit.get("DevicePolicy") == "closed"
    assert "PrivateDevices" not in unit.sections["Service"]


def test_rendered_configs_pass_check_config(edge_root: EdgeRoot) -> None:
    checks = [["run", "sc", "--check-config", "--config", "/etc/headwater/sc.toml"],
              ["gateway", "run", "--check-config", "--config", "/etc/headwater/gateway.toml"],
              *(["run", "spu", "--check-config", "--config", f"/etc/headwater/spu-{i}.toml"]
                for i in edge_root.spu_ids)]
    for argv in checks:
        result = run_in_root(edge_root.root, [HEADWATER, *argv])
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def running(edge_root: EdgeRoot, tmp_path: Path) -> Iterator[dict[str, RunningUnit]]:
    """Every unit of the node started from its rendered unit file, in boot order."""
    system = edge_root.root / SYSTEM
    with node_units(edge_root.root, tmp_path, edge_root.spu_ids) as started:
        mosquitto = edge_root.root / "lib/systemd/system/mosquitto.service"
        started["mosquitto"] = start_unit(edge_root.root, mosquitto, log_dir=tmp_path)
        started["gateway"] = start_unit(edge_root.root, system / "headwater-gateway.service",
                                        log_dir=tmp_path)
        yield started


def test_daemons_run_from_their_units_answer_and_stop_cleanly(
    edge_root: EdgeRoot, running: dict[str, RunningUnit]
) -> None:
    ports = edge_root.ports
    targets = [f"127.0.0.1:{ports['sc']}",
               *(f"127.0.0.1:{ports['spu'] + 10 * n}" for n in range(len(edge_root.spu_ids)))]
    for target in targets:
        result = run_in_root(edge_root.root, [HEADWATER, "ping", target])
        assert result.returncode == 0, f"ping {target}: {result.stdout}{result.stderr}"

    status = run_in_root(edge_root.root, [HEADWATER, "--sc", targets[0], "cluster", "status",
                                          "--output", "json"])
    assert status.returncode == 0, status.stdout + status.stderr
    spus = {spu["id"]: spu for spu in json.loads(status.stdout)["spus"]}
    for spu_id in edge_root.spu_ids:
        assert spus[spu_id]["online"], spus
        assert spus[spu_id]["rack"] == "test-site"

    gateway = run_in_root(edge_root.root, [HEADWATER, "gateway", "status", "--config",
                                           "/etc/headwater/gateway.toml", "--output", "json"])
    assert gateway.returncode == 0, gateway.stdout + gateway.stderr + running["gateway"].log()

    # The daemons run as the service user, in the state directories systemd makes.
    for name in ("sc", *(f"spu-{i}" for i in edge_root.spu_ids)):
        pid = running[name].proc.pid
        assert os.stat(f"/proc/{pid}").st_uid != 0, f"{name} runs as root"
        assert (edge_root.root / "var/lib/headwater" / name).is_dir()

    for name in ("gateway", *(f"spu-{i}" for i in edge_root.spu_ids), "sc"):
        unit = running[name]
        code = unit.stop()
        assert code == 0, f"{name} exited {code} on SIGTERM:\n{unit.log()[-4000:]}"
        assert any(b"STOPPING=1" in m for m in unit.notify.messages), unit.notify.messages
    running["mosquitto"].stop()


def test_a_config_the_daemon_rejects_never_replaces_the_old_one(edge_root: EdgeRoot) -> None:
    path = edge_root.root / "etc/headwater/spu-7.toml"
    before = path.read_bytes()
    bad = run_playbook("edge.yml", edge_root.inventory, tmp=edge_root.work,
                       mount_root=edge_root.root,
                       extra_vars={"headwater_spu_extra_config": {"no_such_key": 1}})
    assert bad.returncode != 0
    assert "failed to validate" in bad.output or "unknown key" in bad.output, bad.output[-4000:]
    assert path.read_bytes() == before


UPLINK = {"sc": "cloud.example:9003", "site": "kitchen", "token": "t" * 43,
          "max_bytes_per_s": "500KiB"}


def test_a_site_name_alone_configures_discovery_and_the_uplink(edge_root: EdgeRoot) -> None:
    """Leave every address out and set only the site: the rendered files name the
    site and no SC address (found on the LAN), and the daemons accept them (the
    role checks each file with --check-config before it replaces the old one).
    The same run gives the SPUs an uplink and a disk budget."""
    site_only = {"headwater_common_site": "kitchen", "headwater_spu_sc": "",
                 "headwater_gateway_sc": "", "headwater_spu_advertise_host": "",
                 "headwater_common_mdns_interfaces": ["eth0"],
                 "headwater_spu_upstream": UPLINK, "headwater_spu_disk_budget": "2GiB"}
    etc = edge_root.root / "etc/headwater"
    try:
        run = run_playbook("edge.yml", edge_root.inventory, tmp=edge_root.work,
                           mount_root=edge_root.root, extra_vars=site_only)
        assert run.returncode == 0, run.output[-4000:]
        for name in ("sc.toml", "gateway.toml", *(f"spu-{i}.toml" for i in edge_root.spu_ids)):
            config = tomllib.loads((etc / name).read_text())
            assert config["site"] == "kitchen", name
            assert config["interfaces"] == ["eth0"], name
            if name != "sc.toml":
                assert "sc" not in config, name
            assert "advertise_public" not in config, name
            if name.startswith("spu-"):
                assert config["upstream"] == UPLINK, name
                assert config["disk_budget"] == "2GiB", name
    finally:
        restored = run_playbook("edge.yml", edge_root.inventory, tmp=edge_root.work,
                                mount_root=edge_root.root)
        assert restored.returncode == 0, restored.output[-4000:]
    assert "site" not in tomllib.loads((etc / "sc.toml").read_text())
    spu = tomllib.loads((etc / f"spu-{edge_root.spu_ids[0]}.toml").read_text())
    assert "upstream" not in spu
    assert "disk_budget" not in spu
