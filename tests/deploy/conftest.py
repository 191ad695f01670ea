"""Session fixtures for the deployment tests: a wheelhouse and a converged edge root."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# The suite imports with --import-mode=importlib and only tests/ on sys.path:
# make this directory's helpers importable by the test modules.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from deploy_harness import (  # noqa: E402 - after the path fix
    CACHE_ROOT,
    CLOUD_HOST,
    CONTROLLER_HEADWATER,
    EDGE_HOST,
    REPO,
    CloudRoot,
    EdgeRoot,
    PlaybookRun,
    cached_tree,
    copy_tree,
    free_port_block,
    remove_tree,
    require_tools,
    run_playbook,
)

# What the wheel is built from: the distribution's own files only, copied, so
# that the build never writes into the work tree.
PACKAGING_INPUTS = ("pyproject.toml", "README.md", "edge", "gateway")


def _project() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    assert isinstance(project, dict)
    return project


def _dependency_wheels(deps: list[str], dest: Path) -> None:
    """The dependencies' wheels, cached by the dependency list (they change rarely)."""
    key = hashlib.sha256(json.dumps([sorted(deps), sys.version_info[:2]]).encode()).hexdigest()
    cache = CACHE_ROOT / f"wheels-{key[:16]}"
    if not Path(f"{cache}.complete").exists():
        shutil.rmtree(cache, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
             "-w", str(cache), *deps],
            check=True, timeout=900,
        )
        Path(f"{cache}.complete").touch()
    for wheel in cache.glob("*.whl"):
        shutil.copy2(wheel, dest)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """headwater built from this tree, and every dependency, as wheels."""
    require_tools("debootstrap", "ansible-playbook")
    house = tmp_path_factory.mktemp("wheelhouse")
    src = tmp_path_factory.mktemp("src")
    for name in PACKAGING_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy2(path, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--no-deps", "-w", str(house), str(src)],
        check=True, timeout=600,
    )
    deps = _project()["dependencies"]
    assert isinstance(deps, list)
    _dependency_wheels([str(d) for d in deps], house)
    return house


def edge_host_vars(wheelhouse: Path, ports: dict[str, int], version: str) -> dict[str, object]:
    """One host that is a site controller, an SPU node and a gateway, on loopback ports."""
    return {
        "headwater_common_version": version,
        "headwater_common_wheelhouse": str(wheelhouse),
        "headwater_common_pip_offline": True,
        "headwater_sc_public_addr": f"127.0.0.1:{ports['sc']}",
        "headwater_sc_private_addr": f"127.0.0.1:{ports['sc'] + 1}",
        "headwater_spu_id_base": 7,
        "headwater_spu_count": 2,
        "headwater_spu_bind_host": "127.0.0.1",
        "headwater_spu_public_port_base": ports["spu"],
        "headwater_spu_private_port_base": ports["spu"] + 1,
        "headwater_spu_port_stride": 10,
        "headwater_spu_advertise_host": "127.0.0.1",
        "headwater_spu_sc": f"127.0.0.1:{ports['sc'] + 1}",
        "headwater_spu_rack": "test-site",
        "headwater_spu_cluster_check_sc": f"127.0.0.1:{ports['sc']}",
        "headwater_gateway_sc": f"127.0.0.1:{ports['sc']}",
        "headwater_gateway_status_listen": f"127.0.0.1:{ports['status']}",
        "headwater_gateway_create_topics": True,
        # No such device in the root: the bridge keeps trying to open it, as it
        # does for a USB adapter that is unplugged.
        "headwater_gateway_serial_ports": [
            {"path": "/dev/headwater/bench-1", "baud": 921600, "default_topic": "bench",
             "topics": {"temperature": "temperature", "humidity": "humidity"}},
            {"path": "/dev/ttyAMA0", "default_topic": "readings"},
        ],
        "headwater_gateway_udev_rules": [
            {"vendor_id": "2e8a", "product_id": "0005", "serial": "E6616407E3A1",
             "symlink": "headwater/bench-1"},
        ],
        "headwater_gateway_mqtt_enabled": True,
        "headwater_gateway_mqtt_port": ports["mqtt"],
        "headwater_gateway_mqtt_rules": [
            {"filter": "headwater/+/temperature", "topic": "temperature", "format": "cbor"},
        ],
        "mosquitto_listener_address": "127.0.0.1",
        "mosquitto_listener_port": ports["mqtt"],
        "mosquitto_allow_anonymous": True,
    }


def write_inventory(path: Path, root: Path, host_vars: dict[str, object],
                    connection: dict[str, object], *, host: str = EDGE_HOST,
                    parent: str = "edge",
                    groups: tuple[str, ...] = ("edge_sc", "edge_spu", "edge_gateway")) -> Path:
    """One host, in ``groups`` below ``parent``, reached through ``connection``."""
    children = {name: {"hosts": {host: None}} for name in groups}
    inventory = {
        "all": {
            "hosts": {host: {"ansible_host": str(root), **connection, **host_vars}},
            "children": {parent: {"children": children}},
        }
    }
    # JSON is YAML: Ansible's yaml inventory plugin reads it.
    path.write_text(json.dumps(inventory, indent=2))
    return path


CHROOT_CONNECTION = {
    "ansible_connection": "community.general.chroot",
    "ansible_python_interpreter": "/usr/bin/python3",
    # The playbooks say become: true (sudo on a Pi); in the chroot we are root.
    "ansible_become": False,
}


_FAILED_CONVERGES: dict[str, str] = {}


def _check_first_run(playbook: str, run: PlaybookRun) -> None:
    """Fail on a failed converge, and fail every later user of it at once (no re-runs)."""
    if run.returncode != 0:
        _FAILED_CONVERGES[playbook] = f"first {playbook} run failed:\n{run.output[-12000:]}"
    if playbook in _FAILED_CONVERGES:
        pytest.fail(_FAILED_CONVERGES[playbook])


@contextmanager
def _fresh_root(prefix: str) -> Iterator[tuple[Path, Path, bool, float, float]]:
    """(work dir, root copied from the cached tree, tree built now?, seconds, seconds)."""
    require_tools("debootstrap", "ansible-playbook", "unshare", "chroot")
    start = time.monotonic()
    tree, built = cached_tree()
    tree_seconds = time.monotonic() - start
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        start = time.monotonic()
        copy_tree(tree, work / "root")
        yield work, work / "root", built, tree_seconds, time.monotonic() - start
    finally:
        remove_tree(work)


@pytest.fixture(scope="session")
def edge_root(wheelhouse: Path) -> Iterator[EdgeRoot]:
    """A fresh bookworm root that the edge playbook converged twice through chroot."""
    if "edge.yml" in _FAILED_CONVERGES:
        pytest.fail(_FAILED_CONVERGES["edge.yml"])
    with _fresh_root("headwater-edge-") as (work, root, built, tree_seconds, copy_seconds):
        ports = {"sc": free_port_block(1), "spu": free_port_block(2, stride=10),
                 "status": free_port_block(1), "mqtt": free_port_block(1)}
        version = str(_project()["version"])
        inventory = write_inventory(work / "hosts.yml", root,
                                    edge_host_vars(wheelhouse, ports, version), CHROOT_CONNECTION)
        first = run_playbook("edge.yml", inventory, tmp=work, mount_root=root)
        _check_first_run("edge.yml", first)
        second = run_playbook("edge.yml", inventory, tmp=work, mount_root=root)
        yield EdgeRoot(root, inventory, work, ports, [7, 8], first, second, built,
                       tree_seconds, copy_seconds)


@pytest.fixture(scope="session")
def edge_ca_root(wheelhouse: Path) -> Iterator[EdgeRoot]:
    """Like edge_root, with TLS from a deployment CA alone (headwater tls init): the
    roles issue every service's certificate on the controller. The CA is <work>/pki."""
    if "edge.yml with a CA" in _FAILED_CONVERGES:
        pytest.fail(_FAILED_CONVERGES["edge.yml with a CA"])
    with _fresh_root("headwater-edge-ca-") as (work, root, built, tree_seconds, copy_seconds):
        subprocess.run([str(CONTROLLER_HEADWATER), "tls", "init", "--dir", str(work / "pki")],
                       check=True, capture_output=True, timeout=60)
        ports = {"sc": free_port_block(1), "spu": free_port_block(2, stride=10),
                 "status": free_port_block(1), "mqtt": free_port_block(1)}
        host_vars = {**edge_host_vars(wheelhouse, ports, str(_project()["version"])),
                     "headwater_common_tls_enabled": True,
                     "headwater_common_tls_ca_dir": str(work / "pki"),
                     "headwater_common_tls_cli": str(CONTROLLER_HEADWATER)}
        inventory = write_inventory(work / "hosts.yml", root, host_vars, CHROOT_CONNECTION)
        first = run_playbook("edge.yml", inventory, tmp=work, mount_root=root)
        _check_first_run("edge.yml with a CA", first)
        second = run_playbook("edge.yml", inventory, tmp=work, mount_root=root)
        yield EdgeRoot(root, inventory, work, ports, [7, 8], first, second, built,
                       tree_seconds, copy_seconds)


def make_pki(directory: Path, host: str, spu_ids: tuple[int, ...]) -> dict[str, Path]:
    """A CA and one node certificate (server and client use, the host and 127.0.0.1,
    and ``spu-N.headwater`` for each SPU the host runs)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "node.key", directory / "node.csr", directory / "node.crt"
    ext = directory / "node.ext"
    spus = "".join(f",DNS:spu-{i}.headwater" for i in spu_ids)
    ext.write_text(f"subjectAltName=DNS:{host},IP:127.0.0.1{spus}\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n"
                   "basicConstraints=CA:FALSE\n")
    openssl = ["openssl"]
    subprocess.run([*openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
                    "/CN=headwater-test-ca", "-keyout", str(ca_key), "-out", str(ca_crt)],
                   check=True, capture_output=True, timeout=60)
    subprocess.run([*openssl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-subj", f"/CN={host}", "-keyout", str(key), "-out", str(csr)],
                   check=True, capture_output=True, timeout=60)
    subprocess.run([*openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey",
                    str(ca_key), "-CAcreateserial", "-days", "2", "-extfile", str(ext),
                    "-out", str(crt)], check=True, capture_output=True, timeout=60)
    return {"ca": ca_crt, "cert": crt, "key": key}


@pytest.fixture(scope="session")
def cloud_root(wheelhouse: Path) -> Iterator[CloudRoot]:
    """A fresh root that cloud.yml converged twice, with mutual TLS on."""
    require_tools("openssl")
    if "cloud.yml" in _FAILED_CONVERGES:
        pytest.fail(_FAILED_CONVERGES["cloud.yml"])
    with _fresh_root("headwater-cloud-") as (work, root, _built, _tree_s, _copy_s):
        pki = make_pki(work / "pki", CLOUD_HOST, spu_ids=(1000,))
        ports = {"sc": free_port_block(1), "spu": free_port_block(1)}
        host_vars = {
            "headwater_common_version": str(_project()["version"]),
            "headwater_common_wheelhouse": str(wheelhouse),
            "headwater_common_pip_offline": True,
            "headwater_common_tls_enabled": True,
            "headwater_common_tls_cert_src": str(pki["cert"]),
            "headwater_common_tls_key_src": str(pki["key"]),
            "headwater_common_tls_ca_src": str(pki["ca"]),
            "headwater_sc_public_addr": f"127.0.0.1:{ports['sc']}",
            "headwater_sc_private_addr": f"127.0.0.1:{ports['sc'] + 1}",
            "headwater_spu_id_base": 1000,
            "headwater_spu_count": 1,
            "headwater_spu_bind_host": "127.0.0.1",
            "headwater_spu_public_port_base": ports["spu"],
            "headwater_spu_private_port_base": ports["spu"] + 1,
            "headwater_spu_advertise_host": "127.0.0.1",
            "headwater_spu_sc": f"127.0.0.1:{ports['sc'] + 1}",
        }
        inventory = write_inventory(work / "hosts.yml", root, host_vars, CHROOT_CONNECTION,
                                    host=CLOUD_HOST, parent="cloud",
                                    groups=("cloud_sc", "cloud_spu"))
        first = run_playbook("cloud.yml", inventory, tmp=work, mount_root=root)
        _check_first_run("cloud.yml", first)
        second = run_playbook("cloud.yml", inventory, tmp=work, mount_root=root)
        yield CloudRoot(root, work, ports, pki, first, second)
