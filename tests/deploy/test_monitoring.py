"""deploy/monitoring: the alert rules and example config pass promtool, every
dashboard query is valid PromQL, and every Headwater series they name is one the
daemons expose."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from support import require

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
# Where the daemons define their series.
SOURCES = [ROOT / "edge" / "metrics.py", ROOT / "edge" / "spu" / "metrics.py",
           ROOT / "edge" / "sc" / "metrics.py", ROOT / "gateway" / "runner.py"]
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created")
NAME = re.compile(r"\b(headwater_[a-z_]+)\b")


def _promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool (Debian package prometheus) is not installed")
    assert path is not None
    return path


def _exposed() -> set[str]:
    declared: set[str] = set()
    for path in SOURCES:
        text = path.read_text()
        declared |= set(re.findall(r'"(headwater_[a-z_]+)"', text))
        # listener_families builds its names from a table of keys
        if "listener_families" in text and path.name == "metrics.py":
            keys = re.findall(r'^\s+"([a-z_]+)": "', text, flags=re.MULTILINE)
            declared |= {f"headwater_listener_{k}" for k in keys}
    return {name + suffix for name in declared for suffix in SUFFIXES}


def _dashboard_exprs() -> list[str]:
    dash = json.loads((MONITORING / "headwater-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs
    return exprs


def _alert_exprs() -> list[str]:
    text = (MONITORING / "headwater-alerts.yml").read_text()
    return re.findall(r"^\s+expr: (.+)$", text, flags=re.MULTILINE)


def test_promtool_accepts_the_config_and_the_rules() -> None:
    out = subprocess.run([_promtool(), "check", "config", "prometheus.yml"], cwd=MONITORING,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 12 rules found" in out.stdout


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"headwater:dashboard_panel_{i}", "expr": e}
        for i, e in enumerate(_dashboard_exprs())]}]}
    path = tmp_path / "dashboard-rules.json"
    path.write_text(json.dumps(rules))  # JSON is YAML
    out = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_series_named_is_one_the_daemons_expose() -> None:
    exposed = _exposed()
    assert "headwater_partitions_offline" in exposed  # the scan itself works
    assert "headwater_listener_bytes_in_total" in exposed
    named = {n for e in [*_dashboard_exprs(), *_alert_exprs()] for n in NAME.findall(e)}
    assert len(named) > 15
    assert named - exposed == set()
