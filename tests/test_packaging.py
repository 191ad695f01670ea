"""Every third-party package the code imports is declared in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

import edge

ROOT = Path(__file__).resolve().parents[1]
OURS = {"edge", "gateway"}


def _imported_modules() -> set[str]:
    found: set[str] = set()
    files = [*(ROOT / "edge").rglob("*.py"), *(ROOT / "gateway").rglob("*.py")]
    assert len(files) > 50
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in OURS}


def _declared() -> set[str]:
    """The dependencies, and the extras a user installs for a feature (``[tls]``);
    not the test extra: the product's code must not need it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    wanted = [*project["dependencies"],
              *(d for name, deps in extras.items() if name != "test" for d in deps)]
    names = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0] for d in wanted}
    return {n.lower().replace("_", "-") for n in names}


def test_every_imported_distribution_is_declared() -> None:
    dists = packages_distributions()
    imported = _imported_modules()
    assert "zeroconf" in imported  # the scan sees the code
    missing = {}
    for module in imported:
        for dist in dists.get(module, [module]):
            if dist.lower().replace("_", "-") not in _declared():
                missing[module] = dist
    assert missing == {}


def test_version_has_one_source() -> None:
    assert edge.__version__ == version("headwater")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert edge.__version__ == project["version"]


def test_cli_prints_the_version() -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-m", "edge.cli.main", "--version"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == f"headwater {edge.__version__}"
