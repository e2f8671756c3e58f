"""The CP's terminal side at its edges, in-process (from a mutation audit of hsb.cp.terminal_side,
terminal_link, logons, adopt and tickle: each test here failed on a mutant the other tests let
pass): a reply whose connection is found gone, or closed, as it is written is kept ("r") for
the terminal's next logon, once, or is nobody's after its bye."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host, journal_kinds, recording_terminal
from tests.support.keptreplies import until

pytestmark = pytest.mark.timeout(30)


def frames(p: Any) -> list[dict[str, Any]]:
    p.flush()
    return list(p.transport.frames())


def gone_as_the_reply_is_written(p: Any, looks_before: int) -> None:
    """`p` not read (its held bound), and its peer found gone only at `_to_terminal`'s look,
    after `looks_before` looks of the reply path's own (the kernel took the reset in between)."""
    p.pause_reading()
    looks = iter((False,) * looks_before)
    p.peer_gone = lambda: next(looks, True)


async def test_a_reply_whose_connection_is_found_gone_as_it_is_written_is_kept_for_the_next_hello(tmp_path: Path) -> None:
    """A terminal that does not resume: its reply, found with nowhere to go as it was written
    (its discard durable already), is kept with a record of its own ("r", which a restart
    reads), never in memory only, and its next hello without last_reply settles it ("d") and
    gets it once, marked resent."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", None)
    cp.host_open(h, "T00001", "active", {})
    p.data_received(encode({"t": "msg", "id": 1, "data": b"m"}))
    gone_as_the_reply_is_written(p, 2)  # (`_reply`'s, `_replied`'s)
    kinds = journal_kinds(cp)
    cp.host_reply(h, "T00001", 1, "r1")
    term = cp.terms["T00001"]
    assert term.conn is None and [f for f in frames(p) if f["t"] == "reply"] == []
    assert kinds == ["d", "r"] and list(term.replies) == [1] and not term.held, (kinds, term.replies)
    q = recording_terminal(cp, "T00001", None)
    assert [(f["id"], f["data"], f.get("resent")) for f in frames(q) if f["t"] == "reply"] == [(1, "r1", True)]
    assert not term.held and not term.replies and kinds[2:] == ["d"], kinds  # (settled before it went)
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_resuming_terminals_reply_found_gone_as_it_is_written_goes_once_marked(tmp_path: Path) -> None:
    """The same for a resuming terminal: its reply is kept (never sent), and a next hello without
    last_reply gets it once, marked resent; not a second time unmarked."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    p.data_received(encode({"t": "msg", "id": 1, "data": b"m"}))
    gone_as_the_reply_is_written(p, 1)  # (`_reply`'s)
    cp.host_reply(h, "T00001", 1, "r1")
    assert cp.terms["T00001"].conn is None
    q = recording_terminal(cp, "T00001", None)
    assert [(f["id"], f.get("resent")) for f in frames(q) if f["t"] == "reply"] == [(1, True)]
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_reply_to_a_closed_connection_not_yet_lost_is_owed_not_written(tmp_path: Path) -> None:
    """A connection closed (aborted after a defect, say) and not yet lost is still its
    terminal's: a reply for it is not written into it (it would be lost unseen) but owed."""
    cp = cp_core(tmp_path, 2)
    p = recording_terminal(cp, "T00001", None)
    term = cp.terms["T00001"]
    p.close()
    assert term.conn is p and p.closed
    n = len(p.transport.data)
    assert not cp._to_terminal(term, {"t": "reply", "id": 1, "data": "r1"})
    assert len(p.transport.data) == n and term.conn is p


async def test_a_reply_owed_to_a_run_that_logged_off_goes_to_no_later_run(tmp_path: Path) -> None:
    """A reply to a run that said bye, its connection closed by the CP (a timer, say) and not
    yet lost (its message the logoff's, id 1 = logoff_upto once it goes) is the logoff's:
    counted replies_after_logoff, kept for nobody, never handed to the next run under that name."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", None)
    cp.host_open(h, "T00001", "active", {})
    term = cp.terms["T00001"]
    p.data_received(encode({"t": "msg", "id": 1, "data": b"m"}))
    p.data_received(encode({"t": "bye"}))
    p.close()  # (a timer, say) before its message is answered
    assert term.leaving and term.conn is p
    cp.host_reply(h, "T00001", 1, "r1")
    assert cp.counters["replies_after_logoff"] == 1 and not term.replies and not term.held
    p.connection_lost(None)
    assert term.logoff_upto == 1 and not term.replies
    q = recording_terminal(cp, "T00001", None)
    assert [f for f in frames(q) if f["t"] == "reply"] == []
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_reply_whose_connection_is_found_gone_after_a_bye_is_counted_for_nobody(tmp_path: Path) -> None:
    """Its bye read, its message still held, its connection found gone as the reply is written:
    the reply has nobody to go to, counted replies_after_logoff, and kept for no later run."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", None)
    cp.host_open(h, "T00001", "active", {})
    p.data_received(encode({"t": "msg", "id": 1, "data": b"m"}))
    p.data_received(encode({"t": "bye"}))
    term = cp.terms["T00001"]
    assert term.leaving and term.conn is p
    gone_as_the_reply_is_written(p, 2)
    cp.host_reply(h, "T00001", 1, "r1")
    assert term.conn is None and cp.counters["replies_after_logoff"] == 1
    assert not term.replies and not term.held
    q = recording_terminal(cp, "T00001", None)
    assert [f for f in frames(q) if f["t"] == "reply"] == []
    h.connection_lost(None)
    await asyncio.sleep(0)


def connected(cp: Any, *frames_in: dict[str, Any]) -> Any:
    """A terminal connection that wrote `frames_in` (its hello first), read by the CP."""
    from hsb.cp.terminal_link import TerminalProtocol
    from tests.support.transports import RecordingTransport, stand_in

    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    p.connection_made(stand_in(RecordingTransport("T00001")))
    p.data_received(b"".join(encode(f) for f in frames_in))
    return p


HELLO = {"t": "hello", "terminal": "T00001", "last_reply": 0}


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ({"t": "hello", "terminal": "T00001", "last_reply": True}, "bad_hello"),  # not an id: True would claim reply 1
        ({"t": "hello", "terminal": "T00001", "last_reply": -1}, "bad_hello"),
        (HELLO, "bad_hello"),  # a second hello
        ({"t": "msg", "id": 0, "data": "x"}, "bad_fields"),  # (taken, it was acknowledged and never delivered)
        ({"t": "confirm", "id": -1}, "bad_fields"),
        ({"t": "confirm", "id": 1, "seen": -1}, "bad_fields"),
    ],
    ids=["last_reply-bool", "last_reply-negative", "hello-twice", "msg-id-0", "confirm-negative", "seen-negative"],
)
async def test_a_malformed_frame_is_refused_with_its_code_and_nothing_taken(tmp_path: Path, bad: dict[str, Any], code: str) -> None:
    """Each refused with its error code and the connection closed: not taken as something else,
    not ignored (docs/protocol.md §1)."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    cp.host_open(h, "T00001", "active", {})
    first = [] if bad["t"] == "hello" and bad is not HELLO else [HELLO]
    p = connected(cp, *first, bad)
    got = frames(p)
    assert [f["code"] for f in got if f["t"] == "error"] == [code] and p.closed, got
    assert [f for f in got if f["t"] == "ack"] == [] and not cp.terms["T00001"].held
    p.clear_deadline()
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_frames_held_back_behind_unconfirmed_replies_go_before_those_read_after_the_confirm(tmp_path: Path) -> None:
    """Kept replies at the bound: the messages read meanwhile wait (parked); the confirm that
    frees room comes in one read with newer messages, and the waiting ones are taken first, in
    id order: none refused as below one accepted (bad_id), none acknowledged out of order."""
    bound = 4
    cp = cp_core(tmp_path, 2, cp=f"held_bound = {bound}\n")
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    p.data_received(b"".join(encode({"t": "msg", "id": i, "data": f"m{i}"}) for i in range(1, 2 * bound + 1)))
    for i in range(1, bound + 1):
        cp.host_reply(h, "T00001", i, f"r{i}")
    await until(lambda: p.parked is not None and len(p.parked) == bound or p.closed, "the second half read and held back")
    assert [m["id"] for m in p.parked] == list(range(bound + 1, 2 * bound + 1))
    more = range(2 * bound + 1, 2 * bound + 3)
    p.data_received(encode({"t": "confirm", "id": bound}) + b"".join(encode({"t": "msg", "id": i, "data": f"m{i}"}) for i in more))
    await until(lambda: cp.terms["T00001"].last_acked >= 2 * bound or p.closed, "the waiting messages taken")
    for i in range(bound + 1, 2 * bound + 1):  # (at the held bound again: the newer ones wait for these)
        cp.host_reply(h, "T00001", i, f"r{i}")
    cp.terminal_confirm(cp.terms["T00001"], 2 * bound)
    await until(lambda: cp.terms["T00001"].last_acked == 2 * bound + 2 or p.closed, "every message read")
    got = frames(p)
    assert [f for f in got if f["t"] == "error"] == [] and not p.closed, got
    assert [f["id"] for f in got if f["t"] == "ack"] == list(range(1, 2 * bound + 3))
    assert list(cp.terms["T00001"].held) == list(more)
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_waiting_hello_whose_terminal_connected_again_is_dropped_unwelcomed(tmp_path: Path) -> None:
    """In a logon storm a hello waits its turn; its terminal gives up and connects again (the
    first connection's end unread, the kernel knows it): at its turn the first is dropped, never
    welcomed, and the active asked for one session, not one opened for a dead connection and
    closed as a disconnect when the newer hello's turn comes."""
    from hsb.cp import logons

    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active", record=True)
    cp.logons.inline = logons.BURST  # this turn's inline logons used up: the hellos wait
    first = connected(cp, HELLO)
    first.peer_gone = lambda: True  # (its terminal closed it: unread here)
    second = connected(cp, HELLO)
    assert first.term is None and second.term is None and len(cp.logons.queue) == 2
    await until(lambda: not cp.logons.queue, "the queue worked off")
    assert first.closed and cp.terms["T00001"].conn is second and not second.closed
    assert [f["t"] for f in frames(first)] == []
    assert [f["t"] for f in frames(second)][:1] == ["welcome"]
    a.flush()
    to_host = [(f["t"], f.get("terminal")) for f in a.transport.frames() if f["t"] in ("session_request", "session_closed")]
    assert to_host == [("session_request", "T00001")], to_host
    a.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_session_the_active_names_twice_is_adopted_once(tmp_path: Path) -> None:
    """The first naming stands: the terminal, back already, is told its session is open once,
    and the adoption counts one session."""
    cp = cp_core(tmp_path, 2, cp="resume_window = 5\n")
    a = fake_host(cp, "host-a")
    a.adopts = True
    cp.host_register(a, "active", 1)
    assert a.adopting
    t = recording_terminal(cp, "T00001")  # back before its session is named
    cp.host_adopt(a, [("T00001", {"n": 1})], last=False)
    cp.host_adopt(a, [("T00001", {"n": 2})], last=True)
    opened = [f for f in frames(t) if f["t"] == "session"]
    assert [f["state"] for f in opened] == ["open"], opened
    assert cp.terms["T00001"].active.attrs == {"n": 1} and cp.counters["adopted"] == 1
    a.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_message_held_before_its_session_is_adopted_is_delivered_at_the_adoption(tmp_path: Path) -> None:
    """A terminal back before the active names its session sends a message (held: no session
    yet): the naming hands it to the active at once; else it waited for the terminal's next
    message, and for ever if none came."""
    cp = cp_core(tmp_path, 2, cp="resume_window = 5\n")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    t = recording_terminal(cp, "T00001")
    t.data_received(encode({"t": "msg", "id": 1, "data": "m1"}))
    assert [f["id"] for f in frames(t) if f["t"] == "ack"] == [1]
    cp.host_adopt(a, [("T00001", {})], last=False)
    a.flush()
    assert [(f["terminal"], f["id"]) for f in a.transport.frames() if f["t"] == "deliver"] == [("T00001", 1)]
    a.connection_lost(None)
    await asyncio.sleep(0)


async def test_the_handed_floor_never_goes_down(tmp_path: Path) -> None:
    """An active says up to which id it handed a terminal's messages to its service, in more than
    one frame: a lower figure after a higher one leaves the higher, and a message below it still
    goes marked redelivered (the service may have it)."""
    cp = cp_core(tmp_path, 2)
    cp.note_handed({"T00001": 5})
    cp.note_handed({"T00001": 3})
    assert cp.terms["T00001"].handed_floor == 5
    a = fake_host(cp, "host-a", "active", record=True)
    t = recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    t.data_received(encode({"t": "msg", "id": 4, "data": "m4"}))
    a.flush()
    assert [(f["id"], f["redelivered"]) for f in a.transport.frames() if f["t"] == "deliver"] == [(4, True)]
    a.connection_lost(None)
    await asyncio.sleep(0)


async def test_an_adopted_session_whose_terminal_came_back_does_not_expire(tmp_path: Path) -> None:
    """Sessions adopted for terminals not back are closed resume_window later if they stay
    away; one whose terminal came back in time stays open at the active."""
    cp = cp_core(tmp_path, 2, cp="resume_window = 0.05\n")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    cp.host_adopt(a, [("T00001", {}), ("T00002", {})], last=True)
    t = recording_terminal(cp, "T00001")  # back in time; T00002 stays away
    await until(lambda: cp.counters["adopted_expired"] > 0, "the window's end", within=5.0)
    a.flush()
    closed = [f["terminal"] for f in a.transport.frames() if f["t"] == "session_closed"]
    assert closed == ["T00002"] and cp.counters["adopted_expired"] == 1
    assert cp.terms["T00001"].active is not None and not t.closed
    a.connection_lost(None)
    await asyncio.sleep(0)


async def test_an_adopted_session_of_a_terminal_the_cp_does_not_know_is_closed_at_the_active(tmp_path: Path) -> None:
    """The active names a session for a terminal not in the CP's table (removed by a reload,
    say): told to close it, not left open at the active for good."""
    cp = cp_core(tmp_path, 2, cp="resume_window = 5\n")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    cp.host_adopt(a, [("T99999", {})], last=True)
    a.flush()
    assert [f["terminal"] for f in a.transport.frames() if f["t"] == "session_closed"] == ["T99999"]
    a.connection_lost(None)
    await asyncio.sleep(0)


def test_a_tickle_list_of_unknown_origin_is_not_taken_for_this_machines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where neither the list nor this machine can say where it was written (no /proc: origin
    ""), the list is not taken for one written here, whose connections this kernel reset
    itself: it is tickled."""
    import msgpack

    from hsb.cp import tickle

    monkeypatch.setattr(tickle, "origin", lambda: "")
    doc = {"v": 1, "generation": 1, "origin": "", "conns": [["10.0.0.9", 7000, "10.1.0.6", 40002, "T00001"]]}
    (tmp_path / tickle.list_name(1)).write_bytes(msgpack.packb(doc))
    assert tickle.previous_list(tmp_path, 2) == (1, [("10.0.0.9", 7000, "10.1.0.6", 40002, "T00001")], False)


async def test_a_tickle_list_that_failed_to_be_written_is_written_again(tmp_path: Path) -> None:
    """A failed write (the shared storage away) leaves the list changed: the next tick writes it
    once it can, or the next CP would tickle an older list, or none."""
    import time

    from hsb.cp import tickle

    d = tmp_path / "j"
    tl = tickle.TickleList(d, 3)  # (its directory not there yet)
    tl.opened(object(), ("10.0.0.9", 7000), ("10.1.0.5", 40001))
    tl.tick(time.monotonic())
    await until(lambda: not tl.writing, "the write tried")
    assert tl.written == 0 and tl.write_error is not None
    d.mkdir()
    tl.tick(time.monotonic() + 2 * tickle.WRITE_EVERY_S)
    assert tl.writing, "the failed list not written again"
    await until(lambda: tl.written == 1, "the list written again")
    assert tl.write_error is None and tl.status()["listed"] == 1
    tl.close()


async def test_a_connections_name_is_written_to_the_tickle_list(tmp_path: Path) -> None:
    """Its hello names the connection: the list is written again with the name, which the next
    CP needs to tickle it again if it is not back (`not_back` passes over unnamed ones)."""
    import time

    import msgpack

    from hsb.cp import tickle

    tl = tickle.TickleList(tmp_path, 3)
    key = object()
    tl.opened(key, ("10.0.0.9", 7000), ("10.1.0.5", 40001))
    tl.tick(time.monotonic())
    await until(lambda: tl.written == 1, "the list written")
    tl.named(key, "T00001")
    tl.tick(time.monotonic() + 2 * tickle.WRITE_EVERY_S)
    assert tl.writing, "the name not written"
    await until(lambda: tl.written == 2, "the list written with the name")
    assert msgpack.unpackb((tmp_path / tickle.list_name(3)).read_bytes())["conns"] == [["10.0.0.9", 7000, "10.1.0.5", 40001, "T00001"]]
    tl.close()
