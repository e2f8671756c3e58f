"""The peer link (hsb.host.peer) at its edges, found by a mutation audit of that module: what the
sending side does with each kind of refusal (how soon it tries again, which line it says, that it
clears them once the link is up, that a refused connection is closed), a sending connection the
peer half-closes or fills, notices sent while it is down, the receiving side's field checks, its
heartbeat timeout and what it closes, which frames bring the link up, and `close()`. Real
loopback sockets in-process: PeerLinks, raw FrameStreams, and a stand-in for the host at
`host.peer` (a plain asyncio server that answers each connection as scripted)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import hsb.host.peer as peer_mod
import hsb.ops.refusals as refusals_mod
from hsb import LINK_PROTOCOL, __version__
from hsb.backoff import Backoff
from hsb.host.peer import PeerLink
from hsb.ports import free_port
from hsb.wire import auth
from hsb.wire.client import FrameStream
from tests.support.inproc import until
from tests.support.logrec import RecordingLog
from tests.support.procs import SECRET
from tests.support.transports import RecordingTransport

pytestmark = pytest.mark.timeout(30)


def addr() -> str:
    return f"127.0.0.1:{free_port()}"


class Calls:
    """What a PeerLink told its owner: frames, downs (with the reason), ups, and problems."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.downs: list[str] = []
        self.ups = 0
        self.problems: list[str | None] = []

    def up(self) -> None:
        self.ups += 1


def link(
    name: str,
    listen: str,
    peer: str,
    calls: Calls | None = None,
    *,
    interval: float = 0.05,
    timeout: float = 0.5,
    hello: Callable[[], dict[str, Any]] | None = None,
) -> PeerLink:
    c = calls if calls is not None else Calls()
    return PeerLink(
        name=name,
        listen=listen,
        peer=peer,
        secret=SECRET,
        interval=interval,
        timeout=timeout,
        max_frame=1 << 20,
        on_frame=c.frames.append,
        on_down=c.downs.append,
        on_up=c.up,
        hello=hello or (lambda: {"t": "peer_hello", "name": name, "role": "standby", "state": "waiting", "instance": name}),
        on_problem=c.problems.append,
    )


class FakePeer:
    """The host at `host.peer`, scripted: connection n is answered as `plays[n]` (the last one
    for every connection after): "ok" (authenticates as `name`, then reads), "halfclose" (that,
    then a FIN while it reads on), "stall" (that, then reads nothing more), "error:CODE" (an
    error frame in place of auth_ok, then waits for the EOF), "garbage" (bytes that are no
    frame, in place of the challenge), or "silent" (no challenge; reads until the EOF)."""

    def __init__(self, plays: list[str], name: str = "host-b") -> None:
        self.plays = plays
        self.name = name
        self.conns = 0
        self.eofs = 0
        self.frames: list[dict[str, Any]] = []
        self.by_conn: list[list[dict[str, Any]]] = []  # the frames of each connection
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.handlers: list[asyncio.Task[Any]] = []
        self.done = asyncio.Event()  # (set at close: a stalled connection's handler ends)
        self.addr = ""

    async def start(self, port: int = 0) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.addr = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self.addr

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        play = self.plays[min(self.conns, len(self.plays) - 1)]
        self.conns += 1
        self.writers.append(writer)
        mine: list[dict[str, Any]] = []
        self.by_conn.append(mine)
        task = asyncio.current_task()
        assert task is not None
        self.handlers.append(task)
        fs = FrameStream(reader, writer)
        try:
            if play == "garbage":
                writer.write(b"SSH-2.0-OpenSSH_9.6\r\n" * 4)
                await writer.drain()
                await reader.read()
                return
            if play == "silent":
                await reader.read()
                return
            fs.send({"t": "challenge", "nonce": auth.new_nonce(), "server": self.name, "proto": LINK_PROTOCOL, "version": __version__})
            msg = await fs.recv(5.0)
            if play.startswith("error:"):
                fs.send({"t": "error", "code": play[6:], "msg": f"refused ({play[6:]})"})
                await fs.drain()
                await reader.read()  # (until the EOF: the refused side must close its end)
                self.eofs += 1
                return
            fs.send({"t": "auth_ok", "server": self.name, "mac": auth.answer(SECRET, msg["nonce"], auth.server_role("peer"), self.name)})
            await fs.drain()
            if play == "halfclose":
                writer.write_eof()
            if play == "stall":
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                await self.done.wait()
            while True:
                m = await fs.recv()
                self.frames.append(m)
                mine.append(m)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        self.done.set()
        for w in self.writers:
            w.close()
        if self.handlers:
            await asyncio.wait(self.handlers, timeout=5)


class SpyBackoff(Backoff):
    """The sending side's Backoff, noting each wait it was asked for, each reset, and whether the
    wake-up event was set at that moment."""

    made: list[SpyBackoff] = []
    link: PeerLink | None = None  # (the link whose wake-up event is noted)

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.waits: list[float] = []
        self.resets = 0
        self.woken_at_wait: list[bool] = []
        SpyBackoff.made.append(self)

    def next(self) -> float:
        v = super().next()
        self.waits.append(v)
        if self.link is not None:
            self.woken_at_wait.append(self.link.wake_connect.is_set())
        return v

    def reset(self) -> None:
        self.resets += 1
        super().reset()


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> RecordingLog:
    r = RecordingLog()
    monkeypatch.setattr(peer_mod, "log", r)
    monkeypatch.setattr(refusals_mod, "log", r)
    return r


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> type[SpyBackoff]:
    SpyBackoff.made = []
    monkeypatch.setattr(peer_mod, "Backoff", SpyBackoff)
    return SpyBackoff


@contextlib.asynccontextmanager
async def started(*links: PeerLink) -> AsyncIterator[None]:
    try:
        for x in links:
            await x.start()
        yield
    finally:
        for x in links:
            await x.close()


@contextlib.asynccontextmanager
async def fake(plays: list[str], name: str = "host-b") -> AsyncIterator[FakePeer]:
    f = FakePeer(plays, name)
    await f.start()
    try:
        yield f
    finally:
        await f.close()


async def raw_peer(pl: PeerLink, name: str = "host-b") -> FrameStream:
    """A connection to `pl`'s peer port authenticated as `name` (the peer's sending side, by hand)."""
    host, port = pl.bound.rsplit(":", 1)
    fs = await FrameStream.connect(host, int(port), timeout=2.0, max_frame=1 << 20)
    assert await fs.authenticate(SECRET, "peer", name, timeout=2.0) == pl.name
    return fs


def hello_of(name: str, **kw: Any) -> dict[str, Any]:
    return {"t": "peer_hello", "name": name, "role": "active", "state": "serving", "instance": f"{name}-1", **kw}


# -- sending side: notices --------------------------------------------------------------------


async def test_a_notice_sent_while_the_sending_connection_is_down_is_lost_and_counted_and_a_heartbeat_is_not(rec: RecordingLog) -> None:
    a = link("host-a", addr(), addr())  # not started: nothing connected
    assert a.send({"t": "hb", "role": "standby"}) is False
    assert a.lost_notices == 0 and not rec.events("peer_notice_lost")
    assert a.send({"t": "standby_ready", "startup_id": 1}) is False
    assert a.lost_notices == 1 and a.sent == 0
    [said] = rec.events("peer_notice_lost")
    assert said["notice"] == "standby_ready" and said["reason"] == "peer link down", said


async def test_a_notice_sent_while_up_is_sent_and_once_the_peer_closed_that_connection_it_is_lost(rec: RecordingLog) -> None:
    """...and the name proved on that connection is forgotten: until the host at host.peer proves
    one again, the receiving side takes a connection under any name when none is up."""
    async with fake(["ok", "error:auth_failed"]) as f:
        a = link("host-a", addr(), f.addr)
        async with started(a):
            await until(lambda: a.outbound is not None and f.frames, "host-a's sending connection up")
            assert a.peer_proved == "host-b"
            assert a.send({"t": "standby_ready", "startup_id": 7}) is True
            await until(lambda: any(m["t"] == "standby_ready" for m in f.frames), "the notice at the peer")
            assert a.sent >= 1 and a.lost_notices == 0
            f.writers[0].close()  # the peer drops that connection; the next one is refused (tried again in 5 s)
            await until(lambda: rec.events("peer_auth_failed"), "the second connection refused")
            assert a.outbound is None and a.peer_proved is None
            assert a.send({"t": "standby_ready", "startup_id": 8}) is False
            assert a.lost_notices == 1
            c = await raw_peer(a, "host-c")  # no name known and none up: taken
            try:
                await until(lambda: a.peer_name == "host-c", "host-c's connection taken")
            finally:
                await c.aclose()


class _Failing:
    """A sending connection whose transport raises as uvloop's does once it is closed."""

    def send(self, msg: dict[str, Any]) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")


async def test_a_notice_whose_write_fails_in_the_transport_is_not_sent_and_raises_nothing() -> None:
    a = link("host-a", addr(), addr())
    a.outbound = _Failing()  # type: ignore[assignment]
    assert a.send({"t": "standby_ready", "startup_id": 1}) is False
    assert a.sent == 0


async def test_an_exception_building_the_hello_leaves_no_sending_connection_and_the_sender_goes_on(rec: RecordingLog) -> None:
    def hello() -> dict[str, Any]:
        raise ValueError("no hello")

    async with fake(["ok"]) as f:
        a = link("host-a", addr(), f.addr, hello=hello)
        async with started(a):
            await until(lambda: len(rec.events("peer_sender_error")) >= 2, "the sender failing and trying again")
            assert "no hello" in rec.events("peer_sender_error")[0]["error"]
            assert a.outbound is None and a.send({"t": "standby_ready", "startup_id": 1}) is False and a.lost_notices == 1
            # each connection the failed hello was for is closed by host-a, as any other sending connection's end
            assert rec.events("peer_sending_link_down"), rec.entries


# -- sending side: refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("play", "event", "reason"),
    [
        ("error:wrong_peer", "peer_link_refused", "refused (wrong_peer)"),
        ("error:tls_name_mismatch", "peer_link_refused", "tls: "),
        ("error:auth_failed", "peer_auth_failed", "refused (auth_failed)"),
        ("error:version_mismatch", "peer_auth_failed", "refused (version_mismatch)"),
        ("garbage", "peer_link_wrong_port", "does not speak hsb's link protocol"),
    ],
)
async def test_a_refusal_is_said_once_tried_again_in_5_s_not_sooner_and_cleared_once_the_link_is_up(
    rec: RecordingLog, spy: type[SpyBackoff], play: str, event: str, reason: str
) -> None:
    calls = Calls()
    async with fake([play, "ok"]) as f:
        a = link("host-a", addr(), f.addr, calls)
        async with started(a):
            await until(lambda: rec.events(event), f"{event} said")
            [said] = rec.events(event)
            assert reason in said["reason"], said
            assert calls.problems and calls.problems[-1] is not None and reason in calls.problems[-1]
            assert spy.made and spy.made[0].waits == [], "a refusal waits 5 s, not the backoff"
            if play != "garbage":
                await until(lambda: f.eofs == 1, "the refused connection closed by host-a")
            assert f.conns == 1
            a.wake_connect.set()  # (the peer came up: tried again at once)
            await until(lambda: a.outbound is not None, "host-a's sending connection up")
            assert rec.events(event + "_cleared") and calls.problems[-1] is None, rec.entries
            assert spy.made[0].resets >= 1


async def test_a_port_that_never_sends_the_challenge_is_a_wrong_port_tried_again_on_the_backoff(
    rec: RecordingLog, spy: type[SpyBackoff], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_mod, "AUTH_TIMEOUT_S", 0.2)
    held: list[asyncio.StreamWriter] = []  # (kept open, and silent)
    silent = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    a = link("host-a", addr(), f"127.0.0.1:{silent.sockets[0].getsockname()[1]}")
    try:
        async with started(a):
            await until(lambda: rec.events("peer_link_wrong_port") and spy.made[0].waits, "the wrong port said, and a wait")
            assert "no challenge within" in rec.events("peer_link_wrong_port")[0]["reason"]
            assert spy.made[0].waits[0] < 1.0
    finally:
        silent.close()
        for w in held:
            w.close()


@pytest.mark.parametrize("before", [False, True])
async def test_no_challenge_where_the_peer_answered_before_is_no_wrong_port(rec: RecordingLog, monkeypatch: pytest.MonkeyPatch, before: bool) -> None:
    """The peer link's twin of the CP link's (the slow-links walk-through): once a link to that
    address was authenticated in this process, a later connection that gets no challenge is
    `peer_link_no_challenge` (the peer stuck or the network stalling), not a wrong port."""
    monkeypatch.setattr(peer_mod, "AUTH_TIMEOUT_S", 0.2)
    # (before: the first connection comes up and the peer half-closes it; the next is silent)
    async with fake(["halfclose", "silent"] if before else ["silent"]) as f:
        a = link("host-a", addr(), f.addr)
        async with started(a):
            said_as, not_as = ("peer_link_no_challenge", "peer_link_wrong_port") if before else ("peer_link_wrong_port", "peer_link_no_challenge")
            await until(lambda: rec.events(said_as), f"{said_as} said")
            assert "no challenge within" in rec.events(said_as)[0]["reason"], rec.events(said_as)
            assert ("answered before" in rec.events(said_as)[0]["msg"]) == before, rec.events(said_as)
            assert not rec.events(not_as), rec.entries
            assert f.conns >= (2 if before else 1)


class _Scripted(FrameStream):
    """FrameStream whose connect raises each of `raises` in turn, then connects."""

    raises: list[BaseException] = []

    @classmethod
    async def connect(cls, host: str, port: int, **kw: Any) -> FrameStream:
        if cls.raises:
            raise cls.raises.pop(0)
        return await FrameStream.connect(host, port, **kw)


def _cert_refused() -> ssl.SSLError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired")
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    exc.verify_message = "certificate has expired"
    return exc


@pytest.mark.parametrize(
    ("exc", "event", "reason", "refused"),
    [
        (_cert_refused, "peer_link_refused", "tls: certificate has expired", True),
        (lambda: socket.gaierror(-2, "Name or service not known"), "peer_address_unresolved", "Name or service not known", False),
    ],
)
async def test_a_certificate_refused_waits_5_s_and_a_name_not_resolved_the_backoff_each_said_and_cleared(
    rec: RecordingLog,
    spy: type[SpyBackoff],
    monkeypatch: pytest.MonkeyPatch,
    exc: Callable[[], BaseException],
    event: str,
    reason: str,
    refused: bool,
) -> None:
    monkeypatch.setattr(_Scripted, "raises", [exc()])
    monkeypatch.setattr(peer_mod, "FrameStream", _Scripted)
    async with fake(["ok"]) as f:
        a = link("host-a", addr(), f.addr)
        async with started(a):
            await until(lambda: rec.events(event), f"{event} said")
            assert reason in rec.events(event)[0]["reason"], rec.events(event)
            assert (spy.made[0].waits == []) is refused
            a.wake_connect.set()
            await until(lambda: a.outbound is not None, "host-a's sending connection up")
            assert rec.events(event + "_cleared"), rec.entries


async def test_a_wake_up_from_before_a_failed_connect_does_not_cut_its_wait_short(spy: type[SpyBackoff]) -> None:
    a = link("host-a", addr(), addr())  # nothing listens at host.peer
    SpyBackoff.link = a
    try:
        a.wake_connect.set()  # (an old wake-up: the peer's connection came before this attempt)
        async with started(a):
            await until(lambda: spy.made and spy.made[0].woken_at_wait, "a wait after a failed connect")
            assert spy.made[0].woken_at_wait[0] is False
    finally:
        SpyBackoff.link = None


async def test_an_unreachable_peer_is_tried_again_within_50_ms_at_first_and_within_half_a_second_after(spy: type[SpyBackoff]) -> None:
    a = link("host-a", addr(), addr())
    async with started(a):
        await until(lambda: spy.made and len(spy.made[0].waits) >= 6, "six waits")
        waits = spy.made[0].waits
        assert waits[0] <= 0.05 * 1.5 and max(waits) <= 0.5 * 1.5, waits


# -- sending side: the connection up ------------------------------------------------------------


async def test_the_sending_connection_up_says_so_carries_the_hello_then_heartbeats_of_its_brief(rec: RecordingLog) -> None:
    """The owner is told (`on_up`) as soon as the sending connection is up, before any frame
    came back; its peer_hello goes first, then heartbeats carrying the role, state, instance,
    ring_next and ring_write_failing of the hello, nothing else; the peer's name is said once."""
    calls = Calls()
    full = {"t": "peer_hello", "name": "host-a", "role": "active", "state": "serving", "instance": "a-1", "epoch": 3}
    full |= {"ring_next": 12, "ring_write_failing": "disk full", "startup_id": 5}
    async with fake(["ok"]) as f:
        a = link("host-a", addr(), f.addr, calls, hello=lambda: dict(full))
        async with started(a):
            await until(lambda: len(f.frames) >= 3, "the hello and two heartbeats")
            assert calls.ups == 1 and not a.up  # (the receiving side never came up)
            assert f.frames[0] == full
            hb = f.frames[1]
            assert hb == {"t": "hb", "role": "active", "state": "serving", "instance": "a-1", "ring_next": 12, "ring_write_failing": "disk full"}
            [known] = rec.events("peer_host_known")
            assert known["name"] == "host-b" and known["was"] is None


async def test_the_peers_name_is_said_again_only_when_another_name_answers(rec: RecordingLog) -> None:
    async with fake(["ok"]) as f:
        a = link("host-a", addr(), f.addr)
        async with started(a):
            await until(lambda: a.outbound is not None, "host-a's sending connection up")
            f.writers[0].close()
            await until(lambda: f.conns == 2 and a.outbound is not None, "a second connection up")
            f.name = "host-z"  # another host put at that address
            f.writers[1].close()
            await until(lambda: f.conns == 3 and a.peer_proved == "host-z", "the third connection up")
            assert [(e["name"], e["was"]) for e in rec.events("peer_host_known")] == [("host-b", None), ("host-z", "host-b")]


async def test_a_peer_that_half_closes_the_sending_connection_is_connected_to_again_at_once() -> None:
    async with fake(["halfclose", "ok"]) as f:
        a = link("host-a", addr(), f.addr)
        async with started(a):
            await until(lambda: f.conns == 2 and a.outbound is not None, "the EOF seen, a new connection up", timeout=5)
            await until(lambda: f.handlers[0].done(), "the first connection closed by host-a")
            assert len(f.by_conn[0]) <= 3, f"{len(f.by_conn[0])} frames sent after the EOF"  # (its hello, a heartbeat or two)


@pytest.mark.parametrize(("timeout", "user_timeout_ms"), [(1.0, 4000), (0.1, 2000)])
async def test_the_sending_connections_user_timeout_is_four_heartbeat_timeouts_and_at_least_2_s(timeout: float, user_timeout_ms: int) -> None:
    """The TCP user timeout is four heartbeat timeouts, and 2 s at least: with a heartbeat
    timeout of 0.1 s, four would be 0.4 s (a short stall of the network drops no connection)."""
    async with fake(["ok"]) as f:
        a = link("host-a", addr(), f.addr, timeout=timeout)
        async with started(a):
            await until(lambda: a.outbound is not None, "host-a's sending connection up")
            assert a.outbound is not None
            sock = a.outbound.writer.get_extra_info("socket")
            assert struct.unpack("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 4))[0] == user_timeout_ms


# -- receiving side -----------------------------------------------------------------------------


async def test_a_stranger_is_refused_by_the_proved_name_even_with_no_link_up_and_its_line_names_its_address(rec: RecordingLog) -> None:
    async with fake(["ok"]) as f:
        a = link("host-a", addr(), f.addr)
        async with started(a):
            await until(lambda: a.peer_proved == "host-b", "host-b's name proved")
            assert a.inbound is None
            host, port = a.bound.rsplit(":", 1)
            fs = await FrameStream.connect(host, int(port), timeout=2.0, max_frame=1 << 20)
            try:
                with pytest.raises(ConnectionError, match="wrong_peer"):
                    await fs.authenticate(SECRET, "peer", "host-c", timeout=2.0)
            finally:
                await fs.aclose()
            [why] = [e["reason"] for e in rec.events("peer_host_refused")]
            assert "host-c (from 127.0.0.1) connected" in why, why


async def test_the_proved_peer_replaces_a_stranger_taken_while_no_name_was_known(rec: RecordingLog) -> None:
    """host-c's connection was taken before host-a's sending side got host-b's proof (refused
    once, waiting its 5 s): host-c coming wakes the sender, host-b proves its name, and host-b's
    own connection then replaces host-c's."""
    async with fake(["error:auth_failed", "ok"]) as f:
        a = link("host-a", addr(), f.addr)
        async with started(a):
            await until(lambda: rec.events("peer_auth_failed"), "host-a's first connection refused")
            c = await raw_peer(a, "host-c")
            try:
                await until(lambda: a.peer_name == "host-c", "host-c taken")
                await until(lambda: a.peer_proved == "host-b", "host-a tried again at once, host-b proved", timeout=3)
                b = await raw_peer(a, "host-b")
                try:
                    await until(lambda: a.peer_name == "host-b", "host-b's connection taken")
                    await asyncio.wait_for(c.reader.read(), 5)  # (returns at the EOF: host-c's closed by host-a)
                    assert c.reader.at_eof()
                finally:
                    await b.aclose()
            finally:
                await c.aclose()


async def _refused_field(a: PeerLink, frame: dict[str, Any]) -> dict[str, Any]:
    fs = await raw_peer(a)
    try:
        fs.send(frame)
        return await fs.recv(5.0)
    finally:
        await fs.aclose()


@pytest.mark.parametrize(
    "frame",
    [
        {**hello_of("host-b"), "epoch": "1"},  # an optional field of the wrong type
        {"t": "peer_hello", "role": "active", "instance": "b"},  # a required one missing
        {"t": "standby_startup", "name": "host-b"},
        {"t": "active_stopping", "cp_confirmed": True},
        {"t": "file_mismatch", "startup_id": 1, "found": "x"},
    ],
)
async def test_a_frame_with_a_bad_field_is_refused_with_bad_fields_and_reaches_nobody(frame: dict[str, Any]) -> None:
    calls = Calls()
    a = link("host-a", addr(), addr(), calls)
    async with started(a):
        answer = await _refused_field(a, frame)
        assert answer["t"] == "error" and answer["code"] == "bad_fields", answer
        assert calls.frames == [] and calls.ups == 0 and not a.up


async def test_every_notice_with_its_fields_reaches_the_owner() -> None:
    calls = Calls()
    a = link("host-a", addr(), addr(), calls)
    sent = [
        hello_of("host-b", epoch=2, partner=None, startup_id=None, ring_next=4, ring_write_failing=None),
        {"t": "hb", "role": "active", "state": "serving", "instance": "host-b-1", "ring_next": None},
        {"t": "active_startup", "name": "host-b", "instance": "i", "epoch": 1},
        {"t": "standby_startup", "startup_id": 1},
        {"t": "batch_write_complete", "startup_id": 1, "generation": 2},
        {"t": "file_mismatch", "startup_id": 1, "found": None, "path": "/x"},
        {"t": "standby_ready", "startup_id": 1, "instance": "i"},
        {"t": "resync_request", "startup_id": 1, "reason": "r", "record": 3},
        {"t": "active_stopping", "name": "host-b", "cp_confirmed": False},
    ]
    async with started(a):
        fs = await raw_peer(a)
        try:
            for m in sent:
                fs.send(m)
            await until(lambda: len(calls.frames) == len(sent), "every notice at the owner")
            assert calls.frames == sent
        finally:
            await fs.aclose()


async def test_only_a_hello_or_heartbeat_brings_the_link_up_and_heartbeats_update_the_peers_role_state_and_instance() -> None:
    calls = Calls()
    a = link("host-a", addr(), addr(), calls)
    async with started(a):
        assert a.heartbeat_age() is None
        fs = await raw_peer(a)
        try:
            await until(lambda: a.inbound is not None, "host-b's connection authenticated")
            age = a.heartbeat_age()
            assert age is not None and age < 5.0  # (the authentication counts as heard from)
            fs.send({"t": "standby_ready", "startup_id": 1})
            await until(lambda: calls.frames, "the notice at the owner")
            assert not a.up and calls.ups == 0
            fs.send(hello_of("host-b"))
            fs.send({"t": "hb", "role": "standby", "state": "waiting", "instance": "host-b-2", "ring_next": 9})
            await until(lambda: len(calls.frames) == 3, "the hello and a heartbeat")
            assert a.up and calls.ups == 1
            assert a.peer_hello == {**hello_of("host-b"), "role": "standby", "state": "waiting", "instance": "host-b-2"}
        finally:
            await fs.aclose()
        await until(lambda: calls.downs, "the link down at the EOF")
        assert calls.downs == ["eof"] and not a.up and a.inbound is None


async def test_a_connection_that_ends_before_the_link_came_up_says_no_link_down() -> None:
    calls = Calls()
    a = link("host-a", addr(), addr(), calls)
    async with started(a):
        fs = await raw_peer(a)
        try:
            await until(lambda: a.inbound is not None, "host-b's connection authenticated")
        finally:
            await fs.aclose()
        await until(lambda: a.inbound is None and not a.accepted, "the connection gone at host-a")
        assert calls.downs == [] and not a.up


async def test_a_frame_from_a_connection_that_was_replaced_is_ignored() -> None:
    calls = Calls()
    a = link("host-a", addr(), addr(), calls)
    async with started(a):
        first = await raw_peer(a)
        second: FrameStream | None = None
        try:
            await until(lambda: a.inbound is not None, "the first connection authenticated")
            old = a.inbound
            assert old is not None
            second = await raw_peer(a)
            await until(lambda: a.inbound is not old, "the second connection taken")
            a._frame(old, hello_of("host-b", state="stale"))
            assert calls.frames == [] and a.peer_hello is None and not a.up
        finally:
            await first.aclose()
            if second is not None:
                await second.aclose()


async def test_a_silent_peer_is_declared_lost_within_the_heartbeat_timeout_and_its_connection_closed() -> None:
    calls = Calls()
    a = link("host-a", addr(), addr(), calls, interval=5.0, timeout=0.5)
    async with started(a):
        fs = await raw_peer(a)
        try:
            fs.send(hello_of("host-b"))
            await until(lambda: a.up, "the link up")
            await until(lambda: calls.downs, "the link declared lost", timeout=3)
            m = re.fullmatch(r"no heartbeat for (\d+\.\d+)s", calls.downs[0])
            # (checked every timeout/5 = 0.1 s: about 0.6 s; every interval, 5 s, if the two were mixed up.
            # The bound leaves room for a loaded machine's late timers)
            assert m is not None and 0.5 < float(m.group(1)) < 2.5, calls.downs
            assert a.inbound is None and not a.up
            await asyncio.wait_for(fs.reader.read(), 5)  # (returns at the EOF: closed by host-a)
            assert fs.reader.at_eof()
        finally:
            await fs.aclose()


async def test_an_unauthenticated_connection_is_given_at_least_2_s() -> None:
    a = link("host-a", addr(), addr(), interval=0.05, timeout=0.1)
    async with started(a):
        host, port = a.bound.rsplit(":", 1)
        fs = await FrameStream.connect(host, int(port), timeout=2.0, max_frame=1 << 20)
        try:
            assert (await fs.recv(2.0))["t"] == "challenge"
            t0 = asyncio.get_running_loop().time()
            await asyncio.wait_for(fs.reader.read(), 5)  # (returns at the EOF)
            assert fs.reader.at_eof() and asyncio.get_running_loop().time() - t0 > 1.5
        finally:
            await fs.aclose()


# -- close --------------------------------------------------------------------------------------


async def test_close_ends_every_connection_and_task_and_the_listener_and_the_port_can_be_taken_again() -> None:
    async with fake(["ok"]) as f:
        listen = addr()
        a = link("host-a", listen, f.addr, timeout=1.0)
        host, port = listen.rsplit(":", 1)
        streams: list[FrameStream] = []
        try:
            await a.start()
            pending = await FrameStream.connect(host, int(port), timeout=2.0, max_frame=1 << 20)  # still authenticating
            streams.append(pending)
            b = await raw_peer(a)
            streams.append(b)
            b.send(hello_of("host-b"))
            await until(lambda: a.up and a.outbound is not None and len(a.accepted) == 2, "both directions up, one more connection")
            out = a.outbound
            assert out is not None
            await a.close()
            assert out.writer.is_closing()
            await until(lambda: all(t.done() for t in a.tasks), "host-a's tasks ended")
            for fs in (pending, b):
                await asyncio.wait_for(fs.reader.read(), 2)  # (returns at the EOF)
                assert fs.reader.at_eof()
            with pytest.raises(OSError):
                await FrameStream.connect(host, int(port), timeout=2.0)
        finally:
            await a.close()  # (again, if the test failed before)
            for fs in streams:
                await fs.aclose()
        again = link("host-a", listen, f.addr)  # (its closed connections in TIME_WAIT on that port)
        async with started(again):
            assert again.bound == listen


async def test_a_connection_accepted_after_close_is_closed_at_once() -> None:
    a = link("host-a", addr(), addr())
    await a.close()
    proto = peer_mod.PeerInbound(a, secret=SECRET, auth_timeout=2.0, max_frame=1 << 20)
    t = RecordingTransport("127.0.0.1:1")
    proto.connection_made(t)  # type: ignore[arg-type]
    assert t.closing and t.frames() == [] and not a.accepted


async def test_a_peer_that_stops_reading_the_sending_connection_is_given_up_on_after_the_heartbeat_timeout() -> None:
    """Its heartbeats fill the socket's buffers; the drain waits at most `heartbeat_timeout`, then
    that connection is dropped and another one made (not left blocked until the kernel gives up)."""
    big = "x" * (900 * 1024)
    async with fake(["stall", "ok"]) as f:
        a = link("host-a", addr(), f.addr, interval=0.01, timeout=0.3, hello=lambda: hello_of("host-a", instance=big))
        async with started(a):
            await until(lambda: f.conns == 1 and a.outbound is not None, "the first sending connection up")
            assert a.outbound is not None
            a.outbound.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # (filled sooner)
            # (0.3 s of drain, then up to 1 s for the close; without the bound, the kernel's 2 s and more)
            await until(lambda: f.conns == 2, "a second connection after the first stalled", timeout=3)


async def test_each_frame_from_the_peer_counts_as_heard_from() -> None:
    calls = Calls()
    a = link("host-a", addr(), addr(), calls, timeout=5.0)
    async with started(a):
        fs = await raw_peer(a)
        try:
            await until(lambda: (a.heartbeat_age() or 0.0) > 0.3, "0.3 s since the authentication")
            fs.send({"t": "hb", "role": "standby"})
            await until(lambda: calls.frames, "the heartbeat at the owner")
            age = a.heartbeat_age()
            assert age is not None and age < 0.3, age
        finally:
            await fs.aclose()


async def test_a_tls_connection_cut_in_its_handshake_is_no_refusal_and_is_tried_again_on_the_backoff(
    rec: RecordingLog, spy: type[SpyBackoff], monkeypatch: pytest.MonkeyPatch
) -> None:
    cut = ssl.SSLEOFError(8, "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol")
    cut.reason = "UNEXPECTED_EOF_WHILE_READING"
    monkeypatch.setattr(_Scripted, "raises", [cut])
    monkeypatch.setattr(peer_mod, "FrameStream", _Scripted)
    async with fake(["ok"]) as f:
        a = link("host-a", addr(), f.addr)
        async with started(a):
            await until(lambda: a.outbound is not None, "host-a's sending connection up at the second attempt")
            assert len(spy.made[0].waits) == 1
            assert not rec.events("peer_link_refused") and not rec.events("peer_sender_error"), rec.entries


async def test_a_port_that_never_sends_the_challenge_is_given_up_on_after_2_s(rec: RecordingLog) -> None:
    held: list[asyncio.StreamWriter] = []  # (kept open, and silent)
    silent = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    a = link("host-a", addr(), f"127.0.0.1:{silent.sockets[0].getsockname()[1]}")
    try:
        async with started(a):
            await until(lambda: rec.events("peer_link_wrong_port"), "the wrong port said", timeout=5)
            assert "no challenge within 2 s" in rec.events("peer_link_wrong_port")[0]["reason"]
    finally:
        silent.close()
        for w in held:
            w.close()
