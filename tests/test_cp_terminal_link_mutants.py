"""The CP's terminal connection (hsb/cp/terminal_link.py, docs/protocol.md §1) and the pair's
frame sizes (hsb/cp/pair_frames.py) at the points a mutation audit of the two modules found no
test for: the frames held back (parked) behind unconfirmed replies at the held bound (their
memory bound, a confirm read behind them, a too-large message among them), a bye waiting behind
the held bound when the CP closes the connection, a connection found gone in a logon storm, the
tickle list, the partial-frame timeout after the hello, the resent mark, a confirm of 0; the
max_frame a host said before, the journal's active among three hosts, and who may have
processed a message at the handed floor. In-process: a CP core, stand-in hosts, raw frames fed
to the connection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest

from hsb.cp import logons
from hsb.cp.journal.format import encode as record
from hsb.cp.journal.recovery import recover, segment_name
from hsb.cp.state import Held
from hsb.cp.terminal_link import PARKED_FRAME_COST, TerminalProtocol
from hsb.cp.tickle import TickleList
from hsb.wire.framing import encode, payload_max
from tests.support.cpcore import cp_core, fake_host, journal_kinds, recording_terminal
from tests.support.keptreplies import until
from tests.support.transports import RecordingTransport, stand_in

pytestmark = pytest.mark.timeout(30)


def frames(p: Any) -> list[dict[str, Any]]:
    p.flush()
    return list(p.transport.frames())


def errors(p: Any) -> list[str]:
    return [f["code"] for f in frames(p) if f["t"] == "error"]


def acks(p: Any) -> list[int]:
    return [f["id"] for f in frames(p) if f["t"] == "ack"]


def msgs(*ids: int, data: Any = None) -> bytes:
    return b"".join(encode({"t": "msg", "id": i, "data": f"m{i}" if data is None else data}) for i in ids)


def at_the_bound(tmp_path: Path, bound: int, cp: str = "") -> tuple[Any, Any, Any]:
    """T00001 (resuming) with a session at host-a, `bound` messages sent and answered: its kept
    replies at the held bound, so that what it sends next is parked."""
    core = cp_core(tmp_path, 2, cp=f"held_bound = {bound}\n{cp}")
    h = fake_host(core, "host-a", "active")
    p = recording_terminal(core, "T00001", 0)
    core.host_open(h, "T00001", "active", {})
    p.data_received(msgs(*range(1, bound + 1)))
    for i in range(1, bound + 1):
        core.host_reply(h, "T00001", i, f"r{i}")
    assert p.parked is not None and not p.closed
    return core, h, p


async def test_a_message_too_large_is_refused_at_once_even_while_parked(tmp_path: Path) -> None:
    """A message too large to deliver to a host, read while the frames wait behind unconfirmed
    replies, is refused as it is read (message_too_large, the connection closed), as it would be
    in its turn: it is not parked, acknowledged by nobody, nor does it count as the parked memory
    that ends in an unconfirmed_replies error instead."""
    core, h, p = at_the_bound(tmp_path, 2, cp="max_frame = 4096\n")
    p.data_received(msgs(3, data=b"x" * (p.max_data + 1)))
    assert errors(p) == ["message_too_large"] and p.closed, frames(p)
    assert acks(p) == [1, 2] and list(core.terms["T00001"].held) == []
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_confirm_read_behind_the_frames_that_reach_the_parked_bound_is_taken(tmp_path: Path) -> None:
    """One read brings frames that reach the parked memory bound (held_bytes) and, behind them, the
    confirm of the replies the terminal holds: that confirm is taken (it ends the parking), not
    counted as one more frame sent without confirming; nothing is refused and every message is
    taken in order."""
    bound = 40  # (the messages taken then stay below it)
    core, h, p = at_the_bound(tmp_path, bound, cp="held_bytes = 4096\n")
    n = -(-4096 // (PARKED_FRAME_COST + 2))  # (data "mN": 2 bytes and more) enough to reach it
    ids = range(bound + 1, bound + 1 + n + 2)
    p.data_received(msgs(*ids) + encode({"t": "confirm", "id": bound}))
    await until(lambda: p.closed or core.terms["T00001"].last_acked == ids[-1], "the parked messages taken")
    assert errors(p) == [] and not p.closed, frames(p)
    assert acks(p) == [*range(1, bound + 1), *ids]
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_the_parked_frames_reaching_held_bytes_exactly_close_the_connection(tmp_path: Path) -> None:
    """The parked frames are bounded by their memory (data and PARKED_FRAME_COST each): once they
    take held_bytes exactly, the terminal sent that much without confirming and the connection
    is closed with unconfirmed_replies; one frame less, it is still read."""
    core, h, p = at_the_bound(tmp_path, 2, cp="held_bytes = 4096\n")
    per = 4096 // 8 - PARKED_FRAME_COST  # 8 frames of this much data make 4096 bytes with their cost
    p.data_received(msgs(*range(3, 10), data=b"x" * per))
    assert not p.closed and errors(p) == [] and p.parked_bytes == 7 * (per + PARKED_FRAME_COST)
    p.data_received(msgs(10, data=b"x" * per))
    assert errors(p) == ["unconfirmed_replies"] and p.closed
    assert acks(p) == [1, 2]
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_the_end_of_the_parking_forgets_the_memory_of_the_frames_it_let_go(tmp_path: Path) -> None:
    """The confirm that ends the parking lets the parked frames go (taken in order): their memory
    is no longer counted, so a later parking starts from nothing, not from what these took."""
    core, h, p = at_the_bound(tmp_path, 2, cp="held_bytes = 4096\n")
    p.data_received(msgs(3, 4, data=b"x" * 1000))
    assert p.parked_bytes == 2 * (1000 + PARKED_FRAME_COST)
    p.data_received(encode({"t": "confirm", "id": 2}))
    await until(lambda: p.closed or core.terms["T00001"].last_acked == 4, "the parked messages taken")
    assert p.parked is None and p.parked_bytes == 0 and errors(p) == []
    for i in (3, 4):  # answered, unconfirmed: at the bound again
        core.host_reply(h, "T00001", i, f"r{i}")
    assert p.parked == [] and not p.reading_paused
    p.data_received(msgs(5, 6, data=b"x" * 1000))
    assert not p.closed and errors(p) == [] and p.parked_bytes == 2 * (1000 + PARKED_FRAME_COST)
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_connection_found_gone_in_a_logon_storm_is_lost_at_once_not_queued(tmp_path: Path) -> None:
    """A connection whose peer was found gone while it was not read (the sweep, hsb.cp.terminal_side
    `_connection_gone`) is lost now, as once its end had been read, even in a logon storm whose
    queue would otherwise make a loss wait its turn: its terminal is at once no longer connected."""
    core = cp_core(tmp_path, 2)
    h = fake_host(core, "host-a", "active")
    p = recording_terminal(core, "T00001", 0)
    core.host_open(h, "T00001", "active", {})
    core.logons.inline = logons.BURST  # this turn's inline logons used up: a loss would wait
    p.pause_reading()
    p.gone()
    assert core.terms["T00001"].conn is None and not core.logons.queue
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_bye_read_behind_the_held_bound_is_one_logoff_when_the_cp_closes_the_connection(tmp_path: Path) -> None:
    """A bye read and waiting behind the held bound (with a message before it) when the CP closes
    the connection (a timer, a flip's classic path) is a logoff then, once: what waited behind the
    bound is dropped (none of it acknowledged), and the connection's loss afterwards is no second
    logoff (no second "o" record)."""
    core = cp_core(tmp_path, 2, cp="held_bound = 1\n")
    h = fake_host(core, "host-a", "active")
    p = recording_terminal(core, "T00001", 0)
    core.host_open(h, "T00001", "active", {})
    kinds = journal_kinds(core)
    p.data_received(msgs(1, 2) + encode({"t": "bye"}))
    term = core.terms["T00001"]
    assert list(term.held) == [1] and p.reading_paused and not term.leaving
    p.close()
    assert term.leaving and kinds.count("o") == 1, kinds
    p.connection_lost(None)
    await asyncio.sleep(0)
    assert kinds.count("o") == 1 and acks(p) == [1], (kinds, frames(p))
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_frame_begun_and_stalled_after_the_hello_still_closes_the_link(tmp_path: Path) -> None:
    """With no idle timeout after the hello (idle_after_hello None), a terminal that begins a frame
    and stalls is still closed after the hello timeout: the hello's turn takes away the timers
    only while it waits (a silence that is ours), and its logon gives the partial frame's back."""
    core = cp_core(tmp_path, 2)
    p = TerminalProtocol(core, hello_timeout=0.05, idle_after_hello=None)
    p.connection_made(stand_in(RecordingTransport("T00001")))
    p.data_received(encode({"t": "hello", "terminal": "T00001", "last_reply": 0}))
    assert core.terms["T00001"].conn is p and not p.closed
    p.data_received(msgs(1)[:5])  # a frame begun, the rest never sent
    await until(lambda: p.closed, "the stalled frame's link closed")
    assert core.terms["T00001"].held == {}


async def test_a_message_marked_resent_is_taken_as_maybe_handed_over_by_an_earlier_cp(tmp_path: Path) -> None:
    """A CP that follows another (a takeover of its journal) takes a new message its terminal
    marks resent (sent before, never acknowledged) as one the earlier CP process may have handed
    to the active: it raises the terminal's handed floor (delivered marked redelivered); one not
    marked resent does not."""
    core = cp_core(tmp_path, 2)
    core.follows_a_cp = True
    p = recording_terminal(core, "T00001", 0)
    term = core.terms["T00001"]
    p.data_received(encode({"t": "msg", "id": 1, "data": "m1", "resent": True}))
    assert list(term.held) == [1] and term.handed_floor == 1 and core.counters["resent_unknown"] == 1
    p.data_received(encode({"t": "msg", "id": 2, "data": "m2"}))
    assert list(term.held) == [1, 2] and term.handed_floor == 1 and core.counters["resent_unknown"] == 1


async def test_a_confirm_of_id_0_and_seen_0_is_taken(tmp_path: Path) -> None:
    """A confirm's id is 0..2**63-1 (0: no reply held yet) and its `seen` any count >= 0 (0: no
    reply frame read on this connection yet): such a confirm is taken, not refused as bad_fields;
    a negative one is refused."""
    core = cp_core(tmp_path, 2)
    p = recording_terminal(core, "T00001", 0)
    p.data_received(encode({"t": "confirm", "id": 0}) + encode({"t": "confirm", "id": 0, "seen": 0}))
    assert errors(p) == [] and not p.closed, frames(p)
    p.data_received(encode({"t": "confirm", "id": 0, "seen": -1}))
    assert errors(p) == ["bad_fields"] and p.closed


async def test_parked_frames_are_taken_when_the_parking_ends_without_another_read(tmp_path: Path) -> None:
    """The parking ends without a read of the terminal's (its replies settled by the CP, not by a
    confirm in a read): the frames that waited are taken all the same, soon, not left until the
    terminal sends something more."""
    core, h, p = at_the_bound(tmp_path, 2)
    p.data_received(msgs(3, 4))
    assert [m["id"] for m in p.parked] == [3, 4] and not p.reading_paused
    core.terminal_confirm(core.terms["T00001"], 2)
    await until(lambda: p.closed or core.terms["T00001"].last_acked == 4, "the parked messages taken")
    assert acks(p) == [1, 2, 3, 4] and errors(p) == []
    h.connection_lost(None)
    await asyncio.sleep(0)


class _Bound(RecordingTransport):
    """A stand-in transport that knows its local address too (the tickle list records both)."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 7000) if name == "sockname" else super().get_extra_info(name, default)


async def test_the_tickle_list_follows_each_connection_from_its_open_through_its_hello_to_its_end(tmp_path: Path) -> None:
    """A CP that keeps the tickle list (hsb.cp.tickle: the connections a successor tickles after a
    takeover) records a terminal connection when it opens, its terminal's name once its hello
    is taken, and drops it when the connection is lost."""
    core = cp_core(tmp_path, 2)
    core.tickles = TickleList(tmp_path, 1)
    p = TerminalProtocol(core, hello_timeout=5.0, idle_after_hello=None)
    p.connection_made(stand_in(_Bound("T00001")))
    assert [msgpack.unpackb(c) for c in core.tickles.conns.values()] == [["127.0.0.1", 7000, "127.0.0.1", 1, ""]]
    p.data_received(encode({"t": "hello", "terminal": "T00001", "last_reply": 0}))
    assert [msgpack.unpackb(c)[4] for c in core.tickles.conns.values()] == ["T00001"]
    p.connection_lost(None)
    assert core.tickles.conns == {}


async def test_a_hello_must_come_within_the_hello_timeout_however_slowly_its_bytes_arrive(tmp_path: Path) -> None:
    """The hello is due within hello_timeout of the connect: a client trickling its hello a byte at
    a time (each byte well within the timeout of the last) is closed at that deadline, never
    logged on."""
    core = cp_core(tmp_path, 2)
    p = TerminalProtocol(core, hello_timeout=0.1, idle_after_hello=None)
    p.connection_made(stand_in(RecordingTransport("T00001")))
    hello = encode({"t": "hello", "terminal": "T00001", "last_reply": 0})
    for i in range(len(hello)):
        if p.closed:
            break
        p.data_received(hello[i : i + 1])
        await asyncio.sleep(0.01)  # (pacing the bytes, not waiting for anything)
    await until(lambda: p.closed, "the hello deadline's close")
    assert p.term is None and core.terms["T00001"].conn is None


# -- the pair's frames (hsb/cp/pair_frames.py) ---------------------------------------------------

BIG, SMALL = 64 * 1024, 8 * 1024


def registered(core: Any, name: str, role: str, max_frame: int) -> Any:
    h = fake_host(core, name, None)
    h.max_frame = max_frame  # (as its register said; 0: not said, an hsbd of an older hsb)
    core.host_register(h, role, 1)
    return h


async def test_a_host_registering_again_without_a_max_frame_keeps_the_one_it_said_before(tmp_path: Path) -> None:
    """host-a said a smaller max_frame at its registration; it registers again (a reconnect) saying
    none: the frames it said still count, the terminals' limit stays what they hold (a message
    larger would break its link at every delivery), and nothing changed to journal."""

    core = cp_core(tmp_path, 2, cp=f"max_frame = {BIG}\n")
    a = registered(core, "host-a", "active", SMALL)
    assert core.max_data == payload_max(SMALL) and core.host_frames == {"host-a": SMALL}
    a.connection_lost(None)
    kinds = journal_kinds(core)
    again = registered(core, "host-a", "active", 0)
    assert core.host_frames == {"host-a": SMALL} and core.max_data == payload_max(SMALL)
    assert "f" not in kinds, kinds
    again.connection_lost(None)
    await asyncio.sleep(0)


async def test_the_active_the_journal_records_keeps_its_frames_when_a_third_host_registers(tmp_path: Path) -> None:
    """A CP restarted on a journal that records host-a (of smaller frames) the active and host-b
    of the pair; neither is back, and host-c registers as the standby: of three hosts, the one
    that counts no more is host-b, not host-a, which still holds the active role the journal
    records and may come back as the active: the terminals' limit stays what its frames hold."""
    d = tmp_path / "j"
    d.mkdir()
    (d / segment_name(1)).write_bytes(record(["ck", 3, "host-a", 0, {}]) + record(["f", [["host-a", SMALL], ["host-b", BIG]]]))
    core = cp_core(tmp_path, 2, cp=f"max_frame = {BIG}\n")
    core.restore(recover(d))
    assert core.recorded_active == "host-a" and core.active is None and core.max_data == payload_max(SMALL)
    c = registered(core, "host-c", "standby", BIG)
    assert core.standby is c
    assert core.host_frames == {"host-a": SMALL, "host-c": BIG} and core.max_data == payload_max(SMALL)
    c.connection_lost(None)
    await asyncio.sleep(0)


def test_the_message_at_the_handed_floor_may_have_been_processed_before_the_restart(tmp_path: Path) -> None:
    """A message never delivered by this CP process but at or below its terminal's handed floor
    (a resend an earlier CP process may have handed over early) may have been processed by the
    active before the restart: the too-large error names it; one above the floor was not."""
    core = cp_core(tmp_path, 2)
    term = core.terms["T00001"]
    term.handed_floor = 5
    core.restored_active = "host-a"
    at, above = Held(5, b"m", 0.0), Held(6, b"m", 0.0)
    assert core._maybe_processed_by(term, at) == "host-a (the active before the CP restarted)"
    assert core._maybe_processed_by(term, above) is None
