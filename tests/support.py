"""Helpers shared by the tests (importable as ``support``)."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip when a system part is missing — except in CI, where that is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI requires it: {reason}")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path


def require_root() -> None:
    require(os.geteuid() == 0, "needs root")


def make_pki(directory: os.PathLike[str] | str, *, names: tuple[str, ...] = ("server",
             "client", "intruder")) -> dict[str, tuple[str, str]]:
    """A throwaway CA plus certificates (``openssl``): ``{"ca": (cert, key), name: ...}``.

    Every certificate is valid for 127.0.0.1 and localhost; one named ``spu-N``
    names SPU N only in its SAN ``spu-N.headwater`` (what the private ports check);
    ``intruder`` is signed by a second, untrusted CA.
    """
    import subprocess
    from pathlib import Path

    openssl = require_binary("openssl")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    def ca(name: str) -> tuple[str, str]:
        cert, key = d / f"{name}.pem", d / f"{name}.key"
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out",
            str(cert))
        return str(cert), str(key)

    out = {"ca": ca("ca"), "rogue-ca": ca("rogue-ca")}
    for name in names:
        issuer = out["rogue-ca"] if name == "intruder" else out["ca"]
        key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
        ext = d / f"{name}.ext"
        spu_name = f",DNS:{name}.headwater" if name.startswith("spu-") else ""
        ext.write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost{spu_name}\n")
        # An SPU's common name is not its id: the SAN must carry it.
        cn = f"{name}.headwater" if spu_name else name
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(csr))
        run("x509", "-req", "-in", str(csr), "-CA", issuer[0], "-CAkey", issuer[1],
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
        out[name] = (str(cert), str(key))
    return out
