"""scripts/wheelhouse.py for 64-bit Pis: aarch64 wheels, the project's pins, headwater built here.

The emulated install of the result (bench/arm64_install.py) takes minutes and is
not run here; deploy/ansible/README.md has its figures.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

from deploy_harness import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

COMPILED = ("cbor2", "psutil", "zeroconf", "zstandard")


def _project() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    assert isinstance(project, dict)
    return project


def test_aarch64_wheelhouse_holds_pinned_binary_wheels(tmp_path: Path) -> None:
    out = tmp_path / "wheelhouse"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "wheelhouse.py"),
            "--arch",
            "aarch64",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installs offline" in result.stdout, result.stdout
    assert not (tmp_path / "wheelhouse.partial").exists()
    wheels = {}
    for path in out.glob("*.whl"):
        name, version, _build, tags = parse_wheel_filename(path.name)
        platforms = {tag.platform for tag in tags}
        assert platforms == {"any"} or all("aarch64" in p for p in platforms), path.name
        wheels[name] = (version, platforms)
    assert len(wheels) > len(COMPILED), sorted(wheels)
    project = _project()
    assert wheels["headwater"] == (Version(str(project["version"])), {"any"})
    dependencies = project["dependencies"]
    assert isinstance(dependencies, list)
    for line in dependencies:
        requirement = Requirement(line)
        version, _ = wheels[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), f"{version} breaks {line}"
    for name in COMPILED:
        assert wheels[canonicalize_name(name)][1] != {"any"}, f"{name}: no compiled wheel"


def _wheelhouse_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wheelhouse", REPO / "scripts" / "wheelhouse.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_platform_tags_cover_every_glibc_up_to_bookworms() -> None:
    # Given manylinux2014 alone pip skips wheels tagged manylinux_2_28 only (cbor2 6
    # on aarch64) and takes an older release without a word.
    tags = _wheelhouse_module().platforms("aarch64")
    assert tags[0] == "manylinux_2_36_aarch64"
    for minor in range(17, 37):
        assert f"manylinux_2_{minor}_aarch64" in tags
    assert "manylinux2014_aarch64" in tags
    assert not any("x86_64" in tag or "armv7l" in tag for tag in tags)
