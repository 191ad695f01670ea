"""``headwater tls``: a CA for a deployment and the certificates of its nodes and users.

Built on the ``cryptography`` package (``pip install 'headwater[tls]'``), run where
the CA key is kept (an operator's machine, not every Pi). Keys are EC P-256, kept
in PEM files of mode 0600. What a certificate names decides who it is:

====================  ===============================  =================  ==========
kind                  subject CN, DNS names            key usage          default
====================  ===============================  =================  ==========
``sc``                ``sc``; ``--host`` names         server and client  825 days
``spu --id N``        ``spu-N``; ``spu-N.headwater``   server and client  825 days
                      and ``--host`` names
``gateway NAME``      ``gateway-NAME``                 client             825 days
``site NAME``         ``site-NAME``                    client             825 days
``user NAME``         ``NAME``                         client             365 days
====================  ===============================  =================  ==========

The private ports accept an SPU only with a certificate naming its id
(``spu-N``), so one SPU's certificate cannot speak for another.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import typer

from edge.acl import PRINCIPAL_KINDS, principal_name
from edge.cli.common import complete_from, fail

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

tls_app = typer.Typer(help="A CA for a deployment and certificates for its nodes and users "
                      "(needs: pip install 'headwater[tls]').", no_args_is_help=True)

KINDS: Final = PRINCIPAL_KINDS
CA_DAYS: Final = 3650
NODE_DAYS: Final = 825
USER_DAYS: Final = 365


def _crypto() -> Any:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        fail("headwater tls needs the cryptography package: pip install 'headwater[tls]'", 2)
    from cryptography import x509

    return x509


def _write_private(path: Path, data: bytes) -> None:
    """A key file only its owner may read, written whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _key_pem(key: EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common: str, org: str | None = None) -> x509.Name:
    _crypto()
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _refuse_overwrite(*paths: Path, force: bool, why: str = "") -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        fail(f"{' and '.join(existing)} exist already; pass --force to replace them{why}", 2)


@tls_app.command("init")
def tls_init(
    directory: Path = typer.Option(Path("pki"), "--dir", help="Where ca.crt and ca.key go."),
    name: str = typer.Option("Headwater CA", "--name", help="The CA's common name."),
    days: int = typer.Option(CA_DAYS, "--days", min=1, max=36500, help="Lifetime."),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA."),
) -> None:
    """Make a CA for one deployment: ca.crt (give it to every node and client) and
    ca.key (keep it off the nodes)."""
    x509 = _crypto()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    _refuse_overwrite(cert_path, key_path, force=force,
                      why=" (a new CA invalidates every certificate the old one signed)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(name)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(_cert_pem(cert))
    typer.echo(f"CA {name!r} valid {days} days: {cert_path} (public), {key_path} (secret)")
    typer.echo(f"Next: headwater tls issue --dir {directory} --kind sc --host sc.example")


def _subject(kind: str, name: str | None, spu_id: int | None) -> tuple[str, list[str]]:
    """The common name and the DNS names a certificate of ``kind`` carries."""
    if kind == "spu":
        if spu_id is None:
            fail("--kind spu needs --id N (the SPU's id)", 2)
        if not 0 <= spu_id < 2**31:
            fail(f"--id {spu_id}: SPU ids are 0..{2**31 - 1}", 2)
        return f"spu-{spu_id}", [f"spu-{spu_id}.headwater"]
    if kind == "sc":
        return "sc", []
    if not name:
        fail(f"--kind {kind} needs a NAME (e.g. headwater tls issue --kind {kind} kitchen)", 2)
    try:
        return principal_name(kind, name), []
    except ValueError as exc:
        fail(str(exc), 2)


def _sans(dns: list[str], hosts: list[str]) -> list[Any]:
    x509 = _crypto()
    out: list[Any] = []
    for host in [*dns, *hosts]:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


@tls_app.command("issue")
def tls_issue(
    name: str | None = typer.Argument(None, help="Site, gateway or user name (for those "
                                      "kinds)."),
    kind: str = typer.Option(..., "--kind", help="sc, spu, gateway, site or user.",
                             autocompletion=complete_from(*KINDS)),
    spu_id: int | None = typer.Option(None, "--id", help="The SPU's id (--kind spu)."),
    hosts: list[str] | None = typer.Option(None, "--host", help="A name or address the node "
                                           "is reached by (repeat); servers need them."),
    directory: Path = typer.Option(Path("pki"), "--dir", help="The CA's directory (tls "
                                   "init); the certificate and key are written there."),
    days: int | None = typer.Option(None, "--days", min=1, max=3650, help="Lifetime "
                                    "(default 825 days, users 365)."),
    force: bool = typer.Option(False, "--force", help="Replace existing files of that name."),
) -> None:
    """Issue a certificate and key signed by the CA of --dir."""
    if kind not in KINDS:
        fail(f"--kind {kind}: one of {', '.join(KINDS)}", 2)
    x509 = _crypto()
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as exc:
        fail(f"cannot load the CA from {directory} ({exc}); make one with: headwater tls "
             f"init --dir {directory}", 2)
    common, dns = _subject(kind, name, spu_id)
    server = kind in ("sc", "spu")
    if server and not hosts:
        typer.echo(f"note: no --host given; clients must then use --tls-server-name "
                   f"{dns[0] if dns else common}", err=True)
    lifetime = days or (USER_DAYS if kind == "user" else NODE_DAYS)
    cert_path, key_path = directory / f"{common}.crt", directory / f"{common}.key"
    _refuse_overwrite(cert_path, key_path, force=force)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH]
                                                  if server else [])
    builder = (x509.CertificateBuilder().subject_name(_name(common, kind))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=lifetime))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    sans = _sans(dns, [*(hosts or []), *([common] if server else [])])
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(_cert_pem(cert))
    typer.echo(f"{kind} certificate {common!r} valid {lifetime} days: {cert_path}, "
               f"{key_path} (secret)")


@tls_app.command("show")
def tls_show(path: Path = typer.Argument(..., help="A PEM certificate.")) -> None:
    """Subject, names, issuer and days left of a certificate."""
    x509 = _crypto()
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        fail(f"{path}: not a PEM certificate ({exc})", 2)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = ", ".join(str(getattr(n, "value", n)) for n in names)
    except x509.ExtensionNotFound:
        sans = "-"
    left = (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days
    typer.echo(f"subject   {cert.subject.rfc4514_string()}")
    typer.echo(f"names     {sans}")
    typer.echo(f"issuer    {cert.issuer.rfc4514_string()}")
    typer.echo(f"expires   {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC ({left} days left)")
    if left < 30:
        typer.echo("renew it: headwater tls issue ... --force, then copy it in place "
                   "(daemons reload it without a restart)", err=True)
