"""Edges of `hsbctl tls init` (hsb.ctl.tls_cmd) that tests/test_tls_init.py leaves open: the
DNS limits of a name, what the certificates say (validity, backdating, a CA that signs only
leaves), a CA key of a kind it cannot sign with or behind a passphrase, a dangling link where a
key would go, and a file that cannot be written whole leaving nothing behind."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from hsb.ctl.main import main
from hsb.ctl.tls_cmd import TLSInitError, make_ca_and_certs, name_problem
from tests.support.cli import one_line_error

pytestmark = pytest.mark.timeout(60)


def init(d: Path, *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["tls", "init", "--dir", str(d), *args])
    return res.exit_code, res.stdout, res.stderr


def cert(p: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(p.read_bytes())


def contents(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_a_dns_name_may_have_labels_of_63_and_253_characters_in_all_not_more() -> None:
    assert name_problem("a" * 63) is None
    assert name_problem("a" * 63 + ".b") is None
    assert name_problem("a" * 64) is not None
    longest = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters
    assert len(longest) == 253 and name_problem(longest) is None
    assert name_problem(longest + "a") is not None  # 254


def test_a_name_with_a_backslash_is_refused(tmp_path: Path) -> None:
    one_line_error(*init(tmp_path / "ca", "--names", "a\\b"), 2, "'a\\\\b'", "--names")
    assert not (tmp_path / "ca").exists()


def test_the_validity_of_the_ca_and_of_each_certificate(tmp_path: Path) -> None:
    start = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    make_ca_and_certs(tmp_path, ["cp"], days=10, ca_days=100, not_before=start)
    ca, cp = cert(tmp_path / "ca.pem"), cert(tmp_path / "cp.pem")
    assert ca.not_valid_before_utc == start and ca.not_valid_after_utc == start + dt.timedelta(days=100)
    assert cp.not_valid_before_utc == start and cp.not_valid_after_utc == start + dt.timedelta(days=10)


def test_certificates_are_backdated_five_minutes_for_clocks_a_little_behind(tmp_path: Path) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    code, _, err = init(tmp_path, "--names", "cp", "--days", "7")
    after = dt.datetime.now(dt.UTC)
    assert code == 0, err
    cp = cert(tmp_path / "cp.pem")
    assert before - dt.timedelta(minutes=5) <= cp.not_valid_before_utc <= after - dt.timedelta(minutes=5)
    assert cp.not_valid_after_utc - cp.not_valid_before_utc == dt.timedelta(days=7)


def test_the_ca_signs_daemon_certificates_only_never_another_ca(tmp_path: Path) -> None:
    make_ca_and_certs(tmp_path, ["cp"])
    bc = cert(tmp_path / "ca.pem").extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    leaf = cert(tmp_path / "cp.pem").extensions.get_extension_for_class(x509.BasicConstraints)
    assert leaf.critical and not leaf.value.ca


def _write_ca(d: Path, key: Any, cert_key: Any = None) -> None:
    """A self-signed CA of `key` in `d` (ca.pem, ca.key without a passphrase unless given)."""
    d.mkdir(parents=True, exist_ok=True)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone's CA")])
    now = dt.datetime.now(dt.UTC)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, algorithm)
    )
    (d / "ca.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    enc = cert_key or serialization.NoEncryption()
    (d / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))


def test_a_ca_key_that_is_neither_ec_nor_rsa_is_a_one_line_error(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    _write_ca(d, ed25519.Ed25519PrivateKey.generate())
    before = contents(d)
    one_line_error(*init(d, "--names", "cp"), 1, "is a Ed25519PrivateKey, not an EC or RSA key")
    assert contents(d) == before


def test_a_ca_key_behind_a_passphrase_is_a_one_line_error(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    _write_ca(d, ec.generate_private_key(ec.SECP256R1()), serialization.BestAvailableEncryption(b"secret"))
    before = contents(d)
    one_line_error(*init(d, "--names", "cp"), 1, "is not a readable PEM private key", "without a passphrase")
    assert contents(d) == before


def test_a_dangling_link_where_a_key_goes_is_an_existing_file(tmp_path: Path) -> None:
    """The link may name the key on storage not mounted now: replaced only with --force."""
    d = tmp_path / "ca"
    assert init(d, "--names", "cp")[0] == 0
    (d / "host-a.key").symlink_to(tmp_path / "elsewhere" / "host-a.key")
    one_line_error(*init(d, "--names", "host-a"), 1, "host-a.key already exist", "--force")
    assert (d / "host-a.key").is_symlink() and not (d / "host-a.pem").exists()


def test_a_file_that_cannot_be_written_whole_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "ca"
    assert init(d, "--names", "cp")[0] == 0
    before = contents(d)
    real = os.fsync
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the first file is staged, the second fills the disk
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(TLSInitError, match=f"cannot write {d / 'cp.pem'}: No space left on device"):
        make_ca_and_certs(d, ["cp"])
    assert contents(d) == before  # no temporary file of either half, nothing replaced
