"""Test certificates made on the spot (cryptography's x509): a CA and leaves signed by it written
as the PEM files a daemon's [tls] names (make_ca, make_leaf), and any certificate chain in memory
(cert) written out with its key, a passphrase if asked (write). For the TLS tests."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_ca(d: Path, cn: str = "test CA") -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (d / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_leaf(d: Path, ca: tuple[Any, x509.Certificate], cn: str, kind: str, stem: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(ca[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=10))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .sign(ca[0], hashes.SHA256())
    )
    (d / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k = d / f"{stem}.key"
    k.write_bytes(_pem_key(key))
    k.chmod(0o600)


def cert(
    subject: str, issuer: tuple[Any, x509.Certificate] | None, *, ca: bool = False, starts_in: dt.timedelta = dt.timedelta(0)
) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer[1].subject if issuer else name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1) + starts_in)
        .not_valid_after(now + dt.timedelta(days=30) + starts_in)
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return key, b.sign(issuer[0] if issuer else key, hashes.SHA256())


def write(d: Path, stem: str, pair: tuple[Any, x509.Certificate], *chain: x509.Certificate, password: bytes | None = None) -> None:
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (pair[1], *chain))
    (d / f"{stem}.pem").write_bytes(pem)
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    k = d / f"{stem}.key"
    k.write_bytes(pair[0].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    k.chmod(0o600)


def client_context(d: Path, stem: str | None = None, tls12: bool = False) -> ssl.SSLContext:
    """A TLS client trusting `d`/ca.pem (no host name check), with `stem`'s certificate if given,
    at most TLS 1.2 if `tls12`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(d / "ca.pem"))
    if stem is not None:
        ctx.load_cert_chain(d / f"{stem}.pem", d / f"{stem}.key")
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def openssl_error(reason: str) -> ssl.SSLError:
    """An error as OpenSSL gives it, `reason` its name, with no verify_message (nothing said of a
    certificate)."""
    e = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower().replace('_', ' ')}")
    e.reason = reason
    return e
