"""The client side of a link (hsb.wire.client.FrameStream): closing never hangs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hsb.wire.client import FrameStream


@pytest.mark.timeout(30)
async def test_aclose_does_not_wait_for_a_peer_that_stopped_reading() -> None:
    """A close lets queued frames drain; a peer that reads nothing (or a cut link) never
    lets them, and a daemon's teardown used to wait there for good."""
    accepted: list[asyncio.StreamWriter] = []

    async def never_read(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)

    srv = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    fs = await FrameStream.connect("127.0.0.1", port)
    try:
        big = {"t": "x", "data": b"\0" * 65536}
        deadline = time.monotonic() + 10
        while fs.writer.transport.get_write_buffer_size() < 8 << 20:  # past both kernels' buffers
            assert time.monotonic() < deadline, "the send buffer never filled"
            for _ in range(64):
                fs.send(big)
            fs._flush()
            await asyncio.sleep(0)
        t0 = time.monotonic()
        # two closers at once (a link's own close and its teardown): the one whose time runs
        # out aborts, and the other returns too, not cancelled by it
        await asyncio.gather(fs.aclose(timeout=0.5), fs.aclose(timeout=10.0))
        took = time.monotonic() - t0
        assert 0.4 < took < 5.0, took
        assert fs.writer.transport.is_closing()
        # and the connection is dropped with its unsent megabytes, not left waiting for the peer
        while not (fs.reader.at_eof() or fs.reader.exception() is not None):
            assert time.monotonic() - t0 < 5.0, "the connection was left open"
            await asyncio.sleep(0.01)
    finally:
        for w in accepted:
            w.transport.abort()
        srv.close()
        await srv.wait_closed()


@pytest.mark.timeout(30)
def test_a_reset_link_leaves_no_cyclic_garbage() -> None:
    """hsbd's links are FrameStreams on uvloop and full collections are off (hsb/gcpolicy.py):
    a link reset by its peer must be freed by reference counting alone."""
    import socket
    import struct

    import uvloop

    from hsb.wire.client import LinkClosed
    from tests.support.cycles import collector_off

    async def scenario() -> None:
        async def reset(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()

        srv = await asyncio.start_server(reset, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            for _ in range(5):
                fs = await FrameStream.connect("127.0.0.1", port)
                with pytest.raises((LinkClosed, ConnectionError)):
                    await fs.recv(5.0)
                assert isinstance(fs.reader.exception(), ConnectionResetError)  # a reset, not an EOF
                await fs.aclose()
            del fs
        finally:
            srv.close()
            await srv.wait_closed()

    with collector_off() as garbage, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
        kinds = sorted({type(o).__name__ for o in garbage()})
    assert not kinds, f"cyclic garbage after reset links: {kinds}"


class _SlowPeer:
    """A transport whose peer takes `taken` queued bytes per check (0: it reads nothing)."""

    def __init__(self, queued: int, taken: int) -> None:
        self.queued, self.taken, self.aborted, self.closing = queued, taken, False, False

    def get_extra_info(self, key: str, default: object = None) -> object:
        return default

    def get_write_buffer_size(self) -> int:
        size = self.queued
        self.queued = max(0, self.queued - self.taken)
        return size

    def write(self, data: bytes) -> None:
        self.queued += len(data)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True


class _Timers:
    """Stands in for the loop's call_later: the test fires the timers itself."""

    def __init__(self) -> None:
        self.due: list[tuple[object, tuple[object, ...]]] = []

    def call_later(self, delay: float, fn: object, *args: object) -> asyncio.TimerHandle:
        self.due.append((fn, args))
        return asyncio.TimerHandle(0.0, lambda: None, (), asyncio.get_running_loop())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("taken, dropped", [(0, True), (1000, False)])
async def test_a_closed_connection_is_dropped_only_when_its_peer_reads_nothing(taken: int, dropped: bool) -> None:
    from hsb.wire.conn import CONNECTIONS_DROPPED, FramedProtocol

    counted = CONNECTIONS_DROPPED["link"]
    proto = FramedProtocol()
    tr = _SlowPeer(queued=100_000, taken=taken)
    proto.connection_made(tr)  # type: ignore[arg-type]
    timers = proto._loop = _Timers()  # type: ignore[assignment]
    proto.close()
    checks = 0
    while timers.due:  # each check after CLOSE_LINGER_S
        fn, args = timers.due.pop()
        fn(*args)  # type: ignore[operator]
        checks += 1
    # one that reads nothing is dropped at the first check; one that keeps reading keeps its
    # connection until everything went out (100 checks here), and is not dropped after that
    assert tr.aborted is dropped and checks == (1 if dropped else 100), (tr.aborted, checks, tr.queued)
    assert CONNECTIONS_DROPPED["link"] == counted + dropped  # hsb_connections_dropped_total


@pytest.mark.timeout(30)
async def test_terminal_keepalive_set_on_a_uvloop_listener_reaches_each_connection() -> None:
    """hsbcpd runs on uvloop and sets the keepalive options (hsb.wire.conn.tcp_keepalive) once,
    on its terminal listener: every connection it accepts must carry them."""
    import socket

    import uvloop

    from hsb.wire.conn import KEEPALIVE_PROBES, tcp_keepalive

    async def serve() -> dict[str, int]:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[dict[str, int]] = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                s = transport.get_extra_info("socket")
                opts = {
                    "on": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    "idle": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    "cnt": (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    "user": (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),  # none: a slow reader stays
                }
                got.set_result({k: s.getsockopt(*o) for k, o in opts.items()})

        srv = await loop.create_server(P, "127.0.0.1", 0, start_serving=False)
        for s in srv.sockets:
            tcp_keepalive(s, 7.0)
        await srv.start_serving()
        _, w = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
        try:
            return await asyncio.wait_for(got, 5)
        finally:
            w.close()
            srv.close()

    seen = await asyncio.to_thread(uvloop.run, serve())
    assert seen == {"on": 1, "idle": 7, "cnt": KEEPALIVE_PROBES, "user": 0}


SECRET = b"a shared secret for the test"


async def _authenticate_against(answer: object, ok_server: str = "cp", proto: int | None = None) -> tuple[str | None, Exception | None]:
    """A client authenticating at a server that challenges it properly (as "cp", speaking `proto`,
    this version's by default), then answers `auth_ok` (naming `ok_server`) with `answer(auth
    frame)` as its proof ('mac'); (server name, error)."""
    from hsb import LINK_PROTOCOL
    from hsb.wire import auth
    from hsb.wire.framing import Decoder, encode

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(encode({"t": "challenge", "nonce": auth.new_nonce(), "server": "cp", "proto": LINK_PROTOCOL if proto is None else proto}))
        dec = Decoder()
        frames: list[dict[str, Any]] = []
        while not frames:
            data = await r.read(65536)
            if not data:
                return
            frames = dec.feed(data)
        ok = {"t": "auth_ok", "server": ok_server}
        mac = answer(frames[0])  # type: ignore[operator]
        if mac is not None:
            ok["mac"] = mac
        w.write(encode(ok))
        await r.read(1)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    fs = await FrameStream.connect("127.0.0.1", srv.sockets[0].getsockname()[1])
    try:
        return await fs.authenticate(SECRET, "host", "host-a", timeout=5), None
    except Exception as exc:
        return None, exc
    finally:
        await fs.aclose()
        srv.close()


@pytest.mark.timeout(30)
async def test_a_server_must_prove_it_knows_the_secret() -> None:
    """Authentication goes both ways: a process listening at the CP's (or a peer's, or a daemon's
    admin) address without the secret, say while hsbcpd restarts, cannot pass itself off as it
    with a bare auth_ok (it could grant the active role, or raise the CP generation a host holds).
    Nor can it play the client's own answer back."""
    from hsb.wire import auth
    from hsb.wire.client import LinkClosed

    good = lambda a: auth.answer(SECRET, a["nonce"], auth.server_role("host"), "cp")  # noqa: E731
    assert await _authenticate_against(good) == ("cp", None)
    for proof in (
        lambda a: None,  # no proof at all
        lambda a: auth.answer(b"another secret", a["nonce"], auth.server_role("host"), "cp"),
        lambda a: a["mac"],  # the client's own answer, played back
        lambda a: auth.answer(SECRET, a["nonce"], "host", "cp"),  # the client's kind of answer
    ):
        name, exc = await _authenticate_against(proof)
        assert name is None and isinstance(exc, LinkClosed) and (exc.error or {}).get("code") == "auth_failed", exc


@pytest.mark.timeout(30)
async def test_frames_ahead_of_a_bad_one_are_still_read() -> None:
    """Whole frames that arrived in the same read as a bad one (a `fenced` just ahead of it, say)
    are returned first; the protocol error comes after them, not instead of them."""
    from hsb.wire.framing import ProtocolError, encode

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(encode({"t": "fenced", "epoch": 3}) + encode({"t": "hb"}) + b"\x00\x00\x00\x00")
        await r.read(1)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    fs = await FrameStream.connect("127.0.0.1", srv.sockets[0].getsockname()[1])
    try:
        assert await fs.recv(5) == {"t": "fenced", "epoch": 3}
        assert await fs.recv(5) == {"t": "hb"}
        with pytest.raises(ProtocolError) as exc:
            await fs.recv(5)
        assert exc.value.code == "empty_frame"
    finally:
        await fs.aclose()
        srv.close()


@pytest.mark.timeout(30)
async def test_a_challenge_whose_nonce_is_not_of_our_length_is_refused() -> None:
    """An impostor at the CP's address could pick a nonce that runs into the role ("X" +
    "server:") and ask a second host for its answer: exactly the proof the first host expects of
    the real server. A nonce of any other length than ours is refused before anything is answered."""
    from hsb import LINK_PROTOCOL
    from hsb.wire import auth
    from hsb.wire.framing import Decoder, encode

    got: list[dict] = []  # type: ignore[type-arg]

    async def impostor(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(encode({"t": "challenge", "nonce": b"x" * 32 + b"server:", "server": "hostB", "proto": LINK_PROTOCOL}))
        try:
            data = await asyncio.wait_for(r.read(65536), 2)
            got.extend(Decoder().feed(data) if data else [])
        except TimeoutError:
            pass
        w.close()

    srv = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    fs = await FrameStream.connect("127.0.0.1", port)
    try:
        with pytest.raises(Exception, match="nonce is 39 bytes, not 32"):  # noqa: PT011
            await fs.authenticate(b"secret", "host", "hostA")
        assert not [m for m in got if m.get("t") == "auth"], "answered a challenge it should refuse"
        assert len(auth.new_nonce()) == auth.NONCE_BYTES
    finally:
        await fs.aclose(timeout=1.0)
        srv.close()
        await srv.wait_closed()


@pytest.mark.timeout(30)
async def test_the_name_returned_is_the_one_proved_and_a_version_mismatch_says_both() -> None:
    """authenticate() returned auth_ok's `server`, a name nothing checked (the proof and the
    certificate cover the challenge's), and the peer link refuses others by it; and a version
    mismatch it finds itself had no text (logged as reason None)."""
    from hsb import LINK_PROTOCOL
    from hsb.wire import auth
    from hsb.wire.client import LinkClosed

    good = lambda a: auth.answer(SECRET, a["nonce"], auth.server_role("host"), "cp")  # noqa: E731
    assert await _authenticate_against(good, ok_server="host-c") == ("cp", None)
    name, exc = await _authenticate_against(good, proto=LINK_PROTOCOL + 1)
    assert name is None and isinstance(exc, LinkClosed) and exc.error is not None
    msg = str(exc.error.get("msg"))
    assert str(LINK_PROTOCOL) in msg and str(LINK_PROTOCOL + 1) in msg, exc.error


def test_a_refusals_reason_is_bounded() -> None:
    """What answers at a host's cp or peer address may be anyone: its error text is logged, and
    put in status, at most a few hundred characters long."""
    from hsb.ops import refusals

    said: list[str | None] = []
    r = refusals.RefusalLog("test_refused", "fix it", on_said=said.append)
    r.seen("x" * 500_000)
    assert said and said[0] is not None and len(said[0]) < 400, len(said[0] or "")


async def test_the_session_table_is_every_page_the_cp_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """cp_sessions asks page after page until the CP names no next offset; an answer that is not
    a page is an error naming what came."""

    from hsb.wire import client

    pages = {0: ({"T1": 1, "T2": 2}, 2), 2: ({"T3": 3}, 3), 3: ({"T4": 4}, None)}
    asked: list[int] = []

    async def request(host: str, port: int, secret: bytes, msg: dict[str, Any], **kw: Any) -> dict[str, Any]:
        asked.append(msg["offset"])
        data, nxt = pages[msg["offset"]]
        return {"t": "sessions", "data": data, **({"next": nxt} if nxt is not None else {})}

    monkeypatch.setattr(client, "request", request)
    assert await client.cp_sessions("h", 1, b"s") == {"T1": 1, "T2": 2, "T3": 3, "T4": 4}
    assert asked == [0, 2, 3]

    async def refused(host: str, port: int, secret: bytes, msg: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return {"t": "error", "code": "standby", "msg": "ask the active"}

    monkeypatch.setattr(client, "request", refused)
    with pytest.raises(client.LinkClosed, match="answered 'error' to sessions: ask the active"):
        await client.cp_sessions("h", 1, b"s")


async def test_a_frame_sent_on_a_closed_stream_is_a_connection_error() -> None:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        fs = await FrameStream.connect("127.0.0.1", srv.sockets[0].getsockname()[1], ssl=None)
        fs.close()
        with pytest.raises(ConnectionResetError, match="link closed"):
            fs.send({"t": "ping"})
        await fs.aclose()
    finally:
        srv.close()
        await srv.wait_closed()
