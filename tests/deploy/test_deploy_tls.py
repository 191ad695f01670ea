"""Certificates issued by the roles from a deployment CA, and renewed without a restart.

The edge playbook converges a root given nothing of TLS but a CA directory made
with ``headwater tls init``: on the controller the roles issue one certificate per
service (``sc``, ``spu-<id>``, ``gateway-<name>``) and copy each, with its key, to
the node. A certificate near its end is issued anew on the next run, and the
handler that runs is the reload (SIGHUP), not the restart: the daemon keeps its
PID and serves the new certificate. The operator's own certificate (the other
mode) is reloaded the same way.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import stat
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from deploy_harness import (
    CLOUD_HOST,
    CONTROLLER_HEADWATER,
    EDGE_HOST,
    CloudRoot,
    EdgeRoot,
    PlaybookRun,
    RunningUnit,
    exec_argv,
    node_units,
    run_in_root,
    run_playbook,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(1800)]

HEADWATER = "/opt/headwater/venv/bin/headwater"
TLS_DIR = Path("etc/headwater/tls")
# File name on the node and on the controller = the subject CN `headwater tls issue` gives.
GATEWAY = f"gateway-{EDGE_HOST}"
ISSUED = ("sc", "spu-7", "spu-8", GATEWAY)
ISSUE_TASK = "Issue the certificates that are missing, near their end or lack a name"
RELOAD_SPUS = "RUNNING HANDLER [headwater_spu : Reload SPU instances with new certificates]"
RESTART_SPUS = "RUNNING HANDLER [headwater_spu : Restart changed SPU instances]"
RELOAD_WAIT_S = 15.0


def issued_dir(edge: EdgeRoot) -> Path:
    return edge.work / "pki" / "nodes" / EDGE_HOST


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def alt_names(cert: x509.Certificate) -> set[str]:
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in sans}


def headwater_gid(root: Path) -> int:
    entry = next(line for line in (root / "etc/group").read_text().splitlines()
                 if line.startswith("headwater:"))
    return int(entry.split(":")[2])


def tls_args(name: str, server_name: str) -> list[str]:
    """CLI arguments for a client on the node presenting the issued certificate ``name``."""
    tls = "/" + str(TLS_DIR)
    return ["--tls-ca", f"{tls}/ca.crt", "--tls-cert", f"{tls}/{name}.crt",
            "--tls-key", f"{tls}/{name}.key", "--tls-server-name", server_name]


def section(run: PlaybookRun, header: str) -> str:
    """The output of every run of the task ``header`` (one per play that includes it)."""
    parts = []
    start = run.output.find(header)
    while start >= 0:
        end = run.output.find("\nTASK [", start + 1)
        parts.append(run.output[start:end if end > 0 else None])
        start = run.output.find(header, start + 1)
    return "\n".join(parts)


def test_a_ca_alone_converges_then_changes_nothing(edge_ca_root: EdgeRoot) -> None:
    first = edge_ca_root.first.recap()[EDGE_HOST]
    assert first["failed"] == 0
    assert first["changed"] > 0
    second = edge_ca_root.second
    assert second.returncode == 0, second.output[-8000:]
    assert second.recap()[EDGE_HOST]["changed"] == 0, second.changed_tasks()
    # Nothing was issued again: every certificate was there and far from its end.
    checked = section(second, f" : {ISSUE_TASK}]")
    assert checked.count(ISSUE_TASK) == 3, checked  # the SC, SPU and gateway plays
    assert "changed:" not in checked, checked
    print(f"\nedge.yml with a CA: first run {edge_ca_root.first.seconds:.1f}s, "
          f"second {edge_ca_root.second.seconds:.1f}s")


def test_each_service_gets_its_own_certificate_from_the_ca(edge_ca_root: EdgeRoot) -> None:
    root = edge_ca_root.root
    ca = load_cert(edge_ca_root.work / "pki" / "ca.crt")
    assert (root / TLS_DIR / "ca.crt").read_bytes() == ca.public_bytes(serialization.Encoding.PEM)
    for name in ISSUED:
        cert = load_cert(root / TLS_DIR / f"{name}.crt")
        assert common_name(cert) == name
        cert.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key((root / TLS_DIR / f"{name}.key").read_bytes(),
                                                 None)
        assert key.public_key() == cert.public_key(), f"{name}: key does not match"
        # What the node has is what the controller issued, for this node.
        for ext in ("crt", "key"):
            assert (root / TLS_DIR / f"{name}.{ext}").read_bytes() \
                == (issued_dir(edge_ca_root) / f"{name}.{ext}").read_bytes(), name
        days = (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days
        assert days >= 824, f"{name}: {days} days"
    # Servers name the addresses they are dialled at; the SPUs also their id.
    assert {"sc", EDGE_HOST, "127.0.0.1"} <= alt_names(load_cert(root / TLS_DIR / "sc.crt"))
    for spu_id in edge_ca_root.spu_ids:
        names = alt_names(load_cert(root / TLS_DIR / f"spu-{spu_id}.crt"))
        assert {f"spu-{spu_id}", f"spu-{spu_id}.headwater", EDGE_HOST, "127.0.0.1"} <= names
    usage = load_cert(root / TLS_DIR / f"{GATEWAY}.crt").extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_issued_files_have_the_right_owners_and_modes(edge_ca_root: EdgeRoot) -> None:
    root = edge_ca_root.root
    gid = headwater_gid(root)
    tls = (root / TLS_DIR).stat()
    assert (tls.st_uid, tls.st_gid, stat.S_IMODE(tls.st_mode)) == (0, gid, 0o750)
    wanted = {"ca.crt": 0o644, **{f"{n}.crt": 0o644 for n in ISSUED},
              **{f"{n}.key": 0o640 for n in ISSUED}}
    assert sorted(p.name for p in (root / TLS_DIR).iterdir()) == sorted(wanted)
    for name, mode in wanted.items():
        st = (root / TLS_DIR / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, mode), name
    # The CA's key stays on the controller; there, the host's keys are its owner's alone.
    assert not list((root / "etc/headwater").rglob("ca.key"))
    controller = issued_dir(edge_ca_root)
    assert stat.S_IMODE(controller.stat().st_mode) == 0o700
    assert (controller / "ca.key").resolve() == (edge_ca_root.work / "pki/ca.key").resolve()
    for name in ISSUED:
        assert stat.S_IMODE((controller / f"{name}.key").stat().st_mode) == 0o600, name


def test_configs_name_each_services_certificate_and_no_fingerprint(
    edge_ca_root: EdgeRoot,
) -> None:
    etc = edge_ca_root.root / "etc/headwater"
    files = {"sc.toml": "sc", "gateway.toml": GATEWAY,
             **{f"spu-{i}.toml": f"spu-{i}" for i in edge_ca_root.spu_ids}}
    for config, name in files.items():
        text = (etc / config).read_text()
        # New certificates must not change the file: that would restart the service.
        assert "TLS material" not in text, config
        table = tomllib.loads(text)["tls"]
        assert table["cert"] == f"/etc/headwater/tls/{name}.crt", config
        assert table["key"] == f"/etc/headwater/tls/{name}.key", config
        assert table["ca"] == "/etc/headwater/tls/ca.crt", config
    for argv in (["run", "sc", "--check-config", "--config", "/etc/headwater/sc.toml"],
                 ["gateway", "run", "--check-config", "--config", "/etc/headwater/gateway.toml"]):
        result = run_in_root(edge_ca_root.root, [HEADWATER, *argv])
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def ca_running(edge_ca_root: EdgeRoot, tmp_path: Path) -> Iterator[dict[str, RunningUnit]]:
    """The SC and both SPUs run from their rendered units, with their issued certificates."""
    with node_units(edge_ca_root.root, tmp_path, edge_ca_root.spu_ids) as started:
        yield started


def served_serial(edge: EdgeRoot, port: int, server_name: str) -> int:
    """Serial number of the certificate a listener on the node presents now."""
    ctx = ssl.create_default_context(cafile=str(edge.work / "pki/ca.crt"))
    client = issued_dir(edge)
    ctx.load_cert_chain(str(client / f"{GATEWAY}.crt"), str(client / f"{GATEWAY}.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def spus_online(edge: EdgeRoot) -> dict[int, bool]:
    status = run_in_root(edge.root, [HEADWATER, "--sc", f"127.0.0.1:{edge.ports['sc']}",
                                     *tls_args("spu-7", "sc"), "cluster", "status",
                                     "--output", "json"])
    assert status.returncode == 0, status.stdout + status.stderr
    return {spu["id"]: spu["online"] for spu in json.loads(status.stdout)["spus"]}


def reload_like_systemd(edge: EdgeRoot, unit: RunningUnit) -> None:
    """What `systemctl reload` runs: the unit's ExecReload with $MAINPID."""
    line = unit.unit.get("ExecReload").replace("$MAINPID", str(unit.proc.pid))
    result = run_in_root(edge.root, exec_argv(line, unit.instance))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_certificate_near_its_end_is_reissued_and_reloaded_not_restarted(
    edge_ca_root: EdgeRoot, ca_running: dict[str, RunningUnit]
) -> None:
    edge = edge_ca_root
    ports = {7: edge.ports["spu"], 8: edge.ports["spu"] + 10}
    # Issued with mutual TLS between SPUs and SC: both SPUs registered with their own.
    deadline = time.monotonic() + 30
    while not all(spus_online(edge).get(i) for i in edge.spu_ids):
        assert time.monotonic() < deadline, spus_online(edge)
        time.sleep(0.5)
    before = {i: served_serial(edge, ports[i], f"spu-{i}.headwater") for i in edge.spu_ids}
    assert before[7] == load_cert(edge.root / TLS_DIR / "spu-7.crt").serial_number
    pid = ca_running["spu-7"].proc.pid

    # SPU 7's certificate on the controller has a day left, under renew_days (30).
    issued = subprocess.run(
        [str(CONTROLLER_HEADWATER), "tls", "issue", "--dir", str(issued_dir(edge)),
         "--kind", "spu", "--id", "7", "--host", EDGE_HOST, "--host", "127.0.0.1",
         "--days", "1", "--force"], check=False, capture_output=True, text=True, timeout=60)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    short_lived = load_cert(issued_dir(edge) / "spu-7.crt").serial_number

    run = run_playbook("edge.yml", edge.inventory, tmp=edge.work, mount_root=edge.root)
    assert run.returncode == 0, run.output[-8000:]
    issued_now = [line for line in section(run, f" : {ISSUE_TASK}]")
                  .splitlines() if line.startswith("changed:")]
    assert len(issued_now) == 1, issued_now
    assert "(item=spu-7)" in issued_now[0], issued_now
    changed = run.changed_tasks()
    print(f"\nrenewal run {run.seconds:.1f}s, changed: {changed}")
    assert "TASK [headwater_spu : Install each SPU instance's certificate and key]" \
        in "\n".join(changed), changed
    assert not [t for t in changed if "Render and check" in t or "unit" in t.lower()], changed
    # The reload handler was notified, the restart handler was not.
    assert RELOAD_SPUS in run.output, run.output[-8000:]
    assert RESTART_SPUS not in run.output, run.output[-8000:]
    assert "RUNNING HANDLER [headwater_sc : Restart" not in run.output
    assert "RUNNING HANDLER [headwater_gateway : Restart" not in run.output

    node = load_cert(edge.root / TLS_DIR / "spu-7.crt")
    assert node.serial_number not in (before[7], short_lived)
    assert node.serial_number == load_cert(issued_dir(edge) / "spu-7.crt").serial_number
    assert (node.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days >= 824

    reload_like_systemd(edge, ca_running["spu-7"])
    deadline = time.monotonic() + RELOAD_WAIT_S
    while served_serial(edge, ports[7], "spu-7.headwater") != node.serial_number:
        assert time.monotonic() < deadline, ca_running["spu-7"].log()[-4000:]
        time.sleep(0.2)
    # The same process serves the new certificate; SPU 8 kept its own.
    assert ca_running["spu-7"].proc.poll() is None
    assert ca_running["spu-7"].proc.pid == pid
    assert "TLS certificates reloaded" in ca_running["spu-7"].log()
    assert served_serial(edge, ports[8], "spu-8.headwater") == before[8]
    ping = run_in_root(edge.root, [HEADWATER, *tls_args("sc", "spu-7.headwater"), "ping",
                                   f"127.0.0.1:{ports[7]}"])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert spus_online(edge)[7]
    for name, unit in ca_running.items():
        assert unit.stop() == 0, f"{name}:\n{unit.log()[-4000:]}"


def test_a_config_change_still_restarts_and_renews_nothing(edge_ca_root: EdgeRoot) -> None:
    edge = edge_ca_root
    try:
        run = run_playbook("edge.yml", edge.inventory, tmp=edge.work, mount_root=edge.root,
                           extra_vars={"headwater_spu_durability": "always"})
        assert run.returncode == 0, run.output[-8000:]
        assert RESTART_SPUS in run.output, run.output[-8000:]
        assert RELOAD_SPUS not in run.output, run.output[-8000:]
        changed = run.changed_tasks()
        assert len(changed) == 1, changed
        assert "TASK [headwater_spu : Render and check the SPU configurations]" in changed[0]
    finally:
        restored = run_playbook("edge.yml", edge.inventory, tmp=edge.work, mount_root=edge.root)
        assert restored.returncode == 0, restored.output[-4000:]


def test_a_new_operator_certificate_reloads_every_service_of_the_host(
    cloud_root: CloudRoot,
) -> None:
    """The other mode: the operator's node.crt, signed again, reloads SC and SPU."""
    pki = cloud_root.pki
    directory = pki["cert"].parent
    resigned = subprocess.run(
        ["openssl", "x509", "-req", "-in", str(directory / "node.csr"), "-CA", str(pki["ca"]),
         "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile",
         str(directory / "node.ext"), "-out", str(pki["cert"])],
        check=False, capture_output=True, text=True, timeout=60)
    assert resigned.returncode == 0, resigned.stderr
    inventory = cloud_root.work / "hosts.yml"
    run = run_playbook("cloud.yml", inventory, tmp=cloud_root.work, mount_root=cloud_root.root)
    assert run.returncode == 0, run.output[-8000:]
    assert (cloud_root.root / TLS_DIR / "node.crt").read_bytes() == pki["cert"].read_bytes()
    assert "RUNNING HANDLER [headwater_sc : Reload the SC]" in run.output, run.output[-8000:]
    assert RELOAD_SPUS in run.output, run.output[-8000:]
    assert "RUNNING HANDLER [headwater_sc : Restart" not in run.output
    assert RESTART_SPUS not in run.output
    assert not [t for t in run.changed_tasks() if "Render and check" in t], run.changed_tasks()
    again = run_playbook("cloud.yml", inventory, tmp=cloud_root.work, mount_root=cloud_root.root)
    assert again.recap()[CLOUD_HOST]["changed"] == 0, again.changed_tasks()
