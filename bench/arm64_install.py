"""Proof that an offline Pi installs Headwater from the wheelhouse alone and runs it.

    sudo .venv/bin/python bench/arm64_install.py [--readings 10] [--burst 2000] [--keep]

An arm64 Debian bookworm root, run under qemu-user-static, stands in for a 64-bit
Raspberry Pi OS node without internet. Stages, each timed:

1. tools: Debian's qemu-user-static, binfmt-support and debootstrap (apt-get, when
   missing) and the kernel's binfmt_misc entry that runs aarch64 programs with qemu;
2. root: ``debootstrap --arch=arm64 --foreign --variant=minbase`` with python3 and
   python3-venv, second stage under qemu; cached under
   ``$HEADWATER_TEST_CACHE/arm64/`` (default /var/cache/headwater-test) keyed by the
   package list, and copied for each run;
3. wheelhouse: ``scripts/wheelhouse.py --arch aarch64`` on the host (headwater built
   here, every dependency an aarch64 wheel), copied to /wheelhouse in the root;
4. venv: ``python3 -m venv`` in the root, as the role does;
5. guard: the role's task installs headwater with ``--no-index``; in the root, with
   loopback as its only network, a decoy index on 127.0.0.1 offers headwater 99.0.0:
   pip without ``--no-index`` would take it, and pypi.org is unreachable;
6. install: ``pip install --no-index --find-links /wheelhouse headwater`` with the
   decoy still configured as PIP_INDEX_URL: the decoy sees no request; ``uname -m``
   is aarch64, ``headwater --version`` answers, every compiled module is aarch64;
7. demo: ``headwater demo`` with a few readings and a small burst, read back whole.

Prints each stage's time, the total, the wheelhouse and venv sizes; exits 1 on any
failure. Needs root (debootstrap, chroot, namespaces), Debian's mirror the first
time and the package index for the wheelhouse.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.bench import machine

REPO = Path(__file__).resolve().parents[1]
CACHE_ROOT = Path(os.environ.get("HEADWATER_TEST_CACHE", "/var/cache/headwater-test")) / "arm64"
SUITE = "bookworm"
ROOT_PACKAGES = ("python3", "python3-venv")
# Debian package -> a file it installs.
HOST_TOOLS = {
    "qemu-user-static": "/usr/bin/qemu-aarch64-static",
    "binfmt-support": "/usr/sbin/update-binfmts",
    "debootstrap": "/usr/sbin/debootstrap",
}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
VENV = "/opt/headwater/venv"
DECOY_PORT = 3141
DECOY_VERSION = "99.0.0"
EM_AARCH64 = 183
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_CACHE_DIR": "1",
}
DEBOOTSTRAP_TIMEOUT_S = 3600
STAGE_TIMEOUT_S = 1800


class ProofError(Exception):
    """A stage failed; the message says what was expected and what happened."""


def run(
    argv: list[str],
    *,
    timeout: float = STAGE_TIMEOUT_S,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a command; its output, or ProofError with the tail of it."""
    result = subprocess.run(
        argv,
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=env or CLEAN_ENV,
    )
    if log is not None:
        log.write_text(result.stdout)
    if result.returncode != 0:
        raise ProofError(
            f"{shlex.join(argv)[:300]} exited {result.returncode}:\n{result.stdout[-4000:]}"
        )
    return result.stdout


# --- 1. tools ------------------------------------------------------------------------


def ensure_tools() -> str:
    missing = [pkg for pkg, path in HOST_TOOLS.items() if not Path(path).exists()]
    env = {**CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive"}
    if missing:
        install = ["apt-get", "install", "-y", "-qq", *missing]
        try:
            run(install, env=env)
        except ProofError:
            run(["apt-get", "update", "-qq"], env=env)
            run(install, env=env)
    if not (BINFMT / "status").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        run(["update-binfmts", "--enable", "qemu-aarch64"])
    text = entry.read_text() if entry.exists() else ""
    if not text.startswith("enabled"):
        raise ProofError(f"no enabled binfmt_misc entry for aarch64: {text!r}")
    qemu = run(["qemu-aarch64-static", "--version"]).splitlines()[0]
    installed = f"installed {' '.join(missing)}; " if missing else ""
    return f"{installed}{qemu}; binfmt {flags(text)}"


def flags(entry: str) -> str:
    match = re.search(r"^flags: (\S*)", entry, re.MULTILINE)
    return match.group(1) if match else ""


def binfmt_interpreter() -> Path | None:
    """qemu's path when the kernel looks it up inside the root (no F flag), else None."""
    text = (BINFMT / "qemu-aarch64").read_text()
    if "F" in flags(text):
        return None
    match = re.search(r"^interpreter (\S+)", text, re.MULTILINE)
    return Path(match.group(1)) if match else None


# --- 2. the arm64 root ---------------------------------------------------------------


@contextmanager
def cache_lock() -> Iterator[None]:
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with (CACHE_ROOT / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_root(mirror: str | None) -> tuple[Path, str]:
    """The cached arm64 tree for ROOT_PACKAGES, and how it came to be."""
    spec = json.dumps([SUITE, "minbase", "arm64", sorted(ROOT_PACKAGES)])
    tree = CACHE_ROOT / f"{SUITE}-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"
    done = Path(f"{tree}.complete")
    with cache_lock():
        if done.exists() and tree.is_dir():
            return tree, "from the cache"
        partial = Path(f"{tree}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        first = [
            "unshare",
            "--mount",
            "--",
            "debootstrap",
            "--arch=arm64",
            "--foreign",
            "--variant=minbase",
            f"--include={','.join(ROOT_PACKAGES)}",
            SUITE,
            str(partial),
        ]
        if mirror:
            first.append(mirror)
        start = time.monotonic()
        run(first, timeout=DEBOOTSTRAP_TIMEOUT_S, log=CACHE_ROOT / "debootstrap-1.log")
        first_s = time.monotonic() - start
        interpreter = binfmt_interpreter()
        if interpreter is not None:
            dest = partial / interpreter.relative_to("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(interpreter.resolve(), dest)
        run(
            [
                "unshare",
                "--mount",
                "--",
                "chroot",
                str(partial),
                "/debootstrap/debootstrap",
                "--second-stage",
            ],
            timeout=DEBOOTSTRAP_TIMEOUT_S,
            log=CACHE_ROOT / "debootstrap-2.log",
        )
        second_s = time.monotonic() - start - first_s
        for old in CACHE_ROOT.glob(f"{SUITE}-*"):
            if old != tree and not old.name.endswith((".complete", ".partial")):
                shutil.rmtree(old, ignore_errors=True)
                Path(f"{old}.complete").unlink(missing_ok=True)
        partial.rename(tree)
        done.write_text(json.dumps(sorted(ROOT_PACKAGES)) + "\n")
        return tree, (
            f"debootstrapped now: first stage {first_s:.0f} s, "
            f"second stage under qemu {second_s:.0f} s"
        )


def in_root(
    root: Path, script: str, *, decoy: Path | None = None, decoy_log: Path | None = None
) -> list[str]:
    """argv running ``script`` in ``root`` with no network but loopback, /proc mounted
    in a private mount namespace, and optionally the decoy index on 127.0.0.1."""
    q = shlex.quote
    outer = [
        "set -e",
        "ip link set lo up",
        f"mount -t proc proc {q(str(root))}/proc",
        f"mkdir -p {q(str(root))}/dev/shm",
        f"mount -t tmpfs -o size=64m tmpfs {q(str(root))}/dev/shm",
    ]
    if decoy is not None and decoy_log is not None:
        wait = (
            "import socket, time\n"
            "for _ in range(200):\n"
            "    try:\n"
            f"        socket.create_connection(('127.0.0.1', {DECOY_PORT}), 1).close()\n"
            "        break\n"
            "    except OSError:\n"
            "        time.sleep(0.05)\n"
        )
        outer += [
            f"{q(sys.executable)} -m http.server --bind 127.0.0.1 --directory "
            f"{q(str(decoy))} {DECOY_PORT} >/dev/null 2>{q(str(decoy_log))} &",
            "decoy=$!",
            'trap "kill $decoy" EXIT',
            f"{q(sys.executable)} -c {q(wait)}",
        ]
    outer.append(f"chroot {q(str(root))} /bin/sh -ec {q(script)}")
    return ["unshare", "--net", "--mount", "--", "/bin/sh", "-c", "\n".join(outer)]


def remove_tree(path: Path) -> None:
    mounts = Path("/proc/self/mounts").read_text()
    if f" {path}/" in mounts or f" {path} " in mounts:
        raise ProofError(f"refusing to delete {path}: something is mounted below it")
    shutil.rmtree(path, ignore_errors=True)


# --- 3. the wheelhouse, and a decoy index --------------------------------------------


def build_wheelhouse(dest: Path) -> str:
    out = run(
        [
            sys.executable,
            str(REPO / "scripts" / "wheelhouse.py"),
            "--arch",
            "aarch64",
            "--out",
            str(dest),
        ],
        env=dict(os.environ),
    )
    return out.splitlines()[0]


def decoy_index(directory: Path) -> Path:
    """A PEP 503 index on disk offering a "headwater" that is not ours."""
    project = directory / "simple" / "headwater"
    project.mkdir(parents=True)
    wheel = project / f"headwater-{DECOY_VERSION}-py3-none-any.whl"
    info = f"headwater-{DECOY_VERSION}.dist-info"
    files = {
        "headwater_decoy.py": "raise SystemExit('not the real headwater')\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: headwater\nVersion: {DECOY_VERSION}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: decoy\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr(f"{info}/RECORD", record)
    return directory


def requests_seen(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if '"GET ' in line]


# --- 5. the guard --------------------------------------------------------------------


def role_uses_no_index() -> str:
    """The role's task that installs headwater itself passes --no-index with a wheelhouse."""
    text = (REPO / "deploy/ansible/roles/headwater_common/tasks/install.yml").read_text()
    for block in text.split("\n- name: "):
        if 'name: "headwater==' in block and "--no-deps" in block:
            missing = [
                flag
                for flag in ("--no-index", "--isolated", "PIP_CONFIG_FILE: /dev/null")
                if flag not in block
            ]
            if missing:
                raise ProofError(f"the role's headwater task lacks {missing}:\n{block}")
            return "role: headwater alone, --isolated --no-deps --no-index --find-links"
    raise ProofError("no task installing headwater with --no-deps in install.yml")


def guard(root: Path, work: Path, decoy: Path) -> str:
    log = work / "decoy-guard.log"
    try:
        pypi = str(socket.getaddrinfo("pypi.org", 443, socket.AF_INET)[0][4][0])
    except OSError:
        pypi = "151.101.0.223"  # one of pypi.org's addresses, for a host without DNS
    reach = (
        "import socket\ntry:\n"
        f"    socket.create_connection(({pypi!r}, 443), 5)\n"
        "except OSError as exc:\n    print('pypi.org unreachable:', exc)\n"
        "else:\n    raise SystemExit('pypi.org is reachable from the root')\n"
    )
    script = (
        f"python3 -c {shlex.quote(reach)}\n"
        f"{VENV}/bin/pip install --dry-run --find-links /wheelhouse "
        f"--index-url http://127.0.0.1:{DECOY_PORT}/simple headwater"
    )
    out = run(in_root(root, script, decoy=decoy, decoy_log=log))
    if f"Would install headwater-{DECOY_VERSION}" not in out:
        raise ProofError(f"pip with an index did not pick the decoy:\n{out[-3000:]}")
    if not requests_seen(log):
        raise ProofError("the decoy index saw no request")
    unreachable = next(line for line in out.splitlines() if "unreachable" in line)
    return (
        f"{role_uses_no_index()}; without --no-index pip picks the decoy "
        f"headwater {DECOY_VERSION} ({len(requests_seen(log))} requests); {unreachable}"
    )


# --- 6. install and check ------------------------------------------------------------


def install(root: Path, work: Path, decoy: Path) -> str:
    log = work / "decoy-install.log"
    script = (
        f"export PIP_INDEX_URL=http://127.0.0.1:{DECOY_PORT}/simple\n"
        f"{VENV}/bin/pip install --no-index --find-links /wheelhouse headwater\n"
        "echo machine=$(uname -m)\n"
        f"{VENV}/bin/headwater --version\n"
        f"{VENV}/bin/python -c {shlex.quote(NATIVE_CHECK)}"
    )
    out = run(in_root(root, script, decoy=decoy, decoy_log=log))
    seen = requests_seen(log)
    if seen:
        raise ProofError(f"pip --no-index asked the configured index: {seen}")
    if "machine=aarch64" not in out:
        raise ProofError(f"uname -m is not aarch64:\n{out[-2000:]}")
    version = re.search(r"^headwater (\S+)$", out, re.MULTILINE)
    if version is None:
        raise ProofError(f"headwater --version did not answer:\n{out[-2000:]}")
    native = next(line for line in out.splitlines() if line.startswith("native:"))
    libs = elf_machines(root / VENV.lstrip("/"))
    foreign = [name for name, em in libs.items() if em != EM_AARCH64]
    if foreign:
        raise ProofError(f"compiled modules not built for aarch64: {foreign}")
    return (
        f"headwater {version.group(1)} on aarch64, 0 requests to the configured index; "
        f"{len(libs)} compiled modules, all aarch64; {native}"
    )


# Imports the compiled parts: a pure-Python fallback would pass a plain import.
NATIVE_CHECK = """
import importlib.util, psutil, zstandard, zeroconf._cache as zc
# cbor2 6 is compiled only (cbor2._cbor2); 5.x had a pure-Python fallback and _cbor2.
cb = importlib.util.find_spec("cbor2._cbor2") or importlib.util.find_spec("_cbor2")
assert cb is not None and cb.origin.endswith(".so"), cb
assert zstandard.backend == "cext", zstandard.backend
assert zc.__file__.endswith(".so"), zc.__file__
print("native:", cb.name, "psutil", psutil.__version__, "zstandard", zstandard.backend,
      "zeroconf", zc.__file__.rsplit("/", 1)[1])
"""


def elf_machines(venv: Path) -> dict[str, int]:
    """e_machine of every shared object in the venv, by path."""
    machines = {}
    for path in venv.rglob("*.so*"):
        if path.is_file() and not path.is_symlink():
            head = path.read_bytes()[:20]
            if head[:4] == b"\x7fELF":
                machines[str(path.relative_to(venv))] = int.from_bytes(head[18:20], "little")
    return machines


def tree_bytes(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


# --- 7. the demo ---------------------------------------------------------------------


def demo(root: Path, readings: int, burst: int) -> str:
    script = f"{VENV}/bin/headwater demo --readings {readings} --burst {burst}"
    out = run(in_root(root, script))
    shown = len(re.findall(r"^\s+offset\s+\d+", out, re.MULTILINE))
    if shown != readings:
        raise ProofError(f"{shown} of {readings} readings arrived:\n{out[-3000:]}")
    if f"read back all {burst:,} records" not in out or "done." not in out:
        raise ProofError(f"the burst was not read back:\n{out[-3000:]}")
    rates = re.findall(r"= ([\d,]+) records/s", out)
    return (
        f"{readings} readings delivered, {burst:,} records produced and read back "
        f"(produce {rates[0]} / consume {rates[1]} records/s under emulation)"
    )


# --- the run -------------------------------------------------------------------------


class Stages:
    """Runs the stages in order, printing each one's time and result."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    def run(self, name: str, fn: Callable[[], str]) -> None:
        start = time.monotonic()
        try:
            detail = fn()
        except (ProofError, subprocess.TimeoutExpired, OSError) as exc:
            print(f"[{name:<10}] FAILED after {time.monotonic() - start:.1f} s: {exc}", flush=True)
            raise
        seconds = time.monotonic() - start
        self.times.append((name, seconds))
        print(f"[{name:<10}] {seconds:7.1f} s  {detail}", flush=True)


def prepare_root(mirror: str | None, root: Path) -> str:
    tree, how = cached_root(mirror)
    start = time.monotonic()
    run(["cp", "-a", "--reflink=auto", str(tree), str(root)], timeout=600)
    return (
        f"{tree} ({how}, {tree_bytes(tree) / 1e6:.0f} MB), "
        f"copied in {time.monotonic() - start:.1f} s"
    )


def wheelhouse_stage(root: Path, house: Path) -> str:
    summary = build_wheelhouse(house)
    shutil.copytree(house, root / "wheelhouse")
    return summary


def venv_stage(root: Path) -> str:
    out = run(in_root(root, f"python3 -m venv {VENV}\n{VENV}/bin/python --version"))
    return f"{VENV} made by the root's python3 -m venv ({out.strip()})"


def prove(args: argparse.Namespace, work: Path) -> None:
    stages = Stages()
    root, house = work / "root", work / "wheelhouse"
    decoy = decoy_index(work / "decoy")
    stages.run("tools", ensure_tools)
    stages.run("root", lambda: prepare_root(args.mirror, root))
    stages.run("wheelhouse", lambda: wheelhouse_stage(root, house))
    stages.run("venv", lambda: venv_stage(root))
    stages.run("guard", lambda: guard(root, work, decoy))
    stages.run("install", lambda: install(root, work, decoy))
    stages.run("demo", lambda: demo(root, args.readings, args.burst))
    wheels = sum(p.stat().st_size for p in house.glob("*.whl"))
    venv = tree_bytes(root / VENV.lstrip("/"))
    total = sum(seconds for _, seconds in stages.times)
    print(
        f"total {total:.1f} s; wheelhouse {wheels / 1e6:.1f} MB; installed venv "
        f"{venv / 1e6:.1f} MB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=10, help="live readings in the demo")
    parser.add_argument("--burst", type=int, default=2000, help="records in the demo's burst")
    parser.add_argument(
        "--mirror",
        default=os.environ.get("HEADWATER_TEST_DEBIAN_MIRROR"),
        help="Debian mirror for debootstrap (default: its own)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: debootstrap, chroot and network namespaces")
    print(
        f"machine: {machine()}; host {os.uname().machine}, kernel {os.uname().release}", flush=True
    )
    work = Path(tempfile.mkdtemp(prefix="headwater-arm64-", dir="/var/tmp"))
    try:
        prove(args, work)
    except (ProofError, subprocess.TimeoutExpired, OSError):
        sys.exit(1)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            remove_tree(work)


if __name__ == "__main__":
    main()
