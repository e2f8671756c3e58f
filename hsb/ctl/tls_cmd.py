"""`hsbctl tls init`: a CA and a certificate for each daemon, for a lab or a small site
(docs/tls.md). The `cryptography` library does the work: EC P-256 keys, each certificate naming
its daemon (subject CN and a DNS subjectAltName), usable as client and server."""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any

import click

from hsb.fsutil import fsync_dir

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_AGAIN = "or use a new --dir"


class TLSInitError(click.ClickException):
    """A problem with --dir or the files in it: one line `error: ...` and exit 1, also when
    `hsbctl sandbox up --tls` meets it (click shows it; nothing has been written by then)."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class TLSNameError(TLSInitError):
    """A name --names cannot make a certificate for: a usage problem, exit 2."""

    exit_code = 2


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a daemon's certificate (its file names in --dir, its DNS
    subjectAltName), or None."""
    if name.lower() == "ca":
        return "is the CA's own file name (ca.pem, ca.key): a certificate of that name would replace the CA"
    if "/" in name or "\\" in name or ".." in name:
        return "is a path, not a name (NAME.pem and NAME.key are written in --dir)"
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return "is not a DNS name (ASCII letters, digits and '-', not first or last; labels of at most 63, joined by '.')"
    return None


def _stage(path: Path, data: bytes, mode: int) -> Path:
    """`data` in a new file next to `path`, created 0600 (then given `mode`) and synced."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise TLSInitError(f"cannot write {path}: {exc.strerror}; check the owner and mode of {path.parent}, {_AGAIN}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
    except OSError as exc:
        os.unlink(tmp)
        raise TLSInitError(f"cannot write {path}: {exc.strerror}; check the space and the owner and mode of {path.parent}, {_AGAIN}") from None
    return Path(tmp)


def _install(d: Path, files: list[tuple[Path, bytes, int]]) -> None:
    """Each (path, data, mode) written whole under a temporary name, then renamed over `path`:
    a key is 0600 from its first byte (an existing file's mode is not kept), and no reader
    ever sees half a file."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            staged.append((_stage(path, data, mode), path))
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise TLSInitError(f"cannot replace {path}: {exc.strerror}; remove it, {_AGAIN}") from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    fsync_dir(d)


def make_ca_and_certs(
    d: Path,
    names: list[str],
    days: int = 825,
    ca_days: int = 3650,
    not_before: dt.datetime | None = None,
    *,
    force: bool = True,
) -> dict[str, Path]:
    """CA and per-name certificate/key files in `d`; {name: cert path} (and "ca").

    A CA already in `d` (ca.pem with ca.key) is reused; half of one is refused. `force=False`
    (`hsbctl tls init` without --force) refuses to replace an existing NAME.pem/NAME.key.
    Every problem is a TLSInitError, raised before anything is written."""
    for name in names:
        problem = name_problem(name)
        if problem:
            raise TLSNameError(f"--names: {name!r} {problem}; use names such as cp,host-a,host-b,hsbctl")
    names = list(dict.fromkeys(names))
    try:
        return _make(d, names, days, ca_days, not_before, force)
    except OSError as exc:  # what the steps above did not name (an unsearchable folder, say)
        where = exc.filename or d
        raise TLSInitError(f"cannot use {where}: {exc.strerror}; check the path and its owner and mode, {_AGAIN}") from None


def _make(d: Path, names: list[str], days: int, ca_days: int, not_before: dt.datetime | None, force: bool) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    pem = serialization.Encoding.PEM
    ca_path, ca_key_path = d / "ca.pem", d / "ca.key"
    files: list[tuple[Path, bytes, int]] = []
    ca_cert: x509.Certificate | None = None
    ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if ca_path.exists() and ca_key_path.exists():  # more certificates from the same CA
        try:
            ca_pem, ca_key_pem = ca_path.read_bytes(), ca_key_path.read_bytes()
        except OSError as exc:
            raise TLSInitError(f"cannot read {exc.filename}: {exc.strerror}; run as a user who can read the CA's files, {_AGAIN}") from None
        try:
            ca_cert = x509.load_pem_x509_certificate(ca_pem)
        except ValueError:
            raise TLSInitError(f"{ca_path} is not a PEM certificate: put the CA's ca.pem back in {d}, {_AGAIN}") from None
        try:
            loaded = serialization.load_pem_private_key(ca_key_pem, password=None)
        except (ValueError, TypeError):
            raise TLSInitError(
                f"{ca_key_path} is not a readable PEM private key (damaged, or protected by a passphrase): "
                f"put the CA key back in {d} without a passphrase, {_AGAIN}"
            ) from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise TLSInitError(f"{ca_key_path} is a {type(loaded).__name__}, not an EC or RSA key: {_AGAIN}")
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if loaded.public_key().public_bytes(*spki) != ca_cert.public_key().public_bytes(*spki):
            raise TLSInitError(f"{ca_key_path} is not the key of {ca_path}: put the CA's own key back in {d}, {_AGAIN}")
        ca_key = loaded
    elif ca_path.exists():  # the CA key kept elsewhere (off the daemons' machines): never a new CA over it
        raise TLSInitError(f"ca.pem exists without ca.key: put the CA key back in {d}, {_AGAIN}")
    elif ca_key_path.exists():
        raise TLSInitError(f"ca.key exists without ca.pem: put the CA certificate back in {d}, {_AGAIN}")
    existing = [p.name for name in names for p in (d / f"{name}.key", d / f"{name}.pem") if os.path.lexists(p)]
    if existing and not force:
        raise TLSInitError(
            f"{', '.join(existing)} already exist in {d}; add --force to replace them (to renew a certificate; the old key is lost), {_AGAIN}"
        )
    if ca_cert is None:
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
        files += [
            (ca_key_path, ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600),
            (ca_path, ca_cert.public_bytes(pem), 0o644),
        ]
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
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        files += [
            (d / f"{name}.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600),
            (d / f"{name}.pem", cert.public_bytes(pem), 0o644),
        ]
        out[name] = d / f"{name}.pem"
    _install(d, files)
    return out


@click.group("tls")
def tls_group() -> None:
    """Certificates for TLS on the links (docs/tls.md)."""


@tls_group.command("init")
@click.option("--dir", "dir_", required=True, type=click.Path(file_okay=False), help="Folder for ca.pem, ca.key and NAME.pem/NAME.key.")
@click.option("--names", default="cp,host-a,host-b,hsbctl", show_default=True, help="Comma-separated daemon names (the names their links claim).")
@click.option("--days", default=825, show_default=True, type=click.IntRange(1, 36500), help="Validity of each certificate.")
@click.option("--force", is_flag=True, help="Replace an existing NAME.pem/NAME.key (renewing a certificate; the old key is lost).")
def tls_init(dir_: str, names: str, days: int, force: bool) -> None:
    """Make a CA (or reuse the one in --dir) and a certificate and key for each name."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise TLSNameError("--names needs at least one name, e.g. --names cp,host-a,host-b,hsbctl")
    made = make_ca_and_certs(Path(dir_), wanted, days=days, force=force)
    for name, path in made.items():
        click.echo(f"{name}: {path}" + ("" if name == "ca" else f" (key {Path(dir_) / (name + '.key')}, mode 600)"))
