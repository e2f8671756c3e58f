"""`hsbctl tls init`: a CA and a certificate for each daemon, for a lab or a small site
(docs/tls.md). The `cryptography` library does the work: EC P-256 keys, each certificate naming
its daemon (subject CN and a DNS subjectAltName), usable as client and server."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_ca_and_certs(d: Path, names: list[str], days: int = 825, ca_days: int = 3650, not_before: dt.datetime | None = None) -> dict[str, Path]:
    """CA and per-name certificate/key files in `d`; {name: cert path} (and "ca")."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    pem = serialization.Encoding.PEM
    ca_path, ca_key_path = d / "ca.pem", d / "ca.key"
    if ca_path.exists() and ca_key_path.exists():  # more certificates from the same CA
        ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        # a name of its own: two hsb CAs side by side in one ca_file (a CA change) must not collide
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hsb CA {now:%Y-%m-%d} {x509.random_serial_number() % 10**8:08d}")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=ca_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca_key_path, ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), True)
        _write(ca_path, ca_cert.public_bytes(pem), False)
    out = {"ca": ca_path}
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)  # type: ignore[arg-type]
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        _write(d / f"{name}.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), True)
        _write(d / f"{name}.pem", cert.public_bytes(pem), False)
        out[name] = d / f"{name}.pem"
    return out


@click.group("tls")
def tls_group() -> None:
    """Certificates for TLS on the links (docs/tls.md)."""


@tls_group.command("init")
@click.option("--dir", "dir_", required=True, type=click.Path(file_okay=False), help="Folder for ca.pem, ca.key and NAME.pem/NAME.key.")
@click.option("--names", default="cp,host-a,host-b,hsbctl", show_default=True, help="Comma-separated daemon names (the names their links claim).")
@click.option("--days", default=825, show_default=True, type=click.IntRange(1, 36500), help="Validity of each certificate.")
def tls_init(dir_: str, names: str, days: int) -> None:
    """Make a CA (or reuse the one in --dir) and a certificate and key for each name."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise click.UsageError("--names needs at least one name")
    made = make_ca_and_certs(Path(dir_), wanted, days=days)
    for name, path in made.items():
        click.echo(f"{name}: {path}" + ("" if name == "ca" else f" (key {Path(dir_) / (name + '.key')}, mode 600)"))
