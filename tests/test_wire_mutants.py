"""hsb/wire (framing, the sans-IO connection, the authenticated link, the TLS handshake queue):
each test names a behaviour that a mutation audit of those modules found no test for. Raw bytes
are fed to the Decoder, and the protocols are driven in-process on stand-in transports."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import msgpack
import pytest

from hsb import LINK_PROTOCOL
from hsb.wire import auth
from hsb.wire.conn import CONNECTIONS_DROPPED, FRAMES_PER_TURN, peer_gone, require
from hsb.wire.framing import DEFAULT_MAX_FRAME, FLUSH_AT, FRAME_TOO_LARGE, Decoder, ProtocolError, encode, payload_max
from hsb.wire.handshakes import TURN_S, Handshakes
from tests.support.transports import RecordingTransport
from tests.test_auth_link import SECRET, Link, auth_frame, challenge, refusal, sent
from tests.test_auth_link import opened as auth_opened
from tests.test_conn_flow import Echo, errors, opened, until

pytestmark = pytest.mark.timeout(30)


def test_a_decoder_needs_a_positive_max_frame() -> None:
    """A max_frame of 0 is refused when the Decoder is made, not taken as a bound nothing fits."""
    with pytest.raises(ValueError):
        Decoder(0)
    assert Decoder(1).max_frame == 1


def test_a_first_frame_bound_above_max_frame_does_not_raise_it() -> None:
    """first_max bounds the first frame below max_frame, never above it: with max_frame 100 a
    first frame of 101 bytes is refused even though first_max says 4096."""
    body = msgpack.packb({"t": "hello", "d": b"x" * 90}, use_bin_type=True)
    assert len(body) > 100
    with pytest.raises(ProtocolError) as ei:
        Decoder(100, first_max=4096).feed(struct.pack(">I", len(body)) + body)
    assert ei.value.code == FRAME_TOO_LARGE and "maximum of 100" in ei.value.msg


def test_a_messages_data_may_take_all_but_1_kib_of_the_frame() -> None:
    """docs/protocol.md: a message is too large past max_frame - 1 KiB (half the frame for
    frames under 2 KiB), not before."""
    assert payload_max(DEFAULT_MAX_FRAME) == DEFAULT_MAX_FRAME - 1024
    assert payload_max(65536) == 64512
    assert payload_max(1500) == 750


def test_a_bye_of_exactly_64_bytes_is_found_in_unread_bytes() -> None:
    """has_type decodes the small frames that hold the mark, up to 64 bytes of body included."""
    for n in range(80):
        frame = encode({"t": "bye", "note": "x" * n})
        if len(frame) - 4 == 64:
            break
    else:
        raise AssertionError("no bye of 64 bytes")
    d = Decoder()
    d.first_done()
    assert d.has_type(frame, "bye")


def test_a_bye_at_the_head_of_a_frame_not_all_arrived_is_not_found() -> None:
    """A frame counts only once all its announced bytes are there: the head of a longer frame
    that happens to be a whole `bye` map is not a bye (the frame is bad once complete)."""
    bye = msgpack.packb({"t": "bye"})
    d = Decoder()
    d.first_done()
    assert not d.has_type(struct.pack(">I", len(bye) + 10) + bye, "bye")


def test_the_bytes_held_behind_a_first_frame_may_reach_their_bound_over_several_reads() -> None:
    """Held bytes arriving in later reads are refused only past held_max, not at it."""
    d = Decoder(100_000, first_max=300, hold=True)
    assert len(d.feed(encode({"t": "auth"}))) == 1
    assert d.feed(b"\0" * 299) == [] and d.feed(b"\0") == [] and d.buffered == 300
    with pytest.raises(ProtocolError) as ei:
        d.feed(b"\0")
    assert ei.value.code == FRAME_TOO_LARGE


@pytest.mark.parametrize("refuse", ["held", "frame"])
def test_a_refused_decoder_keeps_none_of_the_bytes_it_was_fed(refuse: str) -> None:
    """After a protocol error the bytes read are dropped (the connection is closing; a peer
    cannot leave megabytes kept behind its error), and feed refuses again with the same code."""
    if refuse == "held":
        d = Decoder(100_000, first_max=300, hold=True)
        d.feed(encode({"t": "auth"}))
        data = b"\0" * 301
    else:
        d = Decoder(1000)
        data = struct.pack(">I", 2000) + b"\0" * 500  # a frame over max_frame
    with pytest.raises(ProtocolError) as ei:
        d.feed(data)
    assert d.buffered == 0
    with pytest.raises(ProtocolError) as again:
        d.feed(encode({"t": "x"}))
    assert again.value.code == ei.value.code


def test_hold_without_a_first_bound_holds_nothing() -> None:
    """hold with held_max -1 (the first frame's bound) and no first_max has no bound to hold
    within: every frame is decoded as it comes."""
    d = Decoder(hold=True)
    assert d.feed(encode({"t": "auth"}) + encode({"t": "hb"})) == [{"t": "auth"}, {"t": "hb"}]


# -- hsb.wire.conn.FramedProtocol ---------------------------------------------------------------


async def test_every_frame_ahead_of_a_bad_one_is_handled_past_a_turns_share() -> None:
    """A read of more than FRAMES_PER_TURN good frames then a bad one: all the good ones are
    handled before the link is refused (the refusal does not wait for the next turn's share)."""
    p = Echo()
    t = opened(p)
    n = FRAMES_PER_TURN + 44
    p.data_received(b"".join(encode({"t": "ping", "n": i}) for i in range(n)) + struct.pack(">I", 1) + b"\xc1")
    assert p.pings == list(range(n))
    assert [e["code"] for e in errors(p, t)] == ["bad_msgpack"] and p.closed


async def test_a_closed_link_takes_no_more_bytes() -> None:
    """Bytes that arrive after this side closed the link are not decoded nor kept."""
    p = Echo()
    opened(p)
    p.close()
    p.data_received(encode({"t": "ping", "n": 1})[:-1])
    p.data_received(encode({"t": "ping", "n": 2}))
    assert p.decoder.buffered == 0 and not p._backlog and p.pings == []


async def test_a_lost_connection_keeps_none_of_the_frames_read_ahead() -> None:
    """Frames read but not handled yet (reading paused) are dropped with the connection."""
    p = Echo()
    opened(p)
    p.pause_reading()
    p.data_received(encode({"t": "ping", "n": 1}) * 3)
    assert len(p._backlog) == 3
    p.connection_lost(None)
    assert not p._backlog and p.pings == []


@pytest.mark.parametrize("exc", [ValueError, IndexError, OverflowError, RecursionError])
async def test_a_handler_failing_on_a_fields_value_refuses_that_link_with_bad_fields(exc: type[Exception]) -> None:
    """A handler that raises on a field of the wrong shape (any of FIELD_ERRORS, not only a
    missing key or a wrong type) gives a one-line bad_fields error and closes the link, no
    traceback out of data_received."""

    class Failing(Echo):
        def on_ping(self, msg: dict[str, Any]) -> None:
            raise exc("bad n")

    p = Failing()
    t = opened(p)
    p.data_received(encode({"t": "ping", "n": "x"}))
    errs = errors(p, t)
    assert [e["code"] for e in errs] == ["bad_fields"] and "ping" in errs[0]["msg"] and p.closed


async def test_frames_queued_go_out_at_once_every_flush_at_frames() -> None:
    """FLUSH_AT frames queued in one turn are written at once, the FLUSH_AT-th included, not
    at the end of the turn."""
    p = Echo()
    t = opened(p)
    for i in range(FLUSH_AT - 1):
        p.send({"t": "pong", "n": i})
    assert t.writes == 0
    p.send({"t": "pong", "n": FLUSH_AT})
    assert t.writes == 1 and len(t.frames()) == FLUSH_AT


class Stuck(RecordingTransport):
    """A transport whose peer reads nothing: `unsent` bytes stay queued."""

    def __init__(self, unsent: int) -> None:
        super().__init__("peer")
        self.unsent = unsent
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def abort(self) -> None:
        super().abort()
        self.aborted = True


async def test_a_closed_link_whose_peer_reads_nothing_is_dropped_after_the_linger() -> None:
    """Closed with bytes queued and none of them taken for CLOSE_LINGER_S: the connection is
    aborted (and counted), not left waiting for good."""
    p = Echo()
    t = Stuck(5000)
    opened(p, t)
    before = CONNECTIONS_DROPPED["test"]
    p.close()
    assert p._linger_handle is not None and not t.aborted
    p._linger_handle.cancel()
    p._linger_check(5000)  # (what the timer does CLOSE_LINGER_S later)
    assert t.aborted and CONNECTIONS_DROPPED["test"] == before + 1


async def test_an_abort_after_the_peer_closed_leaves_the_close_the_peers() -> None:
    """closed_here says who ended the link (the CP's arbitration reads it): an abort of a link
    the peer already closed does not make it this side's close; an abort of an open one does."""
    p = Echo()
    opened(p)
    p.connection_lost(ConnectionResetError())
    p.abort()
    assert p.closed and not p.closed_here
    q = Echo()
    opened(q)
    q.abort()
    assert q.closed and q.closed_here


async def test_a_deadline_set_again_replaces_the_one_before() -> None:
    """set_deadline twice: only the second deadline stands (the first timer is cancelled, so
    it cannot close the link at its earlier time)."""
    p = Echo()
    opened(p)
    p.set_deadline(0.5)
    first = p._deadline_handle
    p.set_deadline(60)
    assert first is not None and first.cancelled() and p._deadline_handle is not first
    p.clear_deadline()


async def test_a_peer_that_reads_nothing_times_out_even_while_its_reading_is_paused_here() -> None:
    """Reading paused by this side (a bound reached) and writes paused because the peer reads
    nothing: the silence is the peer's, so the idle timeout still closes it (not_reading),
    instead of being restarted for good."""

    class Pipelining(Echo):
        read_under_write_pressure = False

    p = Pipelining(idle_timeout=0.05)
    t = opened(p)
    p.pause_reading()
    p.pause_writing()
    await until(lambda: p.closed)
    p.write_paused = False
    assert [e["code"] for e in errors(p, t)] == ["not_reading"]


def test_a_bool_is_no_int_field() -> None:
    """require(..., int): true/false in an integer field is bad_fields naming the field (a bool
    is an int to isinstance); a field that may be a bool takes it."""
    with pytest.raises(ProtocolError) as ei:
        require({"t": "msg", "id": True}, "id", int)
    assert ei.value.code == "bad_fields" and "'id' must be int" in ei.value.msg
    assert require({"t": "msg", "id": 7}, "id", int) == 7
    assert require({"t": "x", "f": False}, "f", (int, bool)) is False


def test_a_peer_that_closed_its_side_is_gone_though_nothing_here_read_its_end() -> None:
    """peer_gone asks the kernel: a TCP peer that closed its side (CLOSE_WAIT here, nothing
    read) is gone, as is one that reset; a connected, silent one is not."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        gone = []
        for how in ("close", "reset", None):
            c = socket.create_connection(srv.getsockname())
            s, _ = srv.accept()
            with s, c:
                assert not peer_gone(s)
                if how == "reset":
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                if how is not None:
                    c.close()
                deadline = time.monotonic() + 5
                while how is not None and not peer_gone(s) and time.monotonic() < deadline:
                    time.sleep(0.005)
                gone.append(peer_gone(s))
        assert gone == [True, True, False]


async def test_a_peer_that_connects_and_never_sends_is_dropped_after_the_idle_timeout() -> None:
    """The idle timer runs from the connect, not from the first bytes: a silent peer gets the
    one-line idle_timeout error and is closed."""
    p = Echo(idle_timeout=0.05)
    t = opened(p)
    await until(lambda: p.closed)
    errs = errors(p, t)
    assert [e["code"] for e in errs] == ["idle_timeout"] and "nothing received" in errs[0]["msg"]


# -- hsb.wire.authlink.AuthServerProtocol -------------------------------------------------------


async def test_an_auth_frame_again_once_in_is_an_unknown_type_refusal() -> None:
    """Once authenticated, `auth` is no longer a frame the link takes: a second one gets the
    one-line unknown_type error and closes that link (it is not ignored)."""
    p, t = auth_opened()
    nonce = challenge(p, t)
    p.data_received(auth_frame(nonce))
    assert p.authed
    p.data_received(auth_frame(nonce))
    errs = [f for f in sent(p, t) if f["t"] == "error"]
    assert [e["code"] for e in errs] == ["unknown_type"] and "auth" in errs[0]["msg"] and p.closed


async def test_an_auth_without_proto_is_a_version_mismatch() -> None:
    """docs/protocol.md §2: an `auth` without `proto` counts as an older protocol and is
    refused with version_mismatch, whose line says so; the link is not taken."""
    p, t = auth_opened()
    nonce = challenge(p, t)
    p.data_received(encode({"t": "auth", "name": "host-a", "link": "host", "mac": auth.answer(SECRET, nonce, "host", "host-a")}))
    err = refusal(p, t)
    assert err["code"] == "version_mismatch" and "older than 0.4" in err["msg"] and "\n" not in err["msg"]


@pytest.mark.parametrize("size", [1, 16, auth.NONCE_BYTES + 1])
async def test_the_server_proves_itself_only_to_a_nonce_of_exactly_32_bytes(size: int) -> None:
    """docs/protocol.md §2: `auth_ok` carries `mac` only when the auth's `nonce` has exactly 32
    bytes; another length is no challenge to answer (the link is still taken)."""
    p, t = auth_opened()
    p.data_received(auth_frame(challenge(p, t), nonce=b"n" * size))
    ok = sent(p, t)[-1]
    assert p.authed and ok["t"] == "auth_ok" and "mac" not in ok


async def test_over_tls_a_name_its_certificate_does_not_name_is_refused() -> None:
    """A link whose certificate names other hosts than the one its auth claims (the secret
    right) gets the one-line tls_name_mismatch error, and the link is not taken."""

    class Named(Link):
        def tls_peer_names(self) -> set[str] | None:
            return {"host-b"}

    p = Named(auth_timeout=5.0)
    t = RecordingTransport("peer")
    p.connection_made(t)  # type: ignore[arg-type]
    p.data_received(auth_frame(challenge(p, t), name="host-a"))
    err = refusal(p, t)
    assert err["code"] == "tls_name_mismatch" and "host-b" in err["msg"] and "host-a" in err["msg"]
    q = Named(auth_timeout=5.0)
    tq = RecordingTransport("peer")
    q.connection_made(tq)  # type: ignore[arg-type]
    q.data_received(auth_frame(challenge(q, tq), name="host-b"))
    assert q.authed and sent(q, tq)[-1]["t"] == "auth_ok"


async def test_an_auth_whose_version_is_nested_too_deep_to_quote_is_refused_in_one_line() -> None:
    """The version_mismatch line quotes the peer's `version`: one nested too deep to be put in
    words (RecursionError) refuses that link as an auth of the wrong shape, no traceback."""
    deep: Any = 0
    for _ in range(1000):
        deep = [deep]
    p, t = auth_opened()
    p.data_received(auth_frame(challenge(p, t), proto=LINK_PROTOCOL + 1, version=deep))
    err = refusal(p, t)
    assert err["code"] == "auth_failed" and "wrong shape" in err["msg"] and "RecursionError" in err["msg"]


# -- hsb.wire.handshakes ------------------------------------------------------------------------


async def test_a_turn_that_spent_its_share_of_handshakes_runs_no_more_inline() -> None:
    """TURN_S is the most a turn runs inline: once spent reaches it, the next handshake step
    waits in the queue (and gets its turn)."""

    class Conn:
        turns = 0

        def tls_turn(self) -> None:
            self.turns += 1

    h = Handshakes()
    loop = asyncio.get_running_loop()
    c = Conn()
    assert h.admit(c, loop)
    h.spent = TURN_S
    assert not h.admit(c, loop) and h.deferred == 1
    await until(lambda: c.turns == 1)


async def test_another_loop_starts_the_queue_afresh_links_that_go_first_included() -> None:
    """A new event loop (a test's, a restarted process's) forgets the old loop's queue: a link
    that goes first is not counted behind ones queued on a loop that is gone."""

    class Conn:
        def tls_turn(self) -> None:
            pass

    h = Handshakes()
    loop = asyncio.get_running_loop()
    assert h.admit(Conn(), loop, first=True)
    h.spent = TURN_S
    assert not h.admit(Conn(), loop, first=True) and h.first == 1
    other = asyncio.new_event_loop()
    try:
        assert h.admit(Conn(), other, first=True) and h.first == 0
    finally:
        other.close()
