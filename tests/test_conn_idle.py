"""The idle timeout of every framed link (hsb.wire.conn): one timer per connection that is not made
again for every read, and still closes a silent peer on time, a shortened timeout included."""

from __future__ import annotations

import asyncio
from typing import Any

from hsb.wire.conn import FramedProtocol
from hsb.wire.framing import encode
from tests.support.transports import CountingTransport


class Echo(FramedProtocol):
    link = "test"
    dispatch = {"ping": "on_ping"}

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.pings = 0

    def on_ping(self, msg: dict[str, Any]) -> None:
        self.pings += 1


async def until_closed(p: FramedProtocol, within: float) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not p.transport.closing:  # type: ignore[union-attr]
        assert loop.time() - t0 < within, f"still open after {within} s"
        await asyncio.sleep(0.01)
    return loop.time() - t0


async def test_a_talking_peer_keeps_one_timer_and_a_silent_one_is_closed_on_time() -> None:
    loop = asyncio.get_running_loop()
    p = Echo(idle_timeout=0.5)
    p.connection_made(CountingTransport("peer"))  # type: ignore[arg-type]
    timers = [p._idle_handle]  # the objects kept, so that no id is reused
    last = loop.time()
    for _ in range(12):  # 1.2 s of talk, longer than the timeout
        assert not p.transport.closing  # type: ignore[union-attr]
        p.data_received(encode({"t": "ping"}))
        last = loop.time()
        if p._idle_handle is not timers[-1]:
            timers.append(p._idle_handle)
        await asyncio.sleep(0.1)
    # not a timer per read: the first, and one each time it fired early (every ~0.5 s)
    assert len(timers) <= 5, len(timers)
    assert p.pings == 12
    await until_closed(p, 5.0)
    closed_after = loop.time() - last
    assert closed_after >= 0.5 - 0.002, closed_after  # never before the timeout (uvloop: whole ms)
    assert closed_after <= 2.0, closed_after


async def test_a_longer_timeout_set_later_does_not_close_at_the_old_deadline() -> None:
    loop = asyncio.get_running_loop()
    p = Echo(idle_timeout=0.2)  # as a link before its auth, then the longer idle timeout after it
    p.connection_made(CountingTransport("peer"))  # type: ignore[arg-type]
    p.set_idle_timeout(1.0)
    t0 = loop.time()
    while loop.time() - t0 < 0.5:  # past the old deadline: the first timer fires and sleeps on
        assert not p.transport.closing, loop.time() - t0  # type: ignore[union-attr]
        await asyncio.sleep(0.02)
    await until_closed(p, 5.0)
    took = loop.time() - t0
    assert 1.0 - 0.002 <= took <= 2.5, took


async def test_a_shorter_timeout_takes_effect_at_once_and_none_turns_it_off() -> None:
    p = Echo(idle_timeout=30.0)
    p.connection_made(CountingTransport("peer"))  # type: ignore[arg-type]
    p.set_idle_timeout(0.2)
    took = await until_closed(p, 2.0)  # not 30 s
    assert took <= 1.5, took  # (a loaded machine's margin; broken, it is not closed in 2 s)
    q = Echo(idle_timeout=0.2)
    q.connection_made(CountingTransport("peer"))  # type: ignore[arg-type]
    q.set_idle_timeout(None)
    assert q._idle_handle is None
    q.data_received(encode({"t": "ping"}))
    assert q._idle_handle is None and q.pings == 1


async def test_a_frame_begun_and_stalled_is_closed_after_the_partial_timeout() -> None:
    p = Echo(partial_timeout=0.2)
    p.connection_made(CountingTransport("peer"))  # type: ignore[arg-type]
    assert p._idle_handle is None  # nothing buffered, no idle timeout: no timer
    frame = encode({"t": "ping"})
    p.data_received(frame[:3])
    assert p._idle_handle is not None
    took = await until_closed(p, 2.0)
    assert took <= 1.5, took  # (a loaded machine's margin; broken, it is not closed in 2 s)
    q = Echo(partial_timeout=0.2)
    q.connection_made(CountingTransport("peer"))
    q.data_received(frame[:3])
    q.data_received(frame[3:])  # the frame completed: no timer while nothing is buffered
    assert q._idle_handle is None and q.pings == 1


def test_a_dispatch_table_naming_no_method_is_refused_when_the_class_is_made() -> None:
    import pytest

    with pytest.raises(TypeError, match="on_pong"):

        class Broken(FramedProtocol):
            dispatch = {"ping": "on_ping", "pong": "on_pong"}

            def on_ping(self, msg: dict[str, Any]) -> None:
                pass


async def test_a_peer_that_reads_nothing_of_ours_is_told_so_not_that_it_was_silent() -> None:
    """A client that does not read its replies: its writes fill, this link stops reading it, and
    the idle timeout fired with "nothing received" (it sent plenty). It says what is wrong."""
    from tests.support.transports import RecordingTransport

    class Strict(Echo):
        read_under_write_pressure = False  # (as the terminal and admin links: a peer not reading is not read)

    p = Strict(idle_timeout=0.2)
    p.connection_made(RecordingTransport("peer"))  # type: ignore[arg-type]
    p.data_received(encode({"t": "ping"}))
    p.pause_writing()  # our replies are not read: the kernel's buffer is full
    await until_closed(p, 5.0)
    p.flush()
    errors = [f for f in p.transport.frames() if f.get("t") == "error"]  # type: ignore[union-attr]
    assert [e["code"] for e in errors] == ["not_reading"] and "read the replies" in errors[0]["msg"], errors


class ReadingTransport(CountingTransport):
    """Records whether the protocol has the transport reading."""

    reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def test_a_link_that_reads_under_write_pressure_reads_on_after_a_burst_yielded() -> None:
    """A host link: 300 frames in one read are handled in turns (reading paused meanwhile), and
    our writes to that host pause just then (a flip re-delivering). Reading stayed off until the
    writes resumed: the host's heartbeats went unread, the CP took the live active for silent
    and renewed no lease."""
    p = Echo()  # (read_under_write_pressure = True: the host and peer links)
    t = ReadingTransport("peer")
    p.connection_made(t)  # type: ignore[arg-type]
    p.data_received(b"".join(encode({"t": "ping"}) for _ in range(300)))
    p.pause_writing()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while p.pings < 300 or p._yielding:
        assert loop.time() - t0 < 5, p.pings
        await asyncio.sleep(0.01)
    assert t.reading, "the link stopped reading while its writes were paused"


async def test_a_frame_begun_while_our_writes_are_paused_does_not_close_a_terminal_that_reads_slowly() -> None:
    """A terminal link (reads nothing while it does not read ours) with no idle timeout: a frame
    begun when our writes paused fired the partial-frame timer and closed it (not_reading after
    5 s), while one with no frame begun was kept for ever. The stall is ours: it is kept."""

    class Strict(Echo):
        read_under_write_pressure = False

    p = Strict(idle_timeout=None, partial_timeout=0.2)
    p.connection_made(CountingTransport("peer"))  # type: ignore[arg-type]
    frame = encode({"t": "ping"})
    p.data_received(frame + frame[:3])
    p.pause_writing()
    await asyncio.sleep(0.5)  # an observation window: 2.5 partial timeouts
    assert not p.transport.closing  # type: ignore[union-attr]
    p.resume_writing()
    await until_closed(p, 5.0)  # (reading again, the frame still unfinished: the partial timer is its own again)
