"""Edges of the server's own TLS that the other TLS tests left open (found by a mutation audit of
hsb.wire.tlsio and hsb.wire.conn_tls). The words for each refusal: a client certificate not valid
yet or of another CA, none where one is required, every alert a client sends about ours, an alert
or a reason the tables do not name. A TLS state, once broken, stays broken with its first reason
(later writes, closes and reads do not reword it); nothing goes out after our close_notify, and
the client's that follows it is still its end; the last flight of a TLS 1.2 handshake goes
back to the client. In a connection (FramedProtocol on a stand-in transport, the client on memory
BIOs, the test's loop for the timers): the TLS timer cancelled by the handshake and by a refusal,
the link opened once, its idle timer armed by the handshake, a plaintext client answered in
plaintext or dropped without a word, a refused certificate answered with an alert, frames ahead of
the client's close_notify all answered before ours, a handshake queued for its turn, the
handshake steps charged to the turn's budget, a client gone mid-handshake named so, and the names
in the certificate presented."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest

from hsb.wire import conn as connmod
from hsb.wire import conn_tls, tlsio
from hsb.wire import handshakes as handshakes_mod
from hsb.wire.conn import FramedProtocol
from hsb.wire.framing import Decoder, encode
from hsb.wire.handshakes import HANDSHAKES
from tests.support.certs import cert, client_context, make_ca, make_leaf, openssl_error, write
from tests.support.logrec import RecordingLog
from tests.support.procs import until
from tests.support.transports import RecordingTransport

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem; cp (the server); hsbctl (a client of that CA); future (one not valid yet);
    stranger (one of another CA)."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    make_leaf(d, ca, "cp", "ec", "cp")
    make_leaf(d, ca, "hsbctl", "ec", "hsbctl")
    write(d, "future", cert("future", ca, starts_in=dt.timedelta(days=3)))
    write(d, "stranger", cert("stranger", cert("other CA", None, ca=True)))
    return d


def server_ctx(d: Path, verify: ssl.VerifyMode = ssl.CERT_OPTIONAL) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cp.pem", d / "cp.key")
    ctx.load_verify_locations(d / "ca.pem")
    ctx.verify_mode = verify
    return ctx


class BioClient:
    """A TLS client on memory BIOs: `step` and `recv` take the server's bytes; what it writes is
    returned by `step`, or taken with `out()`."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.inc, self.outg = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.outg)
        self.done = False  # its handshake is complete
        self.ended = False  # the server's close_notify came

    def step(self, data: bytes = b"") -> bytes:
        """A handshake step on the server's bytes; the client's bytes out."""
        self.inc.write(data)
        try:
            self.obj.do_handshake()
            self.done = True
        except ssl.SSLWantReadError:
            pass
        return self.outg.read()

    def send(self, *msgs: dict[str, Any]) -> bytes:
        for m in msgs:
            self.obj.write(encode(m))
        return self.outg.read()

    def close_notify(self) -> bytes:
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # (the server's not come yet)
        return self.outg.read()

    def recv(self, data: bytes) -> bytes:
        """The server's bytes in: the plaintext they carry (`ended` once its close_notify came)."""
        self.inc.write(data)
        got = b""
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                return got
            except ssl.SSLZeroReturnError:
                self.ended = True
                return got
            if not chunk:
                self.ended = True
                return got
            got += chunk

    def frames(self, data: bytes) -> list[dict[str, Any]]:
        return Decoder().feed(self.recv(data))


def refused(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[tlsio.TLSFailed, tlsio.ServerTLS, BioClient]:
    """A handshake that ServerTLS refuses: its exception, its state and the client."""
    s, c = tlsio.ServerTLS(server), BioClient(client)
    out = b""
    for _ in range(4):
        data = c.step(out)
        try:
            out = s.feed(data)[1]
        except tlsio.TLSFailed as exc:
            return exc, s, c
    raise AssertionError("the handshake was not refused")


def handshake(s: tlsio.ServerTLS, c: BioClient) -> None:
    out = b""
    for _ in range(4):
        out = s.feed(c.step(out))[1]
        if s.done:
            c.step(out)  # (its last flight, if any)
            return
    raise AssertionError("the handshake did not complete")


# -- the words for a refusal ------------------------------------------------------------------


def test_a_client_certificate_not_valid_yet_names_the_clock(pki: Path) -> None:
    exc = refused(server_ctx(pki), client_context(pki, "future"))[0]
    assert exc.reason == "its certificate is not valid yet (a clock off?)"


def test_a_client_certificate_of_another_ca_says_what_openssl_found(pki: Path) -> None:
    exc = refused(server_ctx(pki), client_context(pki, "stranger"))[0]
    assert exc.reason == "its certificate does not chain to our CA (unable to get local issuer certificate)"


def test_no_client_certificate_where_one_is_required_says_mutual_tls(pki: Path) -> None:
    exc = refused(server_ctx(pki, ssl.CERT_REQUIRED), client_context(pki))[0]
    assert exc.reason == "no client certificate (mutual TLS: the client must present one)"


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "it has expired, by the client's clock"),
        ("TLSV1_ALERT_UNKNOWN_CA", "it does not trust our CA"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "it finds it bad, perhaps not valid yet by the client's clock"),
        ("TLSV1_ALERT_DECRYPT_ERROR", "its signature does not check against the client's CA, another CA of our CA's name?"),
        ("SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "it cannot be used for a server, its extendedKeyUsage?"),
        ("SSLV3_ALERT_CERTIFICATE_REVOKED", "it is revoked"),
        ("SSLV3_ALERT_CERTIFICATE_UNKNOWN", "it does not accept it"),
    ],
)
def test_each_alert_refusing_our_certificate_says_what_the_client_found(reason: str, says: str) -> None:
    assert tlsio._reason(openssl_error(reason), tlsio.TLS_HANDSHAKE) == f"the client refused our certificate: {says} (alert {reason})"


@pytest.mark.parametrize("reason", ["TLSV1_ALERT_PROTOCOL_VERSION", "TLSV13_ALERT_MISSING_EXTENSION", "SSLV3_ALERT_HANDSHAKE_FAILURE"])
def test_another_alert_from_the_client_says_it_ended_the_handshake(reason: str) -> None:
    assert tlsio._reason(openssl_error(reason), tlsio.TLS_HANDSHAKE) == f"the client ended the handshake (alert {reason})"


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "no client certificate (mutual TLS: the client must present one)"),
        ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no client certificate (mutual TLS: the client must present one)"),
        ("CERTIFICATE_VERIFY_FAILED", "its certificate does not chain to our CA (CERTIFICATE_VERIFY_FAILED)"),
        ("UNABLE_TO_GET_LOCAL_ISSUER_CERTIFICATE", "its certificate does not chain to our CA (UNABLE_TO_GET_LOCAL_ISSUER_CERTIFICATE)"),
        ("NO_SHARED_CIPHER", "NO_SHARED_CIPHER"),  # (one this side found: no alert of the client's, OpenSSL's own name)
    ],
)
def test_openssls_reasons_without_a_verify_message_are_named(reason: str, says: str) -> None:
    assert tlsio._reason(openssl_error(reason), tlsio.TLS_HANDSHAKE) == says


def test_a_refusal_openssl_gives_no_reason_name_for_is_said_in_its_own_words_not_none() -> None:
    """OpenSSL's error without a reason name (`reason` None): the words were "its certificate does
    not chain to our CA (None)"."""
    e = ssl.SSLError(1, "unable to get local issuer certificate")
    e.reason = None  # type: ignore[assignment]  # (typeshed says str; OpenSSL leaves it None)
    said = tlsio._reason(e, tlsio.TLS_HANDSHAKE)
    assert said.startswith("its certificate does not chain to our CA (") and "None" not in said, said
    assert "unable to get local issuer certificate" in said, said


@pytest.mark.parametrize("reason", ["WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"])
def test_each_of_openssls_words_for_no_tls_says_plaintext_without_a_first_byte(reason: str) -> None:
    assert tlsio._not_tls(openssl_error(reason), None)
    assert tlsio._reason(openssl_error(reason), None) == "not TLS (a plaintext client?)"


# -- ServerTLS: a broken state, the last flight ---------------------------------------------------


def test_a_refused_handshake_sends_the_client_an_alert_and_stays_refused_for_the_same_reason(pki: Path) -> None:
    exc, s, c = refused(server_ctx(pki), client_context(pki, "stranger"))
    assert exc.alert  # (TLS 1.3: an encrypted record)
    with pytest.raises(ssl.SSLError) as seen:  # the client reads why
        c.recv(exc.alert)
    assert "ALERT" in str(seen.value.reason)
    assert s.failed == exc.reason
    with pytest.raises(tlsio.TLSFailed) as again:
        s.feed(b"\x16\x03\x03\x00\x01\x00")
    assert again.value.reason == exc.reason


def test_a_record_that_does_not_decrypt_breaks_the_state_for_good_with_its_first_reason(pki: Path) -> None:
    s, c = tlsio.ServerTLS(server_ctx(pki)), BioClient(client_context(pki))
    handshake(s, c)
    with pytest.raises(tlsio.TLSFailed) as ei:
        s.feed(b"\x17\x03\x03\x00\x20" + b"\0" * 32)
    first = ei.value.reason
    assert first.startswith("a record that is not valid TLS after the handshake")
    assert s.failed == first
    assert s.wrap(b"more") == b""
    assert s.shutdown() == b""
    with pytest.raises(tlsio.TLSFailed) as again:
        s.feed(c.send({"t": "hello"}))
    assert again.value.reason == first
    assert s.failed == first  # (not reworded by the write, the close or the read after it)


def test_a_record_that_does_not_decrypt_is_answered_with_the_alert_openssl_wrote(pki: Path) -> None:
    """The client learns why its connection ends (bad_record_mac), as a refused handshake's does."""
    s, c = tlsio.ServerTLS(server_ctx(pki)), BioClient(client_context(pki))
    handshake(s, c)
    with pytest.raises(tlsio.TLSFailed) as ei:
        s.feed(b"\x17\x03\x03\x00\x20" + b"\0" * 32)
    assert ei.value.alert
    with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC"):
        c.recv(ei.value.alert)


def test_what_is_sent_before_the_handshake_ends_goes_out_after_it_not_breaking_the_state(pki: Path) -> None:
    s, c = tlsio.ServerTLS(server_ctx(pki)), BioClient(client_context(pki))
    assert s.wrap(encode({"t": "early"})) == b""
    assert not s.failed
    last = s.feed(c.step(s.feed(c.step())[1]))[1]  # the client's hello; its finished
    assert s.done and c.done
    assert c.frames(last) == [{"t": "early"}]
    assert c.frames(s.wrap(encode({"t": "later"}))) == [{"t": "later"}]


def test_empty_bytes_kept_are_not_the_client_speaking(pki: Path) -> None:
    s = tlsio.ServerTLS(server_ctx(pki))
    s.keep(b"")
    assert not s.started and s.first is None


def test_nothing_can_be_sent_after_our_close_notify(pki: Path) -> None:
    s, c = tlsio.ServerTLS(server_ctx(pki)), BioClient(client_context(pki))
    handshake(s, c)
    c.recv(s.shutdown())
    assert c.ended
    assert s.wrap(encode({"t": "late"})) == b""
    assert s.failed.startswith("TLS cannot send on it any more")


def test_the_clients_close_notify_after_ours_is_its_end(pki: Path) -> None:
    s, c = tlsio.ServerTLS(server_ctx(pki)), BioClient(client_context(pki))
    handshake(s, c)
    c.recv(s.shutdown())
    assert not s.peer_closed
    assert s.feed(c.close_notify()) == (b"", b"")  # (OpenSSL says it otherwise once ours went)
    assert s.peer_closed


def test_a_close_before_any_handshake_sends_nothing_and_breaks_the_state(pki: Path) -> None:
    s = tlsio.ServerTLS(server_ctx(pki))
    assert s.shutdown() == b""
    assert s.failed.startswith("TLS cannot send on it any more")


def test_a_tls_1_2_client_gets_the_servers_last_flight_and_completes(pki: Path) -> None:
    s, c = tlsio.ServerTLS(server_ctx(pki)), BioClient(client_context(pki, tls12=True))
    handshake(s, c)
    assert c.done and c.obj.version() == "TLSv1.2"
    assert s.feed(c.send({"t": "hello"}))[0] == encode({"t": "hello"})


def test_nothing_fed_before_the_client_spoke_is_no_error_and_no_first_byte(pki: Path) -> None:
    s = tlsio.ServerTLS(server_ctx(pki))
    assert s.feed(b"") == (b"", b"")
    assert s.first is None and not s.failed


# -- a connection over the server's TLS ---------------------------------------------------------


class Wire(RecordingTransport):
    """A stand-in transport that says how it was ended and how often reading was resumed."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1:1")
        self.how: str | None = None  # "close" or "abort"
        self.resumed = 0
        self._taken = 0

    def close(self) -> None:
        super().close()
        self.how = self.how or "close"

    def abort(self) -> None:
        super().abort()
        self.how = self.how or "abort"

    def resume_reading(self) -> None:
        self.resumed += 1

    def pending(self) -> bool:
        """Something was written since the last take."""
        return len(self.data) > self._taken

    def take(self) -> bytes:
        """What was written since the last take."""
        got = bytes(self.data[self._taken :])
        self._taken = len(self.data)
        return got


class Echo(FramedProtocol):
    link = "terminal"
    dispatch = {"hello": "on_hello"}

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.opened = 0

    def on_open(self) -> None:
        self.opened += 1

    def on_hello(self, msg: dict[str, Any]) -> None:
        self.send({"t": "welcome", "n": msg.get("n")})


class Asking(Echo):
    """A link that answers a plaintext client in plaintext."""

    REFUSAL = {"t": "error", "code": "tls_required", "msg": "this port speaks TLS"}

    def plaintext_refusal(self) -> dict[str, Any] | None:
        return dict(self.REFUSAL)


class Pausing(Echo):
    """Its first frame stops its reading for a turn of the loop (as back-pressure would)."""

    def on_hello(self, msg: dict[str, Any]) -> None:
        super().on_hello(msg)
        if msg.get("n") == 1:
            self.pause_reading()
            self._loop.call_soon(self.resume_reading)


def connect(p: FramedProtocol) -> Wire:
    tr = Wire()
    p.connection_made(tr)  # type: ignore[arg-type]  # (a stand-in)
    return tr


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> RecordingLog:
    rec = RecordingLog()
    monkeypatch.setattr(connmod, "log", rec)
    return rec


def refusals(logs: RecordingLog) -> list[str]:
    return [e["reason"] for e in logs.events("tls_refused")]


async def feed(p: FramedProtocol, data: bytes) -> None:
    """`data` received, and its handshake step run: a step past the turn's TURN_S (a slow
    machine's) queues the next one for a later turn (hsb.wire.handshakes)."""
    p.data_received(data)
    await until(lambda: not p._tls_waiting, timeout=5, what="the handshake step's turn")


async def open_tls(p: FramedProtocol, tr: Wire, c: BioClient) -> None:
    """The client's handshake through the connection (each step in its turn, if it was queued)."""
    data = c.step()
    for _ in range(4):
        await feed(p, data)
        assert p._tls is not None
        if p._tls.done:
            c.step(tr.take())
            return
        data = c.step(tr.take())
    raise AssertionError("the handshake did not complete")


async def test_the_handshake_cancels_the_tls_timer_and_opens_the_link_once(pki: Path) -> None:
    p = Echo(tls=server_ctx(pki))
    tr = connect(p)
    timer = p._deadline_handle
    assert timer is not None
    await open_tls(p, tr, BioClient(client_context(pki)))
    assert timer.cancelled()
    assert p.opened == 1


async def test_frames_after_the_handshake_do_not_open_the_link_again(pki: Path) -> None:
    p = Echo(tls=server_ctx(pki))
    tr = connect(p)
    c = BioClient(client_context(pki))
    await open_tls(p, tr, c)
    for n in (1, 2):
        p.data_received(c.send({"t": "hello", "n": n}))
        await until(tr.pending, timeout=5, what="the welcome")
        assert c.frames(tr.take()) == [{"t": "welcome", "n": n}]
    assert p.opened == 1


async def test_a_client_silent_after_its_handshake_meets_the_idle_timeout(pki: Path) -> None:
    p = Echo(tls=server_ctx(pki), idle_timeout=0.2)
    tr = connect(p)
    c = BioClient(client_context(pki))
    await open_tls(p, tr, c)
    await until(lambda: tr.how is not None, timeout=5, what="the idle timeout's close")
    assert [f["code"] for f in c.frames(tr.take())] == ["idle_timeout"]
    assert c.ended and tr.how == "close"


async def test_a_plaintext_client_is_answered_in_plaintext_and_its_tls_timer_cancelled(pki: Path, logs: RecordingLog) -> None:
    p = Asking(tls=server_ctx(pki))
    tr = connect(p)
    timer = p._deadline_handle
    assert timer is not None
    await feed(p, encode({"t": "hello", "terminal": "T00001"}) * 4)
    assert tr.frames() == [Asking.REFUSAL]
    assert tr.how == "close" and p.closed and p.closed_here
    assert timer.cancelled()
    assert refusals(logs) == ["not TLS (a plaintext client?)"]


async def test_a_plaintext_client_of_a_link_with_no_answer_is_dropped_without_a_word(pki: Path, logs: RecordingLog) -> None:
    p = Echo(tls=server_ctx(pki))
    tr = connect(p)
    await feed(p, encode({"t": "hello", "terminal": "T00001"}) * 4)
    assert tr.data == b""
    assert tr.how == "abort" and p.closed and p.closed_here
    assert refusals(logs) == ["not TLS (a plaintext client?)"]


async def test_a_refused_client_certificate_is_answered_with_an_alert_the_client_reads(pki: Path, logs: RecordingLog) -> None:
    p = Echo(tls=server_ctx(pki, ssl.CERT_REQUIRED))
    tr = connect(p)
    c = BioClient(client_context(pki, "stranger"))
    await feed(p, c.step())
    await feed(p, c.step(tr.take()))
    assert tr.how == "close" and p.closed_here
    with pytest.raises(ssl.SSLError) as seen:
        c.recv(tr.take())
    assert "ALERT" in str(seen.value.reason)
    assert refusals(logs) == ["its certificate does not chain to our CA (unable to get local issuer certificate)"]


@pytest.mark.parametrize("behind", [0, 1 << 20])
async def test_a_record_that_does_not_decrypt_is_answered_with_an_alert_unless_the_client_is_not_reading(
    pki: Path, logs: RecordingLog, behind: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alert, then the close; behind a megabyte it is not reading, the close would wait for
    ever: dropped, as before the alert went out."""
    p = Echo(tls=server_ctx(pki))
    tr = connect(p)
    c = BioClient(client_context(pki))
    await open_tls(p, tr, c)
    monkeypatch.setattr(tr, "get_write_buffer_size", lambda: behind)
    p.data_received(b"\x17\x03\x03\x00\x20" + b"\0" * 32)
    assert p.closed and p.closed_here
    assert refusals(logs)[0].startswith("a record that is not valid TLS after the handshake")
    if behind:
        assert tr.how == "abort" and tr.take() == b""
    else:
        assert tr.how == "close"
        with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC"):
            c.recv(tr.take())


async def test_a_client_that_never_starts_its_handshake_is_dropped_at_the_tls_timeout(pki: Path, logs: RecordingLog) -> None:
    p = Echo(tls=server_ctx(pki), tls_timeout=0.1)
    tr = connect(p)
    await until(lambda: tr.how is not None, timeout=5, what="the TLS timeout")
    assert tr.how == "abort" and tr.data == b""
    assert refusals(logs) == ["no TLS handshake within 0.1 s"]


async def test_frames_ahead_of_the_clients_close_notify_are_all_answered_before_ours(pki: Path) -> None:
    p = Pausing(tls=server_ctx(pki))
    tr = connect(p)
    c = BioClient(client_context(pki))
    await open_tls(p, tr, c)
    p.data_received(c.send(*({"t": "hello", "n": n} for n in (1, 2, 3))) + c.close_notify())  # in one read
    await until(lambda: tr.how is not None, timeout=5, what="the connection closed")
    assert c.frames(tr.take()) == [{"t": "welcome", "n": n} for n in (1, 2, 3)]
    assert c.ended  # then our close_notify
    assert tr.how == "close" and p.closed and not p.closed_here


@pytest.mark.parametrize(
    ("began", "says"),
    [
        (True, "the client gave up during the TLS handshake (it does not trust our certificate: another CA?)"),
        (False, "closed before a TLS handshake (a plaintext client waiting for the server to speak first?)"),
    ],
)
async def test_a_client_gone_before_its_handshake_is_done_is_named_by_what_it_sent(pki: Path, logs: RecordingLog, began: bool, says: str) -> None:
    p = Echo(tls=server_ctx(pki))
    connect(p)
    if began:
        p.data_received(BioClient(client_context(pki)).step()[:20])  # a ClientHello begun
    p.connection_lost(None)
    assert refusals(logs) == [says]


async def test_a_handshake_queued_for_its_turns_completes_and_reading_resumes(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handshakes_mod, "TURN_S", -1.0)  # no step runs inline: each waits its turn
    deferred = HANDSHAKES.deferred
    p = Echo(tls=server_ctx(pki))
    tr = connect(p)
    c = BioClient(client_context(pki))
    await open_tls(p, tr, c)
    assert HANDSHAKES.deferred - deferred == 2  # (the ClientHello and the client's Finished)
    assert tr.resumed == 2  # read again at each turn
    p.data_received(c.send({"t": "hello", "n": 7}))
    await until(tr.pending, timeout=5, what="the welcome")
    assert c.frames(tr.take()) == [{"t": "welcome", "n": 7}]


class Charges:
    def __init__(self) -> None:
        self.steps: list[float] = []

    def charge(self, seconds: float) -> None:
        self.steps.append(seconds)


async def test_handshake_steps_are_charged_to_the_turn_and_frames_after_it_are_not(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    charges = Charges()
    monkeypatch.setattr(conn_tls, "HANDSHAKES", charges)
    p = Echo(tls=server_ctx(pki))
    tr = connect(p)
    c = BioClient(client_context(pki))
    await open_tls(p, tr, c)
    assert len(charges.steps) == 2 and all(s >= 0 for s in charges.steps)
    p.data_received(c.send({"t": "hello", "n": 1}))
    assert len(charges.steps) == 2


@pytest.mark.parametrize(("stem", "presented", "names"), [(None, False, set()), ("hsbctl", True, {"hsbctl"})])
async def test_the_certificate_presented_and_its_names(pki: Path, stem: str | None, presented: bool, names: set[str]) -> None:
    p = Echo(tls=server_ctx(pki))
    tr = connect(p)
    await open_tls(p, tr, BioClient(client_context(pki, stem)))
    assert p.tls_cert_presented() is presented
    assert p.tls_peer_names() == names


async def test_a_plaintext_connection_presents_no_certificate_and_has_no_names() -> None:
    p = Echo()
    connect(p)
    assert p.tls_cert_presented() is False
    assert p.tls_peer_names() is None
