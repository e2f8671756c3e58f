"""Tests from a mutation audit of hsb/wire/tls.py, tlsio.py and conn_tls.py: each pins a behaviour
that a single-point change of one of those modules broke while every other TLS test still passed
(docs/tls.md). The files' checks: a key readable by its group, a key file missing or a folder
(one line each, nothing more), a file this user cannot read, a certificate expired an hour ago, a
leaf not valid yet ahead of its intermediate; the contexts: the host and admin listener requires
a client certificate, the terminal listener asks for one and checks it; what a reload changes (the
bytes kept, the expiry, the time of the load) and what `status()` says; the kept bytes loading
when the key file is gone, or refused (not a traceback) when they are not bytes; a key readable by
others refused when the contexts are made, the error naming the file given, not the private copy;
the names of a certificate (its CN and its DNS names); `reload_tls`'s verdict; the words for a
refusal OpenSSL names nothing, and no first byte known not taken for plaintext. In a connection:
a TLS client refused by a link that answers plaintext clients in plaintext gets the TLS alert; a
handshake queued for its turn is not run on a link closed meanwhile; frames riding with the
handshake's end are not taken by a link that on_open closed."""

from __future__ import annotations

import datetime as dt
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsb.wire import conn as connmod
from hsb.wire import handshakes as handshakes_mod
from hsb.wire import tls as tlsmod
from hsb.wire import tlsio
from hsb.wire.framing import encode
from hsb.wire.tls import TLS, TLSError, TLSFiles, check_files
from tests import test_tls_edges as edges
from tests.support.certs import cert, client_context, make_ca, make_leaf, name, write
from tests.support.logrec import RecordingLog
from tests.test_tls_edges import Asking, BioClient, Echo, connect, feed

pytestmark = pytest.mark.timeout(30)


def files(d: Path, stem: str = "cp") -> TLSFiles:
    return TLSFiles(str(d / "ca.pem"), str(d / f"{stem}.pem"), str(d / f"{stem}.key"))


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLError | None]:
    """A handshake on memory BIOs: the server's side, and its error if it refused the client."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    c = client_ctx.wrap_bio(c_in, c_out)
    for _ in range(6):
        try:
            c.do_handshake()
        except ssl.SSLWantReadError:
            pass
        s_in.write(c_out.read())
        try:
            s.do_handshake()
            return s, None
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            return s, exc
        c_in.write(s_out.read())
    raise AssertionError("the handshake did not end")


# -- the files' checks --------------------------------------------------------------------------


def test_a_key_readable_by_its_group_only_is_refused(tmp_path: Path) -> None:
    """Group access alone (mode 640) is access by others than the daemon's user."""
    make_leaf(tmp_path, make_ca(tmp_path), "cp", "ec", "cp")
    (tmp_path / "cp.key").chmod(0o640)
    key = tmp_path / "cp.key"
    assert check_files(files(tmp_path)) == [f"tls.key_file: {key} is accessible by group or others (mode 640); run 'chmod 600 {key}'"]


def test_a_missing_key_is_one_line_not_also_a_failed_pair_load(tmp_path: Path) -> None:
    """The certificate and key are loaded together only when both can be read: a missing key is
    said once, on its own line, with what waits for it."""
    make_leaf(tmp_path, make_ca(tmp_path), "cp", "ec", "cp")
    (tmp_path / "cp.key").unlink()
    errors = check_files(files(tmp_path))
    assert len(errors) == 1 and errors[0].startswith(f"tls.key_file: {tmp_path / 'cp.key'} does not exist"), errors
    assert f"whether it goes with {tmp_path / 'cp.pem'} is checked" in errors[0], errors


def test_a_folder_given_as_the_key_is_not_a_regular_file_and_has_no_mode_to_fix(tmp_path: Path) -> None:
    """A folder's mode (755) is not a key's: only the 'not a regular file' line, no chmod."""
    make_leaf(tmp_path, make_ca(tmp_path), "cp", "ec", "cp")
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o755)
    f = files(tmp_path)
    f.key_file = str(folder)
    errors = check_files(f)
    assert len(errors) == 1 and errors[0].startswith(f"tls.key_file: {folder} is not a regular file"), errors


def test_a_file_this_user_cannot_read_is_said_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(The tests run as root, which reads everything: os.access is made to say no for the CA.)"""
    make_leaf(tmp_path, make_ca(tmp_path), "cp", "ec", "cp")
    ca = str(tmp_path / "ca.pem")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **kw: False if str(p) == ca else real(p, mode, *a, **kw))
    errors = check_files(files(tmp_path))
    assert len(errors) == 1 and errors[0].startswith(f"tls.ca_file: {ca} cannot be read by this user (permission denied)"), errors


def test_a_certificate_expired_an_hour_ago_is_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    write(tmp_path, "cp", cert("cp", ca, starts_in=-dt.timedelta(days=30, hours=1)))
    errors = check_files(files(tmp_path))
    assert len(errors) == 1 and errors[0].startswith(f"tls.cert_file: {tmp_path / 'cp.pem'} expired 1 hour ago;"), errors


def test_a_leaf_not_valid_yet_ahead_of_its_intermediate_is_refused(tmp_path: Path) -> None:
    """The dates checked are the leaf's (the first certificate of cert_file), not the last's."""
    root = cert("root CA", None, ca=True)
    (tmp_path / "ca.pem").write_bytes(root[1].public_bytes(serialization.Encoding.PEM))
    mid = cert("intermediate CA", root, ca=True)
    write(tmp_path, "cp", cert("cp", mid, starts_in=dt.timedelta(days=3)), mid[1])
    errors = check_files(files(tmp_path))
    assert len(errors) == 1 and "is not valid until" in errors[0], errors


# -- the contexts -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem; cp (the daemon); host-a, T1 (clients of that CA); stranger (of another CA)."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    for n in ("cp", "host-a", "T1"):
        make_leaf(d, ca, n, "ec", n)
    write(d, "stranger", cert("stranger", cert("other CA", None, ca=True)))
    return d


def test_the_host_and_admin_listener_requires_a_client_certificate(pki: Path) -> None:
    t = TLS(files(pki))
    _, err = handshake(t.server, client_context(pki))
    assert err is not None and "CERTIFICATE" in str(err.reason), err
    s, err = handshake(t.server, client_context(pki, "host-a"))
    assert err is None and s.getpeercert(binary_form=True)


def test_the_terminal_listener_asks_for_a_certificate_and_checks_it(pki: Path) -> None:
    """Optional, but asked for: a terminal's certificate reaches the link (its name is checked
    there), and one of another CA is refused; a terminal without one is let in."""
    t = TLS(files(pki), terminals=True)
    s, err = handshake(t.terminal_server, client_context(pki, "T1"))
    assert err is None and tlsmod.names_der(s.getpeercert(binary_form=True) or b"") == {"T1"}
    _, err = handshake(t.terminal_server, client_context(pki, "stranger"))
    assert err is not None and err.verify_message, err  # type: ignore[attr-defined]
    s, err = handshake(t.terminal_server, client_context(pki))
    assert err is None and not s.getpeercert(binary_form=True)


# -- a reload, status, the kept bytes ---------------------------------------------------------


def test_a_reload_keeps_the_new_bytes_expiry_and_time_and_status_says_them(tmp_path: Path) -> None:
    """After a reload, what a worker forked again gets (`pem`), the expiry and the time of the
    load are the new files'; status() gives the days left in days and the terminal setting."""
    ca = make_ca(tmp_path)
    write(tmp_path, "cp", cert("cp", ca))  # 30 days left
    t = TLS(files(tmp_path), terminals=True)
    before, at = t.not_after, t.loaded_at
    st = t.status()
    assert st["terminals"] is True and 29 < st["days_left"] <= 30, st
    assert TLS(files(tmp_path)).status()["terminals"] is False
    kept = t.pem
    write(tmp_path, "cp", cert("cp", ca, starts_in=dt.timedelta(days=5)))  # not valid yet: refused
    assert t.reload() != [] and t.pem == kept and t.not_after == before and t.loaded_at == at
    write(tmp_path, "cp", cert("cp", ca, starts_in=dt.timedelta(hours=1)))
    new = (tmp_path / "cp.pem").read_bytes()
    assert t.reload() == []
    assert t.pem["cert_file"] == new
    assert t.not_after is not None and before is not None and t.not_after > before
    assert t.status()["not_after"] == t.not_after.isoformat()
    assert t.loaded_at > at and t.status()["loaded_at"] == t.loaded_at.isoformat()


def test_the_kept_bytes_load_when_the_key_file_is_gone(tmp_path: Path) -> None:
    """A worker forked again while a renewal is half done (the key file removed) serves on the
    bytes kept: the key file's mode is checked only when the file itself is read."""
    make_leaf(tmp_path, make_ca(tmp_path), "cp", "ec", "cp")
    t = TLS(files(tmp_path))
    (tmp_path / "cp.key").unlink()
    assert TLS(files(tmp_path), pem=t.pem).names == ["cp"]


def test_kept_bytes_that_are_not_bytes_are_a_tls_error(tmp_path: Path) -> None:
    make_leaf(tmp_path, make_ca(tmp_path), "cp", "ec", "cp")
    pem: dict[str, Any] = dict(TLS(files(tmp_path)).pem)
    pem["cert_file"] = pem["cert_file"].decode()  # (what msgpack gives back is checked, not trusted)
    with pytest.raises(TLSError, match="have no cert_file"):
        TLS(files(tmp_path), pem=pem)


def test_a_key_readable_by_others_is_refused_by_the_load_naming_the_file_given(tmp_path: Path) -> None:
    """The load checks the private copies of the files: the copy of the key has its mode, and
    the problems name the files given, never the copies."""
    make_leaf(tmp_path, make_ca(tmp_path), "cp", "ec", "cp")
    key = tmp_path / "cp.key"
    key.chmod(0o644)
    with pytest.raises(TLSError) as err:
        TLS(files(tmp_path))
    assert str(err.value) == f"tls.key_file: {key} is accessible by group or others (mode 644); run 'chmod 600 {key}'"


def test_reload_tls_says_whether_the_new_files_are_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """True only when they are; a reload that raised is a failed reload (logged), not a crash."""
    make_leaf(tmp_path, make_ca(tmp_path), "cp", "ec", "cp")
    t = TLS(files(tmp_path))
    assert tlsmod.reload_tls(None) is False
    assert tlsmod.reload_tls(t) is True
    (tmp_path / "cp.pem").write_text("not a certificate\n")
    assert tlsmod.reload_tls(t) is False

    def boom() -> list[str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(t, "reload", boom)
    assert tlsmod.reload_tls(t) is False


# -- names ------------------------------------------------------------------------------------


def _named(d: Path, cn: str | None, dns: list[str]) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name(cn) if cn else x509.Name([]))
        .issuer_name(name("some CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False)
    p = d / f"{cn}-{'-'.join(dns)}.pem"
    p.write_bytes(b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return str(p)


def test_a_certificates_names_are_its_common_name_and_its_dns_names(tmp_path: Path) -> None:
    assert tlsmod.file_names(_named(tmp_path, "host-a", [])) == {"host-a"}
    assert tlsmod.file_names(_named(tmp_path, "cp", ["cp.example", "cp-2"])) == {"cp", "cp.example", "cp-2"}
    assert tlsmod.file_names(_named(tmp_path, None, ["T1"])) == {"T1"}


# -- the words for a refusal ------------------------------------------------------------------


def test_a_refusal_with_no_reason_name_and_unknown_words_is_said_in_those_words() -> None:
    """OpenSSL's error without a reason name that no table knows: its own words, not "None"."""
    e = ssl.SSLError(1, "something new went wrong")
    e.reason = None  # type: ignore[assignment]  # (typeshed says str; OpenSSL leaves it None)
    said = tlsio._reason(e, tlsio.TLS_HANDSHAKE)
    assert "something new went wrong" in said and "None" not in said, said


def test_without_a_first_byte_only_openssls_words_say_not_tls() -> None:
    """No first byte known is not a first byte that opens no handshake."""
    e = ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    e.reason = "CERTIFICATE_VERIFY_FAILED"
    assert not tlsio._not_tls(e, None)
    assert tlsio._not_tls(e, ord("{"))


# -- in a connection (FramedProtocol on a stand-in transport, the client on memory BIOs) --------


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> RecordingLog:
    rec = RecordingLog()
    monkeypatch.setattr(connmod, "log", rec)
    return rec


async def test_a_refused_certificate_on_a_link_that_answers_plaintext_gets_the_alert(pki: Path, logs: RecordingLog) -> None:
    """The plaintext answer is for a client that spoke plaintext only: a TLS client whose
    certificate is refused reads a TLS alert, not bytes its TLS cannot take."""
    p = Asking(tls=edges.server_ctx(pki, ssl.CERT_REQUIRED))
    tr = connect(p)
    c = BioClient(client_context(pki, "stranger"))
    await feed(p, c.step())
    await feed(p, c.step(tr.take()))
    assert tr.how == "close" and p.closed_here
    sent = tr.take()
    assert sent and sent != encode(Asking.REFUSAL)
    with pytest.raises(ssl.SSLError) as seen:
        c.recv(sent)
    assert "ALERT" in str(seen.value.reason), seen.value
    assert [e["reason"] for e in logs.events("tls_refused")][0].startswith("its certificate does not chain to our CA")


async def test_a_queued_handshake_of_a_link_closed_meanwhile_is_not_run_at_its_turn(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed while its handshake waited for its turn (a shutdown): at the turn nothing is
    answered on it and it is not read again."""
    monkeypatch.setattr(handshakes_mod, "TURN_S", -1.0)  # no step runs inline: each waits its turn
    p = Echo(tls=edges.server_ctx(pki))
    tr = connect(p)
    p.data_received(BioClient(client_context(pki)).step())
    assert p._tls_waiting
    p.close()
    tr.take()
    p.tls_turn()  # (what the queue calls at its turn: called here, not waited for)
    assert tr.take() == b"" and tr.resumed == 0
    assert p._tls is not None and not p._tls.done


class ClosingAtOpen(Echo):
    """A link refused as it opens (as a listener full of connections does)."""

    def on_open(self) -> None:
        super().on_open()
        self.close()


async def test_frames_riding_with_the_handshakes_end_are_not_taken_once_the_link_closed_at_open(pki: Path) -> None:
    """The client's first frames in the same read as its last handshake flight: the link closed
    by on_open takes none of them (not decoded, not queued, no idle timer armed for them)."""
    p = ClosingAtOpen(tls=edges.server_ctx(pki))
    tr = connect(p)
    c = BioClient(client_context(pki))
    await feed(p, c.step())
    last = c.step(tr.take())
    assert c.done
    await feed(p, last + c.send({"t": "hello", "n": 1}))
    assert p.opened == 1 and p.closed
    assert not p._backlog and p.decoder.feed(b"") == []
