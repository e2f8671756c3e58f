"""The frame stream and the authentication of hsb/wire/client.py, the host's and hsbctl's side
of every authenticated link (docs/protocol.md): what a challenge must be before anything is
answered, what a refused authentication raises (an error frame's own answer, not a protocol
error), the auth_ok kept, frames queued before a close, and `request`'s answer or Unanswered. In
process, against a scripted server on the loopback; each test names a behaviour that a mutation
audit of the module found no test for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from hsb import LINK_PROTOCOL
from hsb.wire import auth
from hsb.wire.client import FrameStream, LinkClosed, NoChallenge, Unanswered, request
from hsb.wire.framing import Decoder, ProtocolError, encode
from tests.support.procs import SECRET

pytestmark = pytest.mark.timeout(30)


def _challenge(**over: Any) -> dict[str, Any]:
    ch: dict[str, Any] = {"t": "challenge", "nonce": auth.new_nonce(), "server": "cp", "proto": LINK_PROTOCOL}
    ch.update(over)
    return {k: v for k, v in ch.items() if v is not None}


def _proved(a: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The real server's auth_ok to the client's `auth` frame `a`."""
    return {"t": "auth_ok", "server": "cp", "mac": auth.answer(SECRET, a["nonce"], auth.server_role(a["link"]), "cp"), **extra}


class Scripted:
    """A server that writes `first` (a challenge, or anything) and answers the client's first
    frame with `answer(frame)` (nothing if None); what it read is kept in `got`."""

    def __init__(self, first: dict[str, Any], answer: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda a: None, ssl: Any = None) -> None:
        self.first, self.answer, self.ssl = first, answer, ssl
        self.got: list[dict[str, Any]] = []
        self.srv: asyncio.base_events.Server | None = None

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(encode(self.first))
        dec = Decoder()
        while True:
            try:
                data = await r.read(65536)
            except ConnectionError:
                return
            if not data:
                break
            frames = dec.feed(data)
            for f in frames:
                self.got.append(f)
                if len(self.got) == 1:
                    ans = self.answer(f)
                    if ans is None:  # (the first frame unanswered: the link closes)
                        w.close()
                        return
                    w.write(encode(ans))
        w.close()

    async def __aenter__(self) -> Scripted:
        self.srv = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.srv is not None
        self.srv.close()

    @property
    def port(self) -> int:
        assert self.srv is not None
        return int(self.srv.sockets[0].getsockname()[1])

    async def authenticate(self, ssl: Any = None) -> tuple[FrameStream, str | None, Exception | None]:
        fs = await FrameStream.connect("127.0.0.1", self.port, ssl=ssl)
        try:
            return fs, await fs.authenticate(SECRET, "host", "host-a", timeout=5), None
        except Exception as exc:  # noqa: BLE001 - what it raised is the test's
            return fs, None, exc


async def test_a_first_frame_that_is_an_error_is_no_challenge_and_answers_nothing() -> None:
    """Another kind of port (the CP's terminal port) closes with an error frame first: that is
    NoChallenge, carrying the error, and the client was never challenged (hsb.ops.refusals tells
    a wrong port from a daemon that refused it by it)."""
    err = {"t": "error", "code": "no_hello", "msg": "hello expected"}
    async with Scripted(err) as s:
        fs, name, exc = await s.authenticate()
        await fs.aclose()
    assert name is None and isinstance(exc, NoChallenge) and exc.error == err, exc
    assert not fs.challenged and s.got == []


async def test_a_daemon_that_took_the_auth_and_closed_was_challenged() -> None:
    """A daemon that challenged the client and then closed without an answer was an hsb daemon
    (`challenged`), which refused it: not a wrong port."""
    async with Scripted(_challenge()) as s:
        fs, name, exc = await s.authenticate()
        await fs.aclose()
    assert name is None and isinstance(exc, LinkClosed) and not isinstance(exc, NoChallenge), exc
    assert fs.challenged and [m["t"] for m in s.got] == ["auth"]


async def test_a_challenge_whose_nonce_is_not_bytes_is_refused_unanswered() -> None:
    """A challenge whose nonce is not bytes (text, a number) is not an hsb challenge: a protocol
    error (auth_failed), and nothing is answered to it."""
    for nonce in ("x" * auth.NONCE_BYTES, 12345):
        async with Scripted(_challenge(nonce=nonce)) as s:
            fs, name, exc = await s.authenticate()
            await fs.aclose()
        assert isinstance(exc, ProtocolError) and exc.code == "auth_failed", exc
        assert s.got == []


@pytest.mark.parametrize("proto", [None, LINK_PROTOCOL - 1, LINK_PROTOCOL + 1])
async def test_a_daemon_of_another_link_protocol_is_a_version_mismatch(proto: int | None) -> None:
    """A challenge of another link protocol, older or newer, or with none at all (hsb older than
    0.4: protocol 1), is a version mismatch said with both versions, and nothing is answered."""
    first = _challenge(proto=proto) if proto is not None else {k: v for k, v in _challenge().items() if k != "proto"}
    async with Scripted(first, _proved) as s:
        fs, name, exc = await s.authenticate()
        await fs.aclose()
    assert name is None and isinstance(exc, LinkClosed) and exc.error is not None and exc.error["code"] == "version_mismatch", exc
    assert s.got == []


async def test_an_authentication_refused_with_an_error_frame_carries_it() -> None:
    """The server refuses the auth with an error frame (a wrong secret, a name it does not
    know): LinkClosed carrying that error (its code is what the host logs and backs off on),
    not a protocol error; any other frame than auth_ok is a protocol error."""
    refusal = {"t": "error", "code": "bad_name", "msg": "not a host of this CP"}
    async with Scripted(_challenge(), lambda a: refusal) as s:
        fs, name, exc = await s.authenticate()
        await fs.aclose()
    assert isinstance(exc, LinkClosed) and exc.error == refusal, exc
    async with Scripted(_challenge(), lambda a: {"t": "hb"}) as s:
        fs, name, exc = await s.authenticate()
        await fs.aclose()
    assert isinstance(exc, ProtocolError) and exc.code == "auth_failed" and "auth_ok" in str(exc), exc


async def test_the_servers_auth_ok_is_kept() -> None:
    """The server's auth_ok frame is kept on the stream (`auth_ok`): the CP's generation that
    the host's CP link checks comes in it."""
    async with Scripted(_challenge(), lambda a: _proved(a, generation=7)) as s:
        fs, name, exc = await s.authenticate()
        await fs.aclose()
    assert name == "cp" and exc is None
    assert fs.auth_ok.get("generation") == 7


async def test_frames_queued_before_a_close_go_out() -> None:
    """A frame queued and the stream closed at once (a host's last `stopping`, an hsbctl
    request) still goes out: the close writes what is queued first."""
    async with Scripted(_challenge()) as s:
        fs = await FrameStream.connect("127.0.0.1", s.port, ssl=None)
        fs.send({"t": "last", "n": 1})
        await fs.aclose()
        deadline = asyncio.get_running_loop().time() + 5
        while not s.got and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
    assert s.got == [{"t": "last", "n": 1}]


async def test_a_request_is_answered_or_unanswered_once_sent_and_fails_as_itself_before() -> None:
    """`request` (hsbctl): the daemon's answer is returned, an error frame included; a request
    sent and never answered is Unanswered (the daemon may have acted on it); a refused
    authentication or a link that fails before the request went raises its own error, never
    Unanswered (hsbctl then says it could not ask the daemon)."""
    err = {"t": "error", "code": "standby", "msg": "ask the active"}
    answers: list[dict[str, Any] | None] = [err, None]

    class Then(Scripted):
        async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(encode(self.first))
            dec = Decoder()
            while True:
                data = await r.read(65536)
                if not data:
                    break
                for f in dec.feed(data):
                    self.got.append(f)
                    if f["t"] == "auth":
                        w.write(encode(_proved(f)))
                        continue
                    ans = answers.pop(0)
                    if ans is not None:
                        w.write(encode(ans))
            w.close()

    async with Then(_challenge()) as s:
        assert await request("127.0.0.1", s.port, SECRET, {"t": "status"}, timeout=5, ssl=None) == err
        with pytest.raises(Unanswered):
            await request("127.0.0.1", s.port, SECRET, {"t": "status"}, timeout=0.3, ssl=None)
    refusal = {"t": "error", "code": "auth_failed", "msg": "no"}
    async with Scripted(_challenge(), lambda a: refusal) as s:
        with pytest.raises(LinkClosed) as refused:
            await request("127.0.0.1", s.port, SECRET, {"t": "status"}, timeout=5, ssl=None)
        assert refused.value.error == refusal and not isinstance(refused.value, Unanswered)
        port = s.port
    assert s.srv is not None
    await s.srv.wait_closed()
    with pytest.raises(ConnectionError) as down:
        await request("127.0.0.1", port, SECRET, {"t": "status"}, timeout=5, ssl=None)
    assert not isinstance(down.value, Unanswered)


class _Writer:
    """A StreamWriter as FrameStream uses it: each write kept."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_each_frame_goes_out_in_the_loop_turn_it_was_queued_in() -> None:
    """A frame queued goes out at the end of its loop turn without anyone draining (a host's
    heartbeat, a reply): frames queued in one turn go in one write, and a frame queued in a
    later turn goes out in a write of its own."""
    w = _Writer()
    fs = FrameStream(asyncio.StreamReader(), w)  # type: ignore[arg-type]
    fs.send({"t": "a"})
    fs.send({"t": "b"})
    assert w.writes == []
    await _turns()
    assert w.writes == [encode({"t": "a"}) + encode({"t": "b"})]
    fs.send({"t": "c"})
    await _turns()
    assert w.writes[1:] == [encode({"t": "c"})]
    fs.send({"t": "d"})
    await _turns()
    assert w.writes[2:] == [encode({"t": "d"})]


async def test_every_flush_at_frames_are_written_at_once() -> None:
    """A burst of frames queued in one loop turn is written every FLUSH_AT frames, at once (the
    queue never holds more than that), the rest at the end of the turn."""
    from hsb.wire.framing import FLUSH_AT

    w = _Writer()
    fs = FrameStream(asyncio.StreamReader(), w)  # type: ignore[arg-type]
    for i in range(FLUSH_AT - 1):
        fs.send({"t": "x", "i": i})
    assert w.writes == []
    fs.send({"t": "x", "i": FLUSH_AT - 1})
    assert w.writes == [b"".join(encode({"t": "x", "i": i}) for i in range(FLUSH_AT))]
    fs.send({"t": "x", "i": FLUSH_AT})
    await _turns()
    assert w.writes[1:] == [encode({"t": "x", "i": FLUSH_AT})]


async def test_a_drain_writes_what_is_queued_before_it_waits() -> None:
    """`drain` writes the frames queued so far before it waits for the transport's buffer: what
    it waits for covers them (a stop's last frames, then the close)."""
    w = _Writer()
    seen: list[int] = []

    async def drain() -> None:
        seen.append(len(w.writes))

    w.drain = drain  # type: ignore[attr-defined]
    fs = FrameStream(asyncio.StreamReader(), w)  # type: ignore[arg-type]
    fs.send({"t": "stopping", "epoch": 3})
    await fs.drain()
    assert seen == [1] and w.writes == [encode({"t": "stopping", "epoch": 3})]


async def test_the_frames_of_one_read_come_in_order_and_a_bad_one_after_them_stays_bad() -> None:
    """Frames read together come out in the order sent; a bad frame among them is raised once
    the good ones before it are out, and again at every later recv (nothing more is read past
    it, even with more data or the end of the link behind)."""
    r = asyncio.StreamReader()
    r.feed_data(encode({"t": "a"}) + encode({"t": "b"}) + encode({"t": "c"}) + b"\x00\x00\x00\x00" + encode({"t": "d"}))
    r.feed_eof()
    fs = FrameStream(r, _Writer())  # type: ignore[arg-type]
    assert [await fs.recv(5) for _ in range(3)] == [{"t": "a"}, {"t": "b"}, {"t": "c"}]
    for _ in range(2):
        with pytest.raises(ProtocolError) as bad:
            await fs.recv(5)
        assert bad.value.code == "empty_frame"


async def test_a_frame_queued_as_the_link_closes_is_dropped_not_written() -> None:
    """A frame queued in the loop turn in which the transport started closing (the other side
    reset the link) is dropped at the flush: nothing is written to a closing transport (uvloop
    raises there; asyncio counts it as a failed send and warns)."""
    w = _Writer()
    fs = FrameStream(asyncio.StreamReader(), w)  # type: ignore[arg-type]
    fs.send({"t": "hb"})
    w.closing = True
    await _turns()
    assert w.writes == []


async def test_over_tls_a_server_whose_certificate_is_not_for_the_name_it_claims_is_refused(tmp_path: Any) -> None:
    """Over TLS, the server's certificate must name the server its challenge says it is: one
    with another host's certificate (of the same CA) claiming to be the CP is refused before
    anything is answered (ServerNameMismatch, naming both); the certificate's own name passes."""
    import ssl as ssl_mod

    from hsb.wire.client import ServerNameMismatch
    from tests.support.certs import client_context, make_ca, make_leaf

    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "host-b", "ec", "srv")
    server_ctx = ssl_mod.SSLContext(ssl_mod.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    async with Scripted(_challenge(server="cp"), ssl=server_ctx) as s:
        fs, name, exc = await s.authenticate(ssl=client_context(tmp_path))
        await fs.aclose()
    assert name is None and isinstance(exc, ServerNameMismatch), exc
    assert exc.server == "cp" and exc.names == ["host-b"] and s.got == []
    async with Scripted(_challenge(server="host-b"), ssl=server_ctx) as s:
        fs, name, exc = await s.authenticate(ssl=client_context(tmp_path))
        await fs.aclose()
    assert not isinstance(exc, ServerNameMismatch), exc
    assert [m["t"] for m in s.got] == ["auth"]


async def test_a_request_to_a_server_that_trickles_bytes_is_cut_off_whole() -> None:
    """A server that sends a byte now and then and never a whole frame passes every step's own
    timeout; the request as a whole is cut off at four times it (well before the 6 s here)."""
    stop = asyncio.Event()

    async def trickle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write((60000).to_bytes(4, "big"))  # a frame's length, its bytes never all sent
        while not stop.is_set() and not w.is_closing():
            w.write(b"\\x00")
            await asyncio.sleep(0.05)
        w.close()

    srv = await asyncio.start_server(trickle, "127.0.0.1", 0)
    try:
        task = asyncio.ensure_future(request("127.0.0.1", srv.sockets[0].getsockname()[1], SECRET, {"t": "status"}, timeout=0.25, ssl=None))
        done, _ = await asyncio.wait([task], timeout=6)
        assert done, "the request was not cut off"
        with pytest.raises(TimeoutError):
            task.result()
    finally:
        stop.set()
        srv.close()
