"""cloud.yml with mutual TLS converges a Debian root, and the SC and SPU speak only TLS."""

from __future__ import annotations

import json
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_harness import CLOUD_HOST, CloudRoot, RunningUnit, node_units, run_in_root

pytestmark = [pytest.mark.root, pytest.mark.timeout(1800)]

HEADWATER = "/opt/headwater/venv/bin/headwater"
TLS_ARGS = ["--tls-ca", "/etc/headwater/tls/ca.crt", "--tls-cert", "/etc/headwater/tls/node.crt",
            "--tls-key", "/etc/headwater/tls/node.key", "--tls-server-name", CLOUD_HOST]


def test_cloud_playbook_converges_then_changes_nothing(cloud_root: CloudRoot) -> None:
    assert cloud_root.first.recap()[CLOUD_HOST]["failed"] == 0
    second = cloud_root.second
    assert second.returncode == 0, second.output[-8000:]
    assert second.recap()[CLOUD_HOST]["changed"] == 0, second.changed_tasks()


def test_tls_material_and_configs(cloud_root: CloudRoot) -> None:
    root = cloud_root.root
    key = (root / "etc/headwater/tls/node.key").stat()
    assert key.st_uid == 0
    assert stat.S_IMODE(key.st_mode) == 0o640
    sc = tomllib.loads((root / "etc/headwater/sc.toml").read_text())
    assert sc["tls"] == {"cert": "/etc/headwater/tls/node.crt",
                         "key": "/etc/headwater/tls/node.key",
                         "ca": "/etc/headwater/tls/ca.crt", "verify_client": True}
    spu = tomllib.loads((root / "etc/headwater/spu-1000.toml").read_text())
    assert spu["tls"]["verify_client"] is True
    assert spu["id"] == 1000


@pytest.fixture
def cloud_running(cloud_root: CloudRoot, tmp_path: Path) -> Iterator[dict[str, RunningUnit]]:
    with node_units(cloud_root.root, tmp_path, [1000]) as started:
        yield started


def test_sc_and_spu_answer_over_mutual_tls_only(
    cloud_root: CloudRoot, cloud_running: dict[str, RunningUnit]
) -> None:
    sc = f"127.0.0.1:{cloud_root.ports['sc']}"
    spu = f"127.0.0.1:{cloud_root.ports['spu']}"
    for target in (sc, spu):
        ok = run_in_root(cloud_root.root, [HEADWATER, *TLS_ARGS, "ping", target])
        assert ok.returncode == 0, ok.stdout + ok.stderr
        plain = run_in_root(cloud_root.root, [HEADWATER, "ping", "--timeout", "3", target])
        assert plain.returncode != 0, f"{target} answered without TLS"
    status = run_in_root(cloud_root.root, [HEADWATER, "--sc", sc, *TLS_ARGS, "cluster",
                                           "status", "--output", "json"])
    assert status.returncode == 0, status.stdout + status.stderr
    spus = {entry["id"]: entry for entry in json.loads(status.stdout)["spus"]}
    assert spus[1000]["online"], spus
    for name, unit in cloud_running.items():
        assert unit.stop() == 0, f"{name}:\n{unit.log()[-4000:]}"


def test_openssl_made_a_client_and_server_certificate(cloud_root: CloudRoot) -> None:
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in",
                           str(cloud_root.pki["cert"])],
                          check=True, capture_output=True, text=True, timeout=30).stdout
    assert "TLS Web Server Authentication" in text
    assert "TLS Web Client Authentication" in text
