"""hsb.wire.conn.FramedProtocol driven in-process: what a read that ends in a bad frame still
hands on, what back-pressure holds and lets go, and the error frame a refused peer is sent."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from hsb.wire.conn import FramedProtocol
from hsb.wire.framing import encode
from tests.support.transports import RecordingTransport


class Echo(FramedProtocol):
    link = "test"
    dispatch = {"ping": "on_ping"}

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.pings: list[int] = []

    def on_ping(self, msg: dict[str, Any]) -> None:
        self.pings.append(msg.get("n", 0))
        if msg.get("answer"):
            self.send({"t": "pong", "n": msg.get("n", 0)})


def opened(p: FramedProtocol, t: RecordingTransport | None = None) -> RecordingTransport:
    """`p`'s connection made on `t` (a new recording transport if none)."""
    t = t or RecordingTransport("peer")
    p.connection_made(t)  # type: ignore[arg-type]
    return t


def errors(p: FramedProtocol, t: RecordingTransport) -> list[dict[str, Any]]:
    p.flush()
    return [f for f in t.frames() if f.get("t") == "error"]


async def test_frames_ahead_of_a_bad_one_in_the_same_read_are_handled_then_the_link_refused() -> None:
    p = Echo()
    t = opened(p)
    p.data_received(encode({"t": "ping", "n": 1}) + encode({"t": "ping", "n": 2}) + struct.pack(">I", 1) + b"\xc1")
    assert p.pings == [1, 2]
    assert [e["code"] for e in errors(p, t)] == ["bad_msgpack"] and p.closed


class Reading(RecordingTransport):
    """Records whether the protocol has the transport reading."""

    reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def until(cond: Any, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not cond():
        assert loop.time() - t0 < within, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_frames_read_ahead_wait_while_reading_is_paused_and_go_on_after() -> None:
    """Back-pressure is exact: a handler that pauses reading gets no more frames of that read
    until reading resumes, and then all of them, in order."""

    class Pausing(Echo):
        def on_ping(self, msg: dict[str, Any]) -> None:
            super().on_ping(msg)
            if msg["n"] == 2:
                self.pause_reading()

    p = Pausing()
    t = Reading("peer")
    p.connection_made(t)  # type: ignore[arg-type]
    p.data_received(b"".join(encode({"t": "ping", "n": i}) for i in range(1, 6)))
    await asyncio.sleep(0.05)  # an observation window: nothing more may be handled while paused
    assert p.pings == [1, 2] and not t.reading
    p.resume_reading()
    await until(lambda: len(p.pings) == 5)
    assert p.pings == [1, 2, 3, 4, 5] and t.reading


async def test_a_read_of_many_frames_is_handled_a_turn_at_a_time() -> None:
    """One busy peer cannot hold the loop: FRAMES_PER_TURN frames a turn, reading paused until
    the rest is handled, none lost or repeated."""
    from hsb.wire.conn import FRAMES_PER_TURN

    p = Echo()
    t = Reading("peer")
    p.connection_made(t)  # type: ignore[arg-type]
    n = FRAMES_PER_TURN * 2 + 10
    p.data_received(b"".join(encode({"t": "ping", "n": i}) for i in range(n)))
    assert len(p.pings) == FRAMES_PER_TURN and not t.reading
    await until(lambda: len(p.pings) == n and t.reading)
    assert p.pings == list(range(n))


async def test_a_peer_that_does_not_read_our_writes_is_not_read_until_it_does() -> None:
    """Links that stop reading a peer that reads nothing of theirs (terminals, admin): reading
    stops when our writes pause and starts again when they resume, and the frames it sent ahead
    are answered then. A host link (read_under_write_pressure) reads on."""

    class Strict(Echo):
        read_under_write_pressure = False

    p = Strict()
    t = Reading("peer")
    p.connection_made(t)  # type: ignore[arg-type]
    p.pause_writing()
    assert not t.reading
    p.data_received(encode({"t": "ping", "n": 1, "answer": True}))  # (already in the kernel's buffer)
    assert p.pings == []
    p.resume_writing()
    assert t.reading and p.pings == [1]
    p.flush()
    assert [f["t"] for f in t.frames()] == ["pong"]
    h = Echo()
    th = Reading("host")
    h.connection_made(th)
    h.pause_writing()
    h.data_received(encode({"t": "ping", "n": 1}))
    assert th.reading and h.pings == [1]


async def test_a_frame_written_now_goes_after_those_already_queued() -> None:
    p = Echo()
    t = opened(p)
    p.send({"t": "pong", "n": 1})
    p.write_now(encode({"t": "pong", "n": 2}))
    p.send({"t": "pong", "n": 3})
    p.flush()
    assert [f["n"] for f in t.frames()] == [1, 2, 3]


async def test_a_frozen_link_stays_unread_whatever_asks_it_to_read_again() -> None:
    p = Echo()
    t = Reading("peer")
    p.connection_made(t)  # type: ignore[arg-type]
    p.pause_reading()
    p.data_received(encode({"t": "ping", "n": 1}))  # (read before the pause took effect)
    p.freeze()
    p.resume_reading()
    await asyncio.sleep(0.05)  # an observation window: nothing may be handled
    assert not t.reading and p.pings == []


async def test_a_frame_sent_soon_goes_alone_in_time_or_with_the_next_frame_in_one_write() -> None:
    p = Echo()
    t = opened(p)
    p.send_soon({"t": "welcome"}, 0.05)
    await until(lambda: t.writes == 1, within=2.0)
    assert [f["t"] for f in t.frames()] == ["welcome"]
    p.send_soon({"t": "welcome"}, 5.0)
    p.send({"t": "open"})
    await until(lambda: t.writes == 2, within=2.0)
    assert [f["t"] for f in t.frames()] == ["welcome", "welcome", "open"]


async def test_a_bad_frame_behind_one_that_closed_the_link_is_not_counted_against_it() -> None:
    """A peer that said bye (the link closed) and sent junk behind it in the same read left
    normally: no protocol error is logged or counted for the junk."""
    from hsb.wire.conn import PROTOCOL_ERRORS

    class Leaving(Echo):
        dispatch = {"ping": "on_ping", "bye": "on_bye"}

        def on_bye(self, msg: dict[str, Any]) -> None:
            self.close()

    before = PROTOCOL_ERRORS[("test", "bad_msgpack")]
    p = Leaving()
    t = opened(p)
    p.data_received(encode({"t": "ping"}) + encode({"t": "bye"}) + struct.pack(">I", 1) + b"\xc1")
    assert p.closed and p.pings == [0] and errors(p, t) == []
    assert PROTOCOL_ERRORS[("test", "bad_msgpack")] == before


async def test_a_missing_field_is_a_bad_fields_error_naming_the_field() -> None:
    class Needs(Echo):
        def on_ping(self, msg: dict[str, Any]) -> None:
            from hsb.wire.conn import require

            self.pings.append(require(msg, "n", int))

    p = Needs()
    t = opened(p)
    p.data_received(encode({"t": "ping"}))
    err = errors(p, t)
    assert [e["code"] for e in err] == ["bad_fields"] and err[0]["msg"] == "ping: missing field 'n'"


async def test_a_connection_whose_transport_is_closing_is_gone() -> None:
    """A failed write closes the transport before connection_lost comes: the peer is taken as
    gone then, not asked of a kernel socket that may already be gone with it."""
    p = Echo()
    t = opened(p)
    assert not p.peer_gone()
    t.closing = True  # (as a failed write leaves it)
    assert p.peer_gone()
