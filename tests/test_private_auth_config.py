"""Private ports are authenticated by default: the secret file, the opt-out, the CLI."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from support import make_pki

from edge.config import ConfigError
from edge.sc.config import ScConfig
from edge.secret import ClusterSecret
from edge.spu.config import SpuConfig
from edge.tls import server_context, spu_ids_named, tls_from


def secret_file(path: Path, text: str = "s" * 40, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_config_without_a_secret_is_refused(tmp_path: Path) -> None:
    for build in (lambda: ScConfig(data_dir=tmp_path),
                  lambda: SpuConfig(id=1, data_dir=tmp_path)):
        with pytest.raises(ConfigError, match="private ports need authentication"):
            build()


def test_the_secret_file_and_the_explicit_opt_out(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "cluster.secret", "  " + "k" * 64 + "\n")
    cfg = SpuConfig.from_dict({"id": 2, "data_dir": str(tmp_path),
                               "cluster_secret_file": str(path)})
    assert cfg.private_auth.secret is not None
    assert cfg.private_auth.secret.value == b"k" * 64
    assert "kkkk" not in repr(cfg)
    insecure = ScConfig.from_dict({"data_dir": str(tmp_path), "insecure_private": True})
    assert insecure.private_auth.insecure
    with pytest.raises(ConfigError, match="exclude each other"):
        ScConfig.from_dict({"data_dir": str(tmp_path), "insecure_private": True,
                            "cluster_secret_file": str(path)})


@pytest.mark.parametrize(("text", "mode", "message"), [
    ("short", 0o600, "at least 32"),
    ("s" * 40, 0o644, "readable by other users"),
    ("s" * 5000, 0o600, "longer than 4096"),
])
def test_a_bad_secret_file_is_refused_with_the_reason(
        tmp_path: Path, text: str, mode: int, message: str) -> None:
    path = secret_file(tmp_path / "s", text, mode)
    with pytest.raises(ConfigError, match=message):
        ScConfig.from_dict({"data_dir": str(tmp_path), "cluster_secret_file": str(path)})
    with pytest.raises(ConfigError, match="No such file"):
        ScConfig.from_dict({"data_dir": str(tmp_path),
                            "cluster_secret_file": str(tmp_path / "missing")})


def test_ensure_creates_a_private_random_secret_once(tmp_path: Path) -> None:
    first = ClusterSecret.ensure(tmp_path / "d" / "cluster.secret")
    assert (tmp_path / "d" / "cluster.secret").stat().st_mode & 0o777 == 0o600
    assert len(first.value) == 64
    assert ClusterSecret.ensure(tmp_path / "d" / "cluster.secret") == first
    assert ClusterSecret.ensure(tmp_path / "e" / "cluster.secret").value != first.value


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge.cli.main", "run", *args,
                               "--data-dir", str(tmp_path), "--check-config"],
                              check=False, capture_output=True, text=True, timeout=60)

    bare = check("sc")
    assert bare.returncode == 2
    assert len(bare.stderr.strip().splitlines()) == 1
    assert "--cluster-secret" in bare.stderr
    loose = secret_file(tmp_path / "loose", mode=0o644)
    refused = check("spu", "--cluster-secret", str(loose))
    assert refused.returncode == 2
    assert "readable by other users" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    good = secret_file(tmp_path / "good")
    assert check("spu", "--cluster-secret", str(good)).returncode == 0
    assert check("sc", "--insecure-private").returncode == 0


@pytest.mark.parametrize(("cert", "ids"), [
    ({"subject": ((("commonName", "spu-3"),),)}, {3}),
    ({"subject": ((("commonName", "controller"),),),
      "subjectAltName": (("DNS", "spu-12.headwater"), ("IP Address", "127.0.0.1"))}, {12}),
    ({"subject": ((("commonName", "spu-03"),),),
      "subjectAltName": (("DNS", "spu-3x.headwater"), ("DNS", "myspu-4"))}, set()),
    ({}, set()),
    (None, set()),
    # Issued for another kind of principal (headwater tls issue puts it in O).
    ({"subject": ((("commonName", "spu-3"),), (("organizationName", "user"),))}, set()),
    ({"subject": ((("commonName", "spu-3"),), (("organizationName", "spu"),))}, {3}),
])
def test_certificate_names_of_spus(cert: dict[str, object] | None, ids: set[int]) -> None:
    assert spu_ids_named(cert) == ids


@pytest.mark.parametrize(("value", "mode"), [
    (True, ssl.CERT_REQUIRED), ("optional", ssl.CERT_OPTIONAL), (False, ssl.CERT_NONE)])
def test_verify_client_true_optional_or_false(tmp_path: Path, value: object,
                                             mode: ssl.VerifyMode) -> None:
    pki = make_pki(tmp_path, names=("server",))
    cfg = tls_from({"tls": {"cert": pki["server"][0], "key": pki["server"][1],
                            "ca": pki["ca"][0], "verify_client": value}})
    assert cfg is not None
    assert server_context(cfg).verify_mode == mode


def test_verify_client_of_another_value_is_refused() -> None:
    with pytest.raises(ConfigError, match='true, false or "optional"'):
        tls_from({"tls": {"verify_client": "yes"}})
