"""`hsbctl tls init` (hsb.ctl.tls_cmd): names it refuses, a CA it never replaces, keys that are
0600 whatever was there before, pairs replaced only with --force, and every problem a one-line
`error: ...` with a non-zero exit, never a traceback; nothing is written before it is refused."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509

from hsb.ctl import tls_cmd
from hsb.ctl.main import main
from hsb.ctl.tls_cmd import make_ca_and_certs
from tests.support.cli import one_line_error

pytestmark = pytest.mark.timeout(60)


def init(d: Path, *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["tls", "init", "--dir", str(d), *args])
    return res.exit_code, res.stdout, res.stderr


def contents(d: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in sorted(d.iterdir())} if d.exists() else {}


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("ca", "CA's own file name"),
        ("CA", "CA's own file name"),
        ("hôst", "not a DNS name"),
        ("../x", "is a path"),
        ("a/b", "is a path"),
        ("a..b", "is a path"),
        ("-a", "not a DNS name"),
        ("host_a", "not a DNS name"),
        ("x" * 64, "not a DNS name"),
    ],
)
def test_a_name_that_is_not_a_daemons_is_refused_before_anything_is_written(tmp_path: Path, name: str, says: str) -> None:
    d = tmp_path / "ca"
    assert init(d, "--names", "cp")[0] == 0
    before = contents(d)
    one_line_error(*init(d, "--names", f"host-a,{name}"), 2, repr(name), says, "--names")
    assert contents(d) == before  # the CA is still the CA; not even host-a was made


def test_no_name_at_all_is_a_one_line_error(tmp_path: Path) -> None:
    one_line_error(*init(tmp_path / "ca", "--names", " , "), 2, "at least one name")
    assert not (tmp_path / "ca").exists()


def test_dotted_dns_names_are_daemon_names(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    code, out, err = init(d, "--names", "host-a.example.com,T00001")
    assert code == 0, err
    cert = x509.load_pem_x509_certificate((d / "host-a.example.com.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["host-a.example.com"]


def test_a_ca_certificate_without_its_key_is_never_replaced_by_a_new_ca(tmp_path: Path) -> None:
    """The operator kept ca.key off this machine, as the docs say: a new CA over ca.pem would
    make every certificate of the old one untrusted wherever this ca.pem is copied."""
    d = tmp_path / "ca"
    assert init(d, "--names", "cp")[0] == 0
    (d / "ca.key").unlink()
    before = contents(d)
    one_line_error(*init(d, "--names", "host-a"), 1, "ca.pem exists without ca.key: put the CA key back in", "or use a new --dir")
    assert contents(d) == before
    # and the other half: a key without its certificate is not replaced by a new CA either
    (d / "ca.pem").rename(tmp_path / "kept.pem")
    (d / "ca.key").write_bytes(b"the CA key\n")
    before = contents(d)
    one_line_error(*init(d, "--names", "host-a"), 1, "ca.key exists without ca.pem")
    assert contents(d) == before


def test_a_damaged_or_foreign_ca_key_is_a_one_line_error(tmp_path: Path) -> None:
    d, other = tmp_path / "ca", tmp_path / "other"
    assert init(d, "--names", "cp")[0] == 0
    assert init(other, "--names", "cp")[0] == 0
    good_key = (d / "ca.key").read_bytes()
    (d / "ca.key").write_bytes(b"garbage\n")
    before = contents(d)
    one_line_error(*init(d, "--names", "host-a"), 1, f"{d / 'ca.key'} is not a readable PEM private key")
    assert contents(d) == before
    (d / "ca.key").write_bytes((other / "ca.key").read_bytes())  # another CA's key
    one_line_error(*init(d, "--names", "host-a"), 1, f"{d / 'ca.key'} is not the key of {d / 'ca.pem'}")
    (d / "ca.pem").write_bytes(b"not a certificate\n")
    (d / "ca.key").write_bytes(good_key)
    one_line_error(*init(d, "--names", "host-a"), 1, f"{d / 'ca.pem'} is not a PEM certificate")
    assert not (d / "host-a.pem").exists()


def test_an_existing_pair_is_replaced_only_with_force_and_its_key_is_then_0600(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    assert init(d, "--names", "cp,host-a")[0] == 0
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    (d / "host-a.key").chmod(0o644)  # a key someone copied about carelessly
    before = contents(d)
    one_line_error(*init(d, "--names", "host-b,host-a"), 1, "host-a.key, host-a.pem already exist", "--force")
    assert contents(d) == before  # nothing, host-b not either
    code, out, err = init(d, "--names", "host-a", "--force")  # renewal: the same CA, a new pair
    assert code == 0, err
    after = contents(d)
    assert after["host-a.key"][0] != before["host-a.key"][0] and after["host-a.pem"][0] != before["host-a.pem"][0]
    assert (after["ca.pem"], after["ca.key"], after["cp.key"]) == (before["ca.pem"], before["ca.key"], before["cp.key"])
    assert mode(d / "host-a.key") == 0o600 and mode(d / "host-a.pem") == 0o644
    x509.load_pem_x509_certificate((d / "host-a.pem").read_bytes()).verify_directly_issued_by(ca)
    assert sorted(p.name for p in d.iterdir()) == ["ca.key", "ca.pem", "cp.key", "cp.pem", "host-a.key", "host-a.pem"]  # no temporary files


def test_a_new_folder_gets_a_ca_and_keys_readable_by_the_owner_only(tmp_path: Path) -> None:
    d = tmp_path / "new" / "ca"
    code, out, err = init(d, "--names", "cp,hsbctl")
    assert code == 0, err
    assert {p.name: mode(p) for p in d.iterdir()} == {
        "ca.key": 0o600,
        "ca.pem": 0o644,
        "cp.key": 0o600,
        "cp.pem": 0o644,
        "hsbctl.key": 0o600,
        "hsbctl.pem": 0o644,
    }
    assert f"cp: {d / 'cp.pem'} (key {d / 'cp.key'}, mode 600)" in out


def test_a_folder_that_cannot_be_used_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    one_line_error(*init(tmp_path / "file" / "ca", "--names", "cp"), 1, "cannot use", "Not a directory")
    d = tmp_path / "ca"
    assert init(d, "--names", "cp")[0] == 0
    before = contents(d)
    real = tempfile.mkstemp
    calls: list[int] = []

    def mkstemp(*a: Any, **kw: Any) -> tuple[int, str]:
        calls.append(1)
        if len(calls) == 2:  # the first file is staged, the second cannot be
            raise PermissionError(13, "Permission denied")
        return real(*a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    one_line_error(*init(d, "--names", "cp", "--force"), 1, f"cannot write {d / 'cp.pem'}: Permission denied", "or use a new --dir")
    assert contents(d) == before  # neither half of the pair replaced, no temporary file left


def test_the_library_call_renews_from_the_same_ca_as_before(tmp_path: Path) -> None:
    """sandbox up and tests/test_tls.py call make_ca_and_certs again on the same folder to renew."""
    d = tmp_path / "tls"
    make_ca_and_certs(d, ["cp", "hsbctl"])
    ca, cp = (d / "ca.pem").read_bytes(), (d / "cp.pem").read_bytes()
    make_ca_and_certs(d, ["cp", "hsbctl"])
    assert (d / "ca.pem").read_bytes() == ca and (d / "cp.pem").read_bytes() != cp
    with pytest.raises(tls_cmd.TLSInitError, match="already exist"):
        make_ca_and_certs(d, ["cp"], force=False)
    assert os.listdir(d) and all(not n.endswith(".tmp") for n in os.listdir(d))
