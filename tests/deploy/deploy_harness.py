"""Throwaway Debian roots for the Ansible tests, and running units in them as systemd would.

A root is a ``debootstrap`` tree of Debian bookworm, built once and cached under
``$HEADWATER_TEST_CACHE`` (default ``/var/cache/headwater-test``) keyed by a hash
of its package list, then copied for each test session. Ansible reaches it with
the chroot connection; Headwater's daemons run in it from their rendered units.

Nothing here mounts anything in the caller's mount namespace: every command that
needs ``/proc`` in the root runs in a private one (``unshare --mount``), so the
mounts vanish with the process and removing a root can never reach the host.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import pwd
import random
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import IN_CI, require

from edge.testing import LOW_PORT, ephemeral_start, port_free

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "deploy" / "ansible"
ROLES = ANSIBLE_DIR / "roles"
CACHE_ROOT = Path(os.environ.get("HEADWATER_TEST_CACHE", "/var/cache/headwater-test"))
SUITE = "bookworm"
# What the harness needs in the tree besides what the roles install: python3-apt
# for Ansible's apt module (it would fetch it itself otherwise), systemd-sysv for
# /sbin/init when the tree is booted with systemd-nspawn, procps for the /bin/kill
# in Debian's mosquitto.service. Every real Debian and Raspberry Pi OS install
# has them; a minbase tree does not.
HARNESS_PACKAGES = ("procps", "python3-apt", "systemd", "systemd-sysv")
# Roles whose `<role>_packages`-style lists go into the tree, so the converge
# installs nothing over the network.
ROLE_PACKAGE_LISTS = (
    ("headwater_common", "headwater_common_os_packages"),
    ("mosquitto", "mosquitto_packages"),
)
# The controller's headwater (next to this interpreter): it issues the nodes'
# certificates when the roles are given a deployment CA.
CONTROLLER_HEADWATER = Path(sys.executable).with_name("headwater")
DEBOOTSTRAP_TIMEOUT_S = 1200
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def require_tools(*names: str) -> None:
    """Skip (fail in CI) unless every tool is on PATH and we are root."""
    require(os.geteuid() == 0, "needs root (debootstrap, chroot, unshare)")
    missing = [name for name in names if shutil.which(name) is None]
    require(not missing, f"not installed: {', '.join(missing)}")


def load_yaml(path: Path) -> object:
    """Parse YAML with the PyYAML that ships with Ansible (the test venv has none)."""
    code = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"
    out = subprocess.run(
        ["/usr/bin/python3", "-c", code, str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def role_packages() -> list[str]:
    packages: list[str] = []
    for role, variable in ROLE_PACKAGE_LISTS:
        defaults = load_yaml(ROLES / role / "defaults" / "main.yml")
        assert isinstance(defaults, dict)
        packages.extend(defaults[variable])
    return packages


# --- the cached Debian tree ------------------------------------------------------


def tree_packages() -> list[str]:
    return sorted(set(role_packages()) | set(HARNESS_PACKAGES))


def tree_key(packages: Sequence[str]) -> str:
    spec = json.dumps([SUITE, "minbase", list(packages), platform.machine()])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


@contextmanager
def _cache_lock() -> Iterator[None]:
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with (CACHE_ROOT / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_tree() -> tuple[Path, bool]:
    """The cached bookworm tree for the current package list; True if it was built now."""
    packages = tree_packages()
    tree = CACHE_ROOT / f"{SUITE}-{tree_key(packages)}"
    done = Path(f"{tree}.complete")
    with _cache_lock():
        if done.exists() and tree.is_dir():
            return tree, False
        partial = Path(f"{tree}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        argv = [
            "unshare",
            "--mount",
            "--",
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            SUITE,
            str(partial),
        ]
        mirror = os.environ.get("HEADWATER_TEST_DEBIAN_MIRROR")
        if mirror:
            argv.append(mirror)
        log = CACHE_ROOT / "debootstrap.log"
        with log.open("w") as out:
            result = subprocess.run(argv, check=False, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=DEBOOTSTRAP_TIMEOUT_S)
        if result.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"debootstrap failed ({result.returncode}):\n{tail}")
        # Older trees are other package lists: keep one tree on the disk.
        for old in CACHE_ROOT.glob(f"{SUITE}-*"):
            if old != tree and not old.name.endswith((".complete", ".partial")):
                shutil.rmtree(old, ignore_errors=True)
                Path(f"{old}.complete").unlink(missing_ok=True)
        partial.rename(tree)
        done.write_text(json.dumps(packages) + "\n")
        return tree, True


def copy_tree(source: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(dest)], check=True, timeout=600)
    return dest


def remove_tree(root: Path) -> None:
    """Delete a root; refuses while anything is mounted below it."""
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    mounted = [line for line in mounts if f" {root}/" in line or f" {root} " in line]
    if mounted:
        pytest.fail(f"refusing to delete {root}: still mounted: {mounted}")
    shutil.rmtree(root, ignore_errors=True)


# --- running commands in the root ------------------------------------------------


def in_root(root: Path, argv: Sequence[str], *, userspec: str | None = None,
            groups: Sequence[str] = (), workdir: str = "/", umask: str = "0022") -> list[str]:
    """argv for running ``argv`` chrooted into ``root`` with /proc mounted privately.

    unshare, sh and chroot all exec the next program, so the process started from
    the returned argv *is* the command: signals reach it and its exit status is ours.
    """
    chroot = ["chroot"]
    if userspec:
        chroot.append(f"--userspec={userspec}")
    if groups:
        chroot.append(f"--groups={','.join(groups)}")
    inner = f"cd {shlex.quote(workdir)} && umask {umask} && exec {shlex.join(argv)}"
    chroot += [str(root), "/bin/sh", "-c", inner]
    outer = f'mount -t proc proc {shlex.quote(str(root))}/proc && exec {shlex.join(chroot)}'
    return ["unshare", "--mount", "--", "/bin/sh", "-c", outer]


def run_in_root(root: Path, argv: Sequence[str], *, timeout: float = 60,
                check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(in_root(root, argv), capture_output=True, text=True,
                          timeout=timeout, check=check)


# --- systemd units, read and run the way systemd would ---------------------------


@dataclass
class Unit:
    """The directives of a unit file (every value of repeated keys, in order)."""

    path: Path
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Unit:
        unit = cls(path)
        section: dict[str, list[str]] = {}
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = unit.sections.setdefault(line[1:-1], {})
                continue
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
        return unit

    def get(self, key: str, default: str = "", *, section: str = "Service") -> str:
        values = self.sections.get(section, {}).get(key)
        return values[-1] if values else default

    def all(self, key: str, *, section: str = "Service") -> list[str]:
        return self.sections.get(section, {}).get(key, [])


def specifiers(text: str, instance: str) -> str:
    """Expand the systemd specifiers our units use (%i, %I, %S, %%)."""
    table = {"i": instance, "I": instance, "S": "/var/lib", "%": "%"}
    return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), text)


def exec_argv(line: str, instance: str) -> list[str]:
    line = line.lstrip("-@+!:")
    return shlex.split(specifiers(line, instance))


def _passwd_ids(root: Path, user: str, group: str) -> tuple[int, int]:
    uid = gid = -1
    for entry in (root / "etc" / "passwd").read_text().splitlines():
        fields = entry.split(":")
        if fields[0] == user:
            uid = int(fields[2])
    for entry in (root / "etc" / "group").read_text().splitlines():
        fields = entry.split(":")
        if fields[0] == group:
            gid = int(fields[2])
    if uid < 0 or gid < 0:
        raise LookupError(f"{user}:{group} not in {root}/etc/passwd or /etc/group")
    return uid, gid


class NotifyListener:
    """A stand-in for systemd's notify socket, in the abstract namespace."""

    def __init__(self) -> None:
        self.name = f"headwater-test-notify-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name.encode())
        self.messages: list[bytes] = []

    @property
    def env_value(self) -> str:
        return "@" + self.name

    def wait_for(self, state: bytes, proc: subprocess.Popen[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(state in message.split(b"\n") for message in self.messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {state!r} within {timeout}s; got {self.messages}")
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode} before {state!r}")
            ready, _, _ = select.select([self.sock], [], [], min(remaining, 0.2))
            if ready:
                self.messages.append(self.sock.recv(4096))

    def drain(self) -> None:
        """Collect what arrived without waiting (e.g. STOPPING=1 after an exit)."""
        while select.select([self.sock], [], [], 0)[0]:
            self.messages.append(self.sock.recv(4096))

    def close(self) -> None:
        self.sock.close()


@dataclass
class RunningUnit:
    unit: Unit
    instance: str
    proc: subprocess.Popen[str]
    notify: NotifyListener
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, as systemd stops a unit; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        self.notify.drain()
        self.notify.close()
        return self.proc.returncode


def start_unit(root: Path, unit_path: Path, *, instance: str = "", log_dir: Path,
               env: Mapping[str, str] | None = None) -> RunningUnit:
    """Start a unit's ExecStart in ``root`` as its User=, with StateDirectory= made
    the way systemd makes it, ExecStartPre= first, and wait for READY=1."""
    unit = Unit.read(unit_path)
    user = unit.get("User", "root")
    group = unit.get("Group", user)
    groups = [g for value in unit.all("SupplementaryGroups") for g in value.split()]
    uid, gid = _passwd_ids(root, user, group)
    mode = int(unit.get("StateDirectoryMode", "0755"), 8)
    for value in unit.all("StateDirectory"):
        for name in specifiers(value, instance).split():
            path = root / "var" / "lib" / name
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, uid, gid)
            path.chmod(mode)
    for pre in unit.all("ExecStartPre"):
        subprocess.run(in_root(root, exec_argv(pre, instance)), check=True, timeout=60)
    argv = exec_argv(unit.get("ExecStart"), instance)
    workdir = specifiers(unit.get("WorkingDirectory", "/"), instance)
    notify = NotifyListener()
    name = unit_path.name.replace("@.", f"@{instance}.")
    log_path = log_dir / f"{name}.log"
    child_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                 "NOTIFY_SOCKET": notify.env_value, **(env or {})}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            in_root(root, argv, userspec=f"{user}:{group}", groups=groups,
                    workdir=workdir, umask=unit.get("UMask", "0022")),
            stdout=log, stderr=subprocess.STDOUT, env=child_env, text=True,
        )
    running = RunningUnit(unit, instance, proc, notify, log_path)
    try:
        notify.wait_for(b"READY=1", proc, READY_TIMEOUT_S)
    except (TimeoutError, RuntimeError) as exc:
        with suppress(Exception):
            running.stop(5)
        pytest.fail(f"{name} did not become ready: {exc}\n{running.log()[-4000:]}")
    return running


@contextmanager
def node_units(root: Path, log_dir: Path, spu_ids: Sequence[int], *,
               system: str = "etc/systemd/system") -> Iterator[dict[str, RunningUnit]]:
    """The SC and the SPUs ``spu_ids`` of a node, started from their rendered units
    (more may be added to the dict: they are killed with them, last first)."""
    started: dict[str, RunningUnit] = {}
    try:
        units = root / system
        started["sc"] = start_unit(root, units / "headwater-sc.service", log_dir=log_dir)
        for spu_id in spu_ids:
            started[f"spu-{spu_id}"] = start_unit(root, units / "headwater-spu@.service",
                                                  instance=str(spu_id), log_dir=log_dir)
        yield started
    finally:
        for unit in reversed(list(started.values())):
            if unit.proc.poll() is None:
                unit.proc.kill()
                unit.proc.wait(10)


# --- ansible ---------------------------------------------------------------------

RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)",
    re.MULTILINE,
)


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        return {
            m.group("host"): {k: int(v) for k, v in m.groupdict().items() if k != "host"}
            for m in RECAP.finditer(self.output)
        }

    def changed_tasks(self) -> list[str]:
        """Task headers followed by a 'changed:' line (for failure messages)."""
        names: list[str] = []
        task = ""
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                task = line
            elif line.startswith("changed:") and task not in names:
                names.append(task)
        return names


def ansible_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def run_playbook(playbook: str, inventory: Path, *, tmp: Path, mount_root: Path | None = None,
                 extra_vars: Mapping[str, object] | None = None,
                 timeout: float = 900) -> PlaybookRun:
    """ansible-playbook from deploy/ansible; with ``mount_root``, /proc is mounted in
    that root inside a private mount namespace for the run."""
    argv = ["ansible-playbook", "-i", str(inventory), str(ANSIBLE_DIR / playbook)]
    if extra_vars:
        argv += ["--extra-vars", json.dumps(dict(extra_vars))]
    if mount_root is not None:
        mount = f"mount -t proc proc {shlex.quote(str(mount_root))}/proc"
        script = f"{mount} && exec {shlex.join(argv)}"
        argv = ["unshare", "--mount", "--", "/bin/sh", "-c", script]
    start = time.monotonic()
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                            cwd=ANSIBLE_DIR, env=ansible_env(tmp))
    return PlaybookRun(result.returncode, result.stdout + result.stderr, time.monotonic() - start)


# --- free ports --------------------------------------------------------------------


def free_port_block(size: int, *, stride: int = 1) -> int:
    """A base port such that base + k * stride and base + k * stride + 1 (k < size) are free.

    Chosen below the kernel's ephemeral range: the daemons bind them a minute
    later (after the converge), and an outgoing connection of anything else on
    the machine must not take one in between.
    """
    high = ephemeral_start() - size * stride - 2
    for _ in range(500):
        base = random.randrange(LOW_PORT, high)
        ports = [base + k * stride + d for k in range(size) for d in (0, 1)]
        if all(port_free(port) for port in ports):
            return base
    raise RuntimeError("no free port block")


def host_user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


EDGE_HOST = "edge-node"
CLOUD_HOST = "cloud-node"


@dataclass
class EdgeRoot:
    """An edge node's root after the edge playbook, and what the test set up."""

    root: Path
    inventory: Path
    work: Path
    ports: dict[str, int]
    spu_ids: list[int]
    first: PlaybookRun
    second: PlaybookRun
    tree_built: bool
    tree_seconds: float
    copy_seconds: float



@dataclass
class CloudRoot:
    """A cloud node's root (SC and one SPU, mutual TLS) after cloud.yml."""

    root: Path
    work: Path
    ports: dict[str, int]
    pki: dict[str, Path]
    first: PlaybookRun
    second: PlaybookRun


__all__ = ["IN_CI"]
