"""What the CP takes from its links, driven in-process through its own code.

How far a terminal's confirmation settles its kept replies (docs/protocol.md §1): never past a
message this CP accepted and has not yet answered, whatever the terminal says, so that no "c"
record can drop that message at a later recovery; and a terminal that resumed and then says
hello without `last_reply` gets what was kept for it marked `resent` (it may hold those replies
already). A message too large to be delivered to a host is refused at the terminal link, not
acknowledged. A field nested too deep to print is that link's protocol error, not a traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from hsb.cp.terminal_link import TerminalProtocol
from tests.support.cpcore import HeldJournal, cp_core, fake_host, recording_terminal
from tests.support.transports import RecordingTransport, recorded, stand_in

pytestmark = pytest.mark.timeout(60)


def journalled(cp: Any) -> list[list[Any]]:
    """What the CP appends to its journal from now on."""
    recs: list[list[Any]] = []
    real = cp.journal.append

    def append(payload: list[Any], done: Any = None, lazy: bool = False) -> int:
        recs.append(payload)
        return int(real(payload, done, lazy))

    cp.journal.append = append
    return recs


def replies(p: Any) -> list[dict[str, Any]]:
    p.flush()
    return [f for f in p.transport.frames() if f.get("t") == "reply"]


async def test_a_confirmation_does_not_go_past_a_message_still_unanswered(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0)
    term = cp.terms["T00001"]
    for mid in (1, 2, 3):
        cp.terminal_msg(term, mid, f"m{mid}")
    recs = journalled(cp)
    cp.host_reply(h, "T00001", 2, "r2")  # answered out of order: 1 still waits
    cp.terminal_confirm(term, 3)  # a terminal that claims replies it cannot hold
    assert term.confirmed == 0 and 2 in term.replies
    assert [r for r in recs if r[0] == "c"] == []
    cp.host_reply(h, "T00001", 1, "r1")
    cp.terminal_confirm(term, 3)  # 1 and 2 answered now, 3 is not
    assert term.confirmed == 2 and not term.replies
    assert [r for r in recs if r[0] == "c"] == [["c", "T00001", 2]]
    cp.host_reply(h, "T00001", 3, "r3")
    assert [(r["id"], r["data"]) for r in replies(p)] == [(2, "r2"), (1, "r1"), (3, "r3")]  # every reply sent
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_confirmation_past_every_id_accepted_does_not_cost_the_replies_after_it(tmp_path: Path) -> None:
    """A terminal that confirms replies to ids it never sent (a bug of its own) still gets the
    replies to the messages it sends after: the confirmation goes no further than the highest id
    accepted from it, and a later reply is sent and kept, not taken for one it holds."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0)
    term = cp.terms["T00001"]
    cp.terminal_msg(term, 1, "m1")
    cp.host_reply(h, "T00001", 1, "r1")
    cp.terminal_confirm(term, 1000)
    assert term.confirmed == 1
    cp.terminal_msg(term, 2, "m2")
    cp.host_reply(h, "T00001", 2, "r2")
    assert [(r["id"], r["data"]) for r in replies(p)] == [(1, "r1"), (2, "r2")]
    assert 2 in term.replies, "its reply not kept until it confirms"
    h.connection_lost(None)
    await asyncio.sleep(0)


@pytest.mark.parametrize("resuming", [True, False])
async def test_a_reply_the_active_sends_twice_reaches_the_terminal_once(tmp_path: Path, resuming: bool) -> None:
    """The active's second reply to a message whose first is still being recorded ("r", or "d"
    for a terminal that does not resume) is not a second answer."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0 if resuming else None)
    cp.terminal_msg(cp.terms["T00001"], 1, "m1")
    j = HeldJournal(cp, ("r", "d"))
    cp.host_reply(h, "T00001", 1, "first")
    cp.host_reply(h, "T00001", 1, "second")
    j.release()
    assert [(r["id"], r["data"]) for r in replies(p)] == [(1, "first")]
    assert not cp.terms["T00001"].held
    h.connection_lost(None)
    await asyncio.sleep(0)


def answered_out_of_order(tmp_path: Path, recovered: bool = False) -> tuple[Any, Any, Any, list[list[Any]]]:
    """A resuming terminal's messages 1 and 2, only 2 answered (its reply kept, unconfirmed); then
    its connection goes. (cp, host, its Term, what the CP journals from then on.)"""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0)
    term = cp.terms["T00001"]
    for mid in (1, 2):
        cp.terminal_msg(term, mid, f"m{mid}")
    cp.host_reply(h, "T00001", 2, "r2")
    term.held[1].recovered = recovered  # (as a restore from the journal marks it)
    p.connection_lost(None)
    return cp, h, term, journalled(cp)


async def test_a_terminal_that_stops_resuming_gets_its_kept_replies_marked_and_its_waiting_message_kept(tmp_path: Path) -> None:
    cp, h, term, recs = answered_out_of_order(tmp_path)
    q = recording_terminal(cp, "T00001", None)  # hello without last_reply
    assert [(r["id"], r.get("resent")) for r in replies(q)] == [(2, True)]
    assert [r for r in recs if r[0] == "c" and r[2] >= 1] == []  # nothing that would drop message 1
    assert list(term.held) == [1]
    cp.host_reply(h, "T00001", 1, "r1")
    assert [(r["id"], r["data"]) for r in replies(q)] == [(2, "r2"), (1, "r1")]
    assert not term.replies and cp.counts.kept == 0  # it confirms nothing: settled once 1 was answered
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_terminal_that_says_nothing_of_its_replies_does_not_settle_past_a_recovered_message(tmp_path: Path) -> None:
    """After a CP restart every held message is recovered (it may have been answered before the
    crash): a resuming terminal's word about it counts, but a hello without last_reply says
    nothing, so no "c" may pass a recovered message still unanswered."""
    cp, h, term, recs = answered_out_of_order(tmp_path, recovered=True)
    recording_terminal(cp, "T00001", None)
    assert [r for r in recs if r[0] == "c" and r[2] >= 1] == [] and list(term.held) == [1]
    h.connection_lost(None)
    await asyncio.sleep(0)


@pytest.mark.parametrize("kind", ["bytes", "text"])
async def test_a_message_too_large_to_deliver_is_refused_not_acknowledged(tmp_path: Path, kind: str) -> None:
    """A message whose data would not fit, with the fields around it, in the deliver frame to a
    host of the same max_frame is refused with an error that names the limit and the fix, never
    acknowledged (it would break the active's link at every re-delivery); the largest one taken
    is delivered in a frame the host's decoder accepts."""
    from hsb.wire.framing import Decoder, encode

    cp = cp_core(tmp_path, 2, cp="max_frame = 4096\n")
    h = fake_host(cp, "host-a", "active", record=True)
    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None, max_frame=4096)
    p.connection_made(stand_in(RecordingTransport("T00001")))
    p.clear_deadline()
    p.data_received(encode({"t": "hello", "terminal": "T00001", "last_reply": 0}))
    term = cp.terms["T00001"]
    assert term.conn is p
    unit = b"x" if kind == "bytes" else "\u00e9"  # two bytes in UTF-8
    size = len(unit.encode()) if isinstance(unit, str) else 1
    p.data_received(encode({"t": "msg", "id": 1, "data": unit * (p.max_data // size)}))
    assert list(term.held) == [1] and not p.closed
    p.data_received(encode({"t": "msg", "id": 2, "data": unit * (p.max_data // size + 1)}))
    p.flush()
    err = [f for f in p.transport.frames() if f["t"] == "error"]
    assert err and err[0]["code"] == "message_too_large" and "max_frame" in err[0]["msg"] and p.closed
    assert list(term.held) == [1] and [f["id"] for f in p.transport.frames() if f["t"] == "ack"] == [1]
    cp._deliver(term, term.held[1], h)  # what the host is sent for the one taken fits its decoder
    h.flush()
    sent = Decoder(4096).feed(bytes(h.transport.data))
    assert any(f["t"] in ("deliver", "deliver_batch") for f in sent)
    h.connection_lost(None)
    await asyncio.sleep(0)


def _deep(frame: dict[str, Any], key: str, depth: int = 1000) -> bytes:
    """`frame` with `key` set to a list nested `depth` deep (more than msgpack's packer will
    make, less than its unpacker refuses), as a whole frame on the wire."""
    import struct

    import msgpack

    body = msgpack.packb(frame)
    assert body[0] & 0xF0 == 0x80 and len(frame) < 15
    body = bytes([body[0] + 1]) + body[1:] + msgpack.packb(key) + b"\x91" * depth + b"\x90"
    return cast(bytes, struct.pack(">I", len(body)) + body)


async def test_a_field_nested_too_deep_to_print_is_a_protocol_error_of_that_link_alone(tmp_path: Path) -> None:
    """A host frame whose field is a list nested about 1,000 deep passes the decoder but not str()
    (RecursionError): it gets the link's `bad_fields` error and a close, as any other bad field,
    not a traceback that leaves the connection unread and open; so does such an auth frame."""
    from hsb.cp.host_link import HostProtocol
    from hsb.wire import auth

    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active", record=True)
    h.data_received(_deep({"t": "refuse", "terminal": "T00001", "epoch": 1}, "reason"))
    h.flush()
    err = [f for f in h.transport.frames() if f["t"] == "error"]
    assert err and err[0]["code"] == "bad_fields" and "RecursionError" in err[0]["msg"] and h.closed, err
    u = HostProtocol(cp, secret=b"s" * 32, auth_timeout=5.0, idle_timeout=None)
    u.connection_made(stand_in(RecordingTransport("x")))
    mac = auth.answer(b"s" * 32, u._nonce, "host", "host-b")  # right, from a daemon of another version
    u.data_received(_deep({"t": "auth", "name": "host-b", "link": "host", "mac": mac}, "version"))
    u.flush()
    err = [f for f in recorded(u.transport).frames() if f["t"] == "error"]
    assert err and err[0]["code"] == "auth_failed" and u.closed and not u.authed, err
    u.clear_deadline()
    await asyncio.sleep(0)


@pytest.mark.parametrize("junk", [b"\x80", b"\x90"], ids=["empty_maps", "empty_arrays"])
async def test_a_terminal_frame_of_a_million_empty_containers_is_refused_as_it_is_read(tmp_path: Path, junk: bytes) -> None:
    """A terminal's frames hold plain values only. One of 1 MiB that is an array of empty maps
    (or arrays), one byte each, used to be built whole: ~70 MB and tens of ms of the loop per
    frame before any check. It is refused at the first container inside, that connection alone."""
    import struct
    import tracemalloc

    import msgpack

    from hsb.wire.framing import encode

    cp = cp_core(tmp_path, 2)
    p = recording_terminal(cp, "T00001")
    p.decoder.first_done()  # (its hello was taken in-process, not read)
    n = 1_000_000
    # the map with one more key whose value is an array of n one-byte containers
    body = b"\x83" + msgpack.packb("t") + msgpack.packb("confirm") + msgpack.packb("id") + msgpack.packb(0) + msgpack.packb("x")
    body += b"\xdd" + struct.pack(">I", n) + junk * n
    tracemalloc.start()
    try:
        p.data_received(struct.pack(">I", len(body)) + body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    p.flush()
    err = [f for f in p.transport.frames() if f["t"] == "error"]
    assert err and err[0]["code"] == "bad_fields" and p.closed, err
    assert peak < 8 * len(body), f"{peak} bytes allocated for a {len(body)}-byte frame"
    q = recording_terminal(cp, "T00002")  # another terminal is served as before
    q.decoder.first_done()
    q.data_received(encode({"t": "msg", "id": 1, "data": b"x"}))
    assert not q.closed and list(cp.terms["T00002"].held) == [1]
    await asyncio.sleep(0)


async def test_a_connection_not_yet_logged_on_cannot_make_the_cp_buffer_a_large_frame(tmp_path: Path) -> None:
    """Before its hello (or auth) a connection's first frame may be LOGIN_MAX bytes, not max_frame:
    10,000 unvouched connections announcing 1 MiB each would make the CP buffer 10 GB. The limit
    is the first frame's alone: a hello with a large message behind it in the same write is fine."""
    import struct

    from hsb.wire.framing import LOGIN_MAX, encode

    cp = cp_core(tmp_path, 2)
    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    p.connection_made(stand_in(RecordingTransport("x")))
    p.data_received(struct.pack(">I", LOGIN_MAX + 1))
    p.flush()
    err = [f for f in recorded(p.transport).frames() if f["t"] == "error"]
    assert err and err[0]["code"] == "frame_too_large" and "first frame" in err[0]["msg"] and p.closed, err
    p.clear_deadline()
    q = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    q.connection_made(stand_in(RecordingTransport("T00002")))
    q.data_received(encode({"t": "hello", "terminal": "T00002", "last_reply": 0}) + encode({"t": "msg", "id": 1, "data": b"x" * (8 * LOGIN_MAX)}))
    assert not q.closed and list(cp.terms["T00002"].held) == [1]
    q.clear_deadline()
    q.connection_lost(None)
    await asyncio.sleep(0)


@pytest.mark.parametrize("epoch", ["missing", True, 1.0, "1"])
async def test_the_actives_frames_without_an_integer_epoch_are_refused(tmp_path: Path, epoch: Any) -> None:
    """The epoch is what fences a replaced active: a release (or reply, handover, stopping...) of
    the active without one, or with one that only compares equal (true, 1.0), is a protocol
    error, not a frame let through unchecked."""
    from hsb.wire.framing import encode

    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active", record=True)
    frame: dict[str, Any] = {"t": "release"}
    if epoch != "missing":
        frame["epoch"] = epoch
    h.data_received(encode(frame))
    h.flush()
    err = [f for f in h.transport.frames() if f["t"] == "error"]
    assert err and err[0]["code"] == "bad_fields" and "epoch" in err[0]["msg"] and h.closed, err
    assert not h.released
    await asyncio.sleep(0)


async def test_a_hosts_error_frame_is_heard_not_refused_as_an_unknown_type(tmp_path: Path) -> None:
    """hsbd tells the CP why it drops the link (a frame of the CP's it cannot take): the CP logs
    the host's reason and closes, instead of refusing the error frame itself as unknown_type."""
    from hsb.wire.conn import PROTOCOL_ERRORS
    from hsb.wire.framing import encode

    before = PROTOCOL_ERRORS[("host", "unknown_type")]
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active", record=True)
    h.data_received(encode({"t": "error", "code": "bad_fields", "msg": "a 'deliver_batch' frame this host cannot take"}))
    h.flush()
    assert h.closed and PROTOCOL_ERRORS[("host", "unknown_type")] == before
    assert not [f for f in h.transport.frames() if f["t"] == "error"]
    await asyncio.sleep(0)


async def test_a_host_with_a_smaller_max_frame_limits_what_terminals_may_send(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CP and hosts of different max_frame (half way through raising it everywhere, say): a
    message the CP's own limit takes but a host's frames cannot would be acknowledged and then
    drop that host's link at every delivery. The CP limits the terminals to the smallest
    max_frame a host said at its register, says so once, and tells the hosts its own, which
    bounds their replies."""
    import hsb.cp.pair_frames as pair_frames
    from hsb.cp.host_link import HostProtocol
    from hsb.wire.framing import Decoder, encode, payload_max
    from tests.support.logrec import RecordingLog

    big, small = 64 * 1024, 8 * 1024
    cp = cp_core(tmp_path, 2, cp=f"max_frame = {big}\n")
    rec = RecordingLog()
    monkeypatch.setattr(pair_frames, "log", rec)
    h = fake_host(cp, "host-a", None, record=True)
    assert isinstance(h, HostProtocol)
    h.max_frame = small  # (as its register said: on_register)
    cp.host_register(h, "active", 1)
    h.flush()
    registered = [f for f in recorded(h.transport).frames() if f["t"] == "registered"]
    assert registered and registered[0]["max_frame"] == big  # the host caps its replies with it
    assert [e for e in rec.events("max_frame_mismatch") if e["host_max_frame"] == small]
    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None, max_frame=big)
    p.connection_made(stand_in(RecordingTransport("T00001")))
    p.clear_deadline()
    p.data_received(encode({"t": "hello", "terminal": "T00001", "last_reply": 0}))
    term = cp.terms["T00001"]
    limit = payload_max(small)
    p.data_received(encode({"t": "msg", "id": 1, "data": b"x" * limit}))
    p.data_received(encode({"t": "msg", "id": 2, "data": b"x" * (limit + 1)}))
    p.flush()
    err = [f for f in recorded(p.transport).frames() if f["t"] == "error"]
    assert err and err[0]["code"] == "message_too_large" and str(limit) in err[0]["msg"]
    assert list(term.held) == [1] and [f["id"] for f in recorded(p.transport).frames() if f["t"] == "ack"] == [1]
    recorded(h.transport).data.clear()
    cp._deliver(term, term.held[1], h)  # the one taken fits the host's smaller frames
    h.flush()
    assert any(f["t"] in ("deliver", "deliver_batch") for f in Decoder(small).feed(bytes(recorded(h.transport).data)))
    h.connection_lost(None)
    await asyncio.sleep(0)


@pytest.mark.parametrize("path", ["registered_later", "flip"])
async def test_a_message_held_before_a_smaller_host_said_its_max_frame_is_answered_with_an_error(tmp_path: Path, path: str) -> None:
    """A message the CP took while no host with smaller frames was known (the hosts registered
    later, the CP restarted on its journal, or a standby of smaller frames is granted the role):
    delivered, it would drop that host's link at every try. It is answered with an error reply
    instead, the host is sent nothing, and a message that fits still goes."""
    from hsb.wire.framing import Decoder, encode, payload_max

    big, small = 64 * 1024, 8 * 1024
    cp = cp_core(tmp_path, 2, cp=f"max_frame = {big}\n")
    if path == "flip":
        a = fake_host(cp, "host-a", "active", record=True)  # the CP's own max_frame: it takes anything
    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None, max_frame=big)
    p.connection_made(stand_in(RecordingTransport("T00001")))
    p.clear_deadline()
    p.data_received(encode({"t": "hello", "terminal": "T00001"}))  # (a terminal that does not resume)
    term = cp.terms["T00001"]
    if path == "flip":
        cp.host_open(a, "T00001", "active", {"k": "v"})
    too_big = "é" * (payload_max(small) // 2 + 1)  # more bytes than characters: its UTF-8 size counts
    p.data_received(encode({"t": "msg", "id": 1, "data": too_big}))
    p.data_received(encode({"t": "msg", "id": 2, "data": "fits"}))
    assert list(term.held) == [1, 2], (p.closed, recorded(p.transport).frames())
    if path == "registered_later":
        h = fake_host(cp, "host-a", None, record=True)
        h.max_frame = small
        cp.host_register(h, "active", 1)
        cp.host_open(h, "T00001", "active", {"k": "v"})  # the session asked for: its held messages go
    else:  # a standby of smaller frames registers after they were taken, and is granted the role
        b = fake_host(cp, "host-b", None, record=True)
        b.max_frame = small
        cp.host_register(b, "standby", 1)
        cp.host_open(b, "T00001", "standby", {"k": "v"})
        a.connection_lost(None)
        cp.host_switchover(b, "test", False, "failover", peer_closed=True)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while cp.flipping is not None:
            assert loop.time() - t0 < 5.0, "the flip never finished"
            await asyncio.sleep(0)
        h = b
    await asyncio.sleep(0.05)  # (the discard's journal callback: memory-only, at once)
    p.flush()
    replies = [f for f in recorded(p.transport).frames() if f["t"] == "reply"]
    assert [r["id"] for r in replies] == [1] and "too large" in replies[0]["data"], replies
    h.flush()
    sent = Decoder(small).feed(bytes(h.transport.data))  # what the host got fits its frames
    ids = [i[1] for f in sent if f["t"] == "deliver_batch" for i in f["items"]] + [f["id"] for f in sent if f["t"] == "deliver"]
    assert ids == [2], sent
    assert list(term.held) == [2] and not p.closed


async def test_frames_read_ahead_wait_while_the_peer_does_not_read_our_answers(tmp_path: Path) -> None:
    """A peer pipelining requests without reading the answers: on links that stop reading it
    (terminals, admin), the frames already read wait too, not all answered into a write buffer
    that grows without bound; they go on once it reads again."""
    from hsb.wire.framing import encode

    cp = cp_core(tmp_path, 2)
    p = recording_terminal(cp, "T00001")
    p.decoder.first_done()
    p.pause_writing()  # its socket buffer full: it reads nothing we send
    p.data_received(b"".join(encode({"t": "msg", "id": i, "data": b"x"}) for i in range(1, 101)))
    assert not cp.terms["T00001"].held and len(p._backlog) == 100
    p.resume_writing()
    for _ in range(10):
        if not p._backlog:
            break
        await asyncio.sleep(0)
    assert list(cp.terms["T00001"].held) == list(range(1, 101))
    p.connection_lost(None)


async def test_an_unauthenticated_peer_gets_its_auth_frame_decoded_and_nothing_more(tmp_path: Path) -> None:
    """Frames sent behind the auth frame in one write were all decoded before the auth was looked
    at: ~250 KB of empty containers, tens of MB of objects, for a peer that knows no secret. Now
    only the auth frame is decoded until it is accepted; the rest follows only then."""
    import struct
    import tracemalloc

    import msgpack

    from hsb.cp.host_link import HostProtocol
    from hsb.wire import auth
    from hsb.wire.framing import encode

    cp = cp_core(tmp_path, 2)
    n = 250_000
    junk = b"\x82" + msgpack.packb("t") + msgpack.packb("hb") + msgpack.packb("x") + b"\xdd" + struct.pack(">I", n) + b"\x80" * n
    u = HostProtocol(cp, secret=b"s" * 32, auth_timeout=5.0, idle_timeout=None)
    u.connection_made(stand_in(RecordingTransport("x")))
    bad = encode({"t": "auth", "name": "host-b", "link": "host", "mac": b"\0" * 32})
    tracemalloc.start()
    try:
        u.data_received(bad + struct.pack(">I", len(junk)) + junk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    u.flush()
    err = [f for f in recorded(u.transport).frames() if f["t"] == "error"]
    assert err and err[0]["code"] == "auth_failed" and u.closed and not u.authed, err
    assert peak < 4 * len(junk), f"{peak} bytes allocated before the auth was refused"
    u.clear_deadline()
    # a right auth with a frame behind it in the same write: that frame is taken once it is accepted
    v = HostProtocol(cp, secret=b"s" * 32, auth_timeout=5.0, idle_timeout=None)
    v.connection_made(stand_in(RecordingTransport("y")))
    seen: list[dict[str, Any]] = []
    v.on_hb = seen.append  # type: ignore[method-assign, assignment]
    mac = auth.answer(b"s" * 32, v._nonce, "host", "host-b")
    from hsb import LINK_PROTOCOL

    v.data_received(encode({"t": "auth", "name": "host-b", "link": "host", "mac": mac, "proto": LINK_PROTOCOL}) + encode({"t": "hb"}))
    assert v.authed and not v.closed and [m["t"] for m in seen] == ["hb"], (v.closed, seen)
    v.clear_deadline()
    v.connection_lost(None)
    await asyncio.sleep(0)
    # ... and frames behind it ahead of a malformed one: taken, then the link closed for the bad one
    # (they were dropped with the connection: one more reason a host had to send them again)
    w = HostProtocol(cp, secret=b"s" * 32, auth_timeout=5.0, idle_timeout=None)
    w.connection_made(stand_in(RecordingTransport("z")))
    seen_w: list[dict[str, Any]] = []
    w.on_hb = seen_w.append  # type: ignore[method-assign, assignment]
    mac = auth.answer(b"s" * 32, w._nonce, "host", "host-b")
    malformed = struct.pack(">I", 1) + b"\xc1"  # msgpack's one byte that is never valid
    w.data_received(encode({"t": "auth", "name": "host-b", "link": "host", "mac": mac, "proto": LINK_PROTOCOL}) + encode({"t": "hb"}) * 2 + malformed)
    w.flush()
    err = [f for f in recorded(w.transport).frames() if f["t"] == "error"]
    assert w.authed and w.closed and [m["t"] for m in seen_w] == ["hb", "hb"] and err, (w.closed, seen_w, err)
    w.clear_deadline()
    w.connection_lost(None)
    await asyncio.sleep(0)


@pytest.mark.parametrize(("presented", "names", "refused"), [(True, set(), True), (True, {"T00001"}, False), (False, set(), False)])
async def test_a_terminal_certificate_that_names_nobody_is_no_terminals(tmp_path: Path, presented: bool, names: set[str], refused: bool) -> None:
    """Over TLS a terminal that presents a certificate logs on only as a name it names. One that
    names nobody (an IP-only SAN device certificate) skipped the check and could log on as any
    terminal; no certificate at all (they are optional on terminals) is still let in."""
    from hsb.wire.framing import encode

    cp = cp_core(tmp_path, 2)
    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    p.tls_peer_names = lambda: set(names)  # type: ignore[method-assign]  # (TLS: the certificate's names)
    p.tls_cert_presented = lambda: presented  # type: ignore[method-assign]
    p.connection_made(stand_in(RecordingTransport("T00001")))
    p.clear_deadline()
    p.data_received(encode({"t": "hello", "terminal": "T00001", "last_reply": 0}))
    p.flush()
    errors = [f["code"] for f in recorded(p.transport).frames() if f["t"] == "error"]
    assert (errors == ["tls_name_mismatch"]) is refused and (cp.terms["T00001"].conn is p) is not refused, errors
