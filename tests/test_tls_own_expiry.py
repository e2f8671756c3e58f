"""A daemon's own certificate expiring while it runs (operations.md §19, "When a certificate
expires"), and what each side then says:

- the daemon, whose client (hsbd, hsbctl) gives up during the handshake without a word, logs
  `tls_refused` saying that **its own** certificate expired and how long ago, with the fix: it
  knows its certificate's expiry, and "another CA?" sent the operator to the wrong file;
- a certificate that does not name the daemon (another's pair copied in at a renewal) is
  logged at the start and as a warning at the reload that loads it (only --check-config said);
- hsbctl, which refused the daemon's certificate itself and so knows why, says which side is
  wrong and the fix (expired: renew and SIGHUP; another CA: the ca_files), instead of a list of
  three possible causes.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
import structlog

from hsb.ctl.gather import why_not
from hsb.ctl.tls_cmd import make_ca_and_certs
from hsb.wire.tls import TLS, TLSFiles, log_misnamed, own_expired, reload_tls
from tests.support.certs import cert, client_context, write
from tests.support.logrec import RecordingLog
from tests.support.procs import until
from tests.test_tls_edges import BioClient, Echo, connect, logs, refusals

pytestmark = pytest.mark.timeout(60)

__all__ = ["logs"]  # (the fixture, used by name)

LIFE_S = 2.0  # the seconds the short-lived certificate has left when it is made


def short_lived(d: Path) -> TLS:
    """hsbcpd's TLS loaded from a certificate of `hsbctl tls init`'s kind that expires
    LIFE_S seconds after it is made (a reload takes it: it has not expired yet)."""
    starts = dt.datetime.now(dt.UTC) - dt.timedelta(days=1) + dt.timedelta(seconds=LIFE_S)
    make_ca_and_certs(d, ["cp", "hsbctl"], days=1, not_before=starts)
    t = TLS(TLSFiles(str(d / "ca.pem"), str(d / "cp.pem"), str(d / "cp.key")))
    assert t.not_after is not None and own_expired(t.server) == ""
    return t


async def expired(t: TLS) -> None:
    na = t.not_after
    assert na is not None
    await until(lambda: dt.datetime.now(dt.UTC) > na + dt.timedelta(seconds=0.2), timeout=LIFE_S + 10, what="the certificate's expiry")


def gives_up(p: Echo, c: BioClient) -> ssl.SSLCertVerificationError:
    """The client's handshake with `p` until the client refuses the server's certificate; then it
    closes without sending its alert, as hsbd and hsbctl do (asyncio's TLS)."""
    tr = connect(p)
    p.data_received(c.step())  # its ClientHello
    with pytest.raises(ssl.SSLCertVerificationError) as exc:
        c.step(tr.take())
    p.connection_lost(None)
    return exc.value


async def test_a_client_gone_because_our_certificate_expired_is_told_so(tmp_path: Path, logs: RecordingLog) -> None:
    t = short_lived(tmp_path)
    await expired(t)
    assert own_expired(t.server) != ""
    p = Echo(tls=t.server)
    err = gives_up(p, BioClient(client_context(tmp_path, "hsbctl")))
    assert err.verify_code == 10  # (the client's reason: certificate has expired)
    [why] = refusals(logs)
    assert why.startswith("the client gave up during the TLS handshake: our certificate expired "), why
    assert "ago" in why and "SIGHUP" in why and "another CA" not in why, why


async def test_a_client_gone_while_our_certificate_is_valid_is_still_taken_for_another_ca(tmp_path: Path, logs: RecordingLog) -> None:
    good = tmp_path / "good"
    make_ca_and_certs(good, ["cp"])
    other = tmp_path / "other"
    make_ca_and_certs(other, ["hsbctl"])
    t = TLS(TLSFiles(str(good / "ca.pem"), str(good / "cp.pem"), str(good / "cp.key")))
    gives_up(Echo(tls=t.server), BioClient(client_context(other, "hsbctl")))  # (it trusts another CA)
    assert refusals(logs) == ["the client gave up during the TLS handshake (it does not trust our certificate: another CA?)"]


def hsbctl_error(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """What hsbctl says of a daemon whose certificate its own check refuses."""
    p = Echo(tls=server)
    return why_not(gives_up(p, BioClient(client)), 2.0)


async def test_hsbctl_says_the_daemons_certificate_expired_and_the_fix(tmp_path: Path) -> None:
    t = short_lived(tmp_path)
    await expired(t)
    said = hsbctl_error(t.server, client_context(tmp_path, "hsbctl"))
    assert said.startswith("TLS handshake failed (certificate has expired): the daemon's certificate has expired"), said
    assert "SIGHUP" in said and "the daemon has no [tls]" not in said, said


async def test_hsbctl_says_the_daemons_certificate_is_of_a_ca_it_does_not_trust(tmp_path: Path) -> None:
    good, other = tmp_path / "good", tmp_path / "other"
    make_ca_and_certs(good, ["cp"])
    make_ca_and_certs(other, ["hsbctl"])
    t = TLS(TLSFiles(str(good / "ca.pem"), str(good / "cp.pem"), str(good / "cp.key")))
    said = hsbctl_error(t.server, client_context(other, "hsbctl"))
    assert "the daemon's certificate is not of a CA in the ctl config's ca_file" in said, said


async def test_hsbctl_says_the_daemons_certificate_is_not_valid_yet(tmp_path: Path) -> None:
    issuer = cert("test CA", None, ca=True)
    write(tmp_path, "ca", issuer)
    write(tmp_path, "cp", cert("cp", issuer, starts_in=dt.timedelta(days=3)))
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(tmp_path / "cp.pem", tmp_path / "cp.key")
    said = hsbctl_error(srv, client_context(tmp_path))
    assert "the daemon's certificate is not valid yet" in said and "clock" in said, said


def test_a_reload_of_a_certificate_that_does_not_name_the_daemon_is_a_warning_with_the_fix(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    make_ca_and_certs(d, ["host-a", "host-b"])
    files = TLSFiles(str(d / "ca.pem"), str(d / "host-b.pem"), str(d / "host-b.key"))
    t = TLS(files)
    with structlog.testing.capture_logs() as good:
        assert reload_tls(t, "host-b") is True
    assert [(e["event"], e["log_level"]) for e in good] == [("tls_reloaded", "info")] and "warning" not in good[0], good
    # host-a's pair copied over host-b's (the operator's slip at a renewal): taken, and said
    for suffix in (".pem", ".key"):
        (d / f"host-b{suffix}").write_bytes((d / f"host-a{suffix}").read_bytes())
    with structlog.testing.capture_logs() as slip:
        assert reload_tls(t, "host-b") is True
    [e] = slip
    assert (e["event"], e["log_level"], e["names"]) == ("tls_reloaded", "warning", ["host-a"]), e
    assert "names host-a, not this daemon's name 'host-b'" in e["warning"] and "--names host-b" in e["warning"], e
    with structlog.testing.capture_logs() as start:
        log_misnamed(TLS(files), "host-b")
        log_misnamed(TLS(files), "host-a")
        log_misnamed(None, "host-b")
    assert [x["event"] for x in start] == ["tls_certificate_misnamed"] and "'host-b'" in start[0]["warning"], start
