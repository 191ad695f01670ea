#!/usr/bin/env python3
"""Build the wheelhouse that nodes install Headwater from, for the nodes' platform.

    .venv/bin/python scripts/wheelhouse.py [--arch aarch64] [--out dist/wheelhouse]
                                           [--constraint FILE] [--find-links DIR]

1. headwater's own wheel, built here from a copy of this tree: never fetched from
   an index (dependency confusion), and never from a stale ``build/`` directory
   (setuptools packages whatever is left in ``build/lib``, deleted modules too);
2. every dependency as a binary wheel for the target, CPython 3.11 on glibc 2.36
   (Debian and Raspberry Pi OS bookworm), resolved through that wheel's own
   requirements, so the project's pins (``typer<0.29``, ...) hold, with
   ``--constraint`` files on top;
3. a check, with no configuration and no index, that the directory alone
   satisfies ``pip install --no-index headwater==VERSION`` on the target.

The directory is replaced whole: it holds one headwater and what it needs. A
package without a binary wheel for the target on the index is named, with what
to do about it; nothing is built from source for another architecture here.
Needs a Python with pip (the project's .venv has one) and the package index.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from: the distribution's own files, copied.
PACKAGING_INPUTS = ("pyproject.toml", "README.md", "edge", "gateway")
# Debian bookworm and Raspberry Pi OS bookworm: python3 3.11, glibc 2.36.
PYTHON_VERSION = "3.11"
GLIBC_MINOR = 36
# manylinux_2_17 (= manylinux2014) is the oldest tag PyPI's aarch64 wheels use.
OLDEST_GLIBC_MINOR = 17
ARCHES = ("aarch64", "armv7l", "x86_64")
PIP_TIMEOUT_S = 900


class WheelhouseError(Exception):
    """The wheelhouse cannot be built as asked; the message says why and what to do."""


def platforms(arch: str, glibc_minor: int = GLIBC_MINOR) -> list[str]:
    """Platform tags a bookworm node of ``arch`` installs, most specific first.

    pip expands only the legacy ``manylinux2014`` name to older tags: given that
    alone it misses wheels published as ``manylinux_2_28`` only (cbor2 6 on
    aarch64) and quietly picks an older release, so every glibc is listed.
    ``linux_<arch>`` matches wheels built on such a node (``--find-links``).
    """
    tags = [
        f"manylinux_2_{minor}_{arch}" for minor in range(glibc_minor, OLDEST_GLIBC_MINOR - 1, -1)
    ]
    return [*tags, f"manylinux2014_{arch}", f"linux_{arch}"]


def target_args(arch: str, python_version: str) -> list[str]:
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for tag in platforms(arch):
        args += ["--platform", tag]
    return args


def pip(argv: Sequence[str], *, clean: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m pip``; ``clean`` ignores every pip configuration file and PIP_* variable."""
    env = dict(os.environ)
    if clean:
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pip", *argv],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
    )


def build_headwater(dest: Path) -> Path:
    """headwater's wheel from a fresh copy of the packaging inputs."""
    with tempfile.TemporaryDirectory(prefix="headwater-src-") as tmp:
        src = Path(tmp)
        for name in PACKAGING_INPUTS:
            path = REPO / name
            if path.is_dir():
                shutil.copytree(
                    path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy2(path, src / name)
        result = pip(["wheel", "--no-deps", "-w", str(dest), str(src)])
    if result.returncode != 0:
        raise WheelhouseError(f"building headwater's wheel failed:\n{result.stderr[-3000:]}")
    wheels = sorted(dest.glob("headwater-*.whl"))
    if len(wheels) != 1:
        raise WheelhouseError(f"expected one headwater wheel in {dest}, found {wheels}")
    return wheels[0]


def requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel, extras left out."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(name).decode()
    return [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]


def missing_binaries(wheel: Path, extra: list[str]) -> list[str]:
    """The direct requirements that have no binary wheel for the target."""
    missing = []
    with tempfile.TemporaryDirectory() as tmp:
        for requirement in requirements(wheel):
            result = pip(["download", "--no-deps", "-d", tmp, *extra, requirement])
            if result.returncode != 0:
                missing.append(requirement)
    return missing


def download_dependencies(
    wheel: Path, dest: Path, target: list[str], constraints: list[Path], find_links: list[Path]
) -> None:
    """Every dependency of ``wheel`` for the target; names what has no binary wheel."""
    extra = list(target)
    for path in constraints:
        extra += ["--constraint", str(path)]
    for path in find_links:
        extra += ["--find-links", str(path)]
    # The local wheel file is the root of the resolution: pip reads headwater's
    # requirements from it and never looks the name up on an index.
    result = pip(["download", "-d", str(dest), *extra, str(wheel)])
    if result.returncode == 0:
        return
    missing = missing_binaries(wheel, extra)
    if missing:
        raise WheelhouseError(
            f"no binary wheel on the index for this platform: {', '.join(missing)}.\n"
            "Build them on a machine of that architecture (Debian bookworm, python3-dev, a C "
            "compiler: `python3 -m pip wheel -w DIR 'NAME>=X'`) and pass --find-links DIR."
        )
    raise WheelhouseError(f"downloading the dependencies failed:\n{result.stderr[-3000:]}")


def check_offline_install(house: Path, version: str, target: list[str]) -> list[dict[str, str]]:
    """What ``pip install --no-index headwater==VERSION`` takes from ``house`` alone."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        result = pip(
            [
                "install",
                "--dry-run",
                "--ignore-installed",
                "--no-index",
                "--find-links",
                str(house),
                *target,
                "--target",
                str(Path(tmp) / "t"),
                "--report",
                str(report),
                f"headwater=={version}",
            ],
            clean=True,
        )
        if result.returncode != 0:
            raise WheelhouseError(
                f"the wheelhouse does not install offline:\n{result.stderr[-3000:]}"
            )
        installs = json.loads(report.read_text())["install"]
    rows = []
    for item in installs:
        url = item["download_info"]["url"]
        if not url.startswith(house.resolve().as_uri()):
            raise WheelhouseError(f"{item['metadata']['name']} would come from {url}")
        rows.append(
            {
                "name": item["metadata"]["name"],
                "version": item["metadata"]["version"],
                "file": url.rsplit("/", 1)[1],
            }
        )
    return rows


def build(
    out: Path,
    *,
    arch: str,
    python_version: str = PYTHON_VERSION,
    constraints: Sequence[Path] = (),
    find_links: Sequence[Path] = (),
) -> list[dict[str, str]]:
    """Replace ``out`` with a checked wheelhouse; returns what an install takes from it."""
    target = target_args(arch, python_version)
    out = out.resolve()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        wheel = build_headwater(partial)
        version = wheel.name.split("-")[1]
        download_dependencies(wheel, partial, target, list(constraints), list(find_links))
        rows = check_offline_install(partial, version, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch",
        choices=ARCHES,
        default="aarch64",
        help="the nodes' machine (uname -m); default aarch64 (64-bit Pi OS)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "dist" / "wheelhouse",
        help="directory to (re)create; default dist/wheelhouse",
    )
    parser.add_argument(
        "--python-version",
        default=PYTHON_VERSION,
        help=f"the nodes' python3; default {PYTHON_VERSION} (bookworm)",
    )
    parser.add_argument(
        "--constraint",
        "-c",
        type=Path,
        action="append",
        default=[],
        help="pip constraints file to resolve the dependencies with",
    )
    parser.add_argument(
        "--find-links",
        type=Path,
        action="append",
        default=[],
        help="directory of wheels built on a node, for packages the index has no binary of",
    )
    args = parser.parse_args(argv)
    try:
        import pip as _pip  # noqa: F401
    except ImportError:
        print(f"{sys.executable} has no pip: run this with .venv/bin/python", file=sys.stderr)
        return 2
    try:
        rows = build(
            args.out,
            arch=args.arch,
            python_version=args.python_version,
            constraints=args.constraint,
            find_links=args.find_links,
        )
    except WheelhouseError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in args.out.glob("*.whl"))
    print(
        f"{args.out}: {len(rows)} wheels, {size / 1e6:.1f} MB, for {args.arch} / CPython "
        f"{args.python_version} / glibc 2.{GLIBC_MINOR}; installs offline:"
    )
    for row in sorted(rows, key=lambda r: r["name"].lower()):
        print(f"  {row['name']}=={row['version']}  {row['file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
