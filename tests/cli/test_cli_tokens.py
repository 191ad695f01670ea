"""``headwater token`` against a real local cluster: a token made, written where asked,
used with --token-file and HEADWATER_TOKEN, listed and revoked; bad token input is
one line and a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from edge.testing import LocalCluster


def headwater(cluster: LocalCluster, *args: str, token: str = ""
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli.main", "--sc", cluster.sc_addr,
                           *args], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "HEADWATER_SC": "", "HEADWATER_TOKEN": token})


async def test_a_token_made_listed_used_and_revoked(cluster: LocalCluster,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "dave.token"

    def cli() -> None:
        made = headwater(cluster, "token", "create", "dave", "--out", str(path))
        assert made.returncode == 0, made.stderr
        assert "written to" in made.stdout
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        assert token.startswith("hwt_")
        again = headwater(cluster, "token", "create", "dave", "--out", str(path))
        assert again.returncode == 2
        assert "--force" in again.stderr
        printed = headwater(cluster, "token", "create", "gw1", "--kind", "gateway")
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.strip().startswith("hwt_")
        # The token alone on stdout (for a pipe), the advice on stderr.
        assert "gateway-gw1" in printed.stderr

        # With the token, from the file and from the environment.
        assert headwater(cluster, "--token-file", str(path), "topic", "list").returncode == 0
        assert headwater(cluster, "topic", "list", token=token).returncode == 0

        rows = json.loads(headwater(cluster, "token", "list", "-O", "json").stdout)
        assert [(r["name"], r["principal"], r["revoked_ms"]) for r in rows] == [
            ("dave", "dave", None), ("gw1", "gateway-gw1", None)]
        listed = headwater(cluster, "token", "list")
        assert listed.stdout.splitlines()[0].split() == [
            "NAME", "KIND", "PRINCIPAL", "ID", "CREATED", "REVOKED"]
        assert token not in listed.stdout

        revoked = headwater(cluster, "token", "revoke", "dave")
        assert revoked.returncode == 0, revoked.stderr
        refused = headwater(cluster, "--token-file", str(path), "topic", "list")
        assert refused.returncode != 0
        assert "unknown or revoked token" in refused.stderr
        assert "Traceback" not in refused.stderr
        twice = headwater(cluster, "token", "revoke", "dave")
        assert twice.returncode != 0
        assert "no live token" in twice.stderr

    await asyncio.to_thread(cli)


async def test_bad_token_input_is_one_line(cluster: LocalCluster, tmp_path: Path) -> None:
    def cli() -> None:
        missing = headwater(cluster, "--token-file", str(tmp_path / "none"), "topic", "list")
        assert missing.returncode != 0
        assert "cannot read it" in missing.stderr
        bad = headwater(cluster, "topic", "list", token="has spaces\tand tabs")
        assert bad.returncode != 0
        assert "HEADWATER_TOKEN: not a token" in bad.stderr
        for out in (missing, bad):
            assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        user = headwater(cluster, "token", "create", "spu-2")
        assert user.returncode == 2
        assert "begin with spu-" in user.stderr
        wrong_id = headwater(cluster, "token", "revoke", "dave", "--id", "xyz")
        assert wrong_id.returncode == 2

    await asyncio.to_thread(cli)
