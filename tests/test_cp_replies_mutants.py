"""The replies of hsb/cp/replies.py (docs/protocol.md §1), each test naming a behaviour that a
mutation audit of the module found no test for: what a confirmation may settle, the records a
kept reply and a confirmation write, and the replies a terminal gets again at its next hello."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host, recording_terminal
from tests.test_cp_kept_journal import _restart


def _logged_on(tmp_path: Path, last_reply: int | None, first: int | None = None) -> tuple[Any, Any, Any]:
    """A CP with host-a active and T00001 logged on with a session there (`last_reply` None: a
    terminal that does not resume; `first`: its hello's)."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", last_reply, first=first)
    cp.host_open(h, "T00001", "active", {})
    return cp, h, p


pytestmark = pytest.mark.timeout(30)


def _replies(p: Any) -> list[tuple[int, Any, bool]]:
    """(id, data, resent) of every `reply` the CP wrote to the stand-in terminal `p`."""
    p.flush()
    return [(m["id"], m["data"], bool(m.get("resent"))) for m in p.transport.frames() if m.get("t") == "reply"]


class _Records:
    """Every record the CP appends, in order, with its `lazy` flag; the callbacks of the kinds
    in `hold` kept until `release` (their group commit), the others run at once."""

    def __init__(self, cp: Any, hold: tuple[str, ...] = ()) -> None:
        self.records: list[tuple[list[Any], bool]] = []
        self.held: list[tuple[list[Any], Callable[[], None]]] = []
        real = cp.journal.append

        def append(payload: list[Any], done: Any = None, lazy: bool = False) -> int:
            self.records.append((payload, lazy))
            if payload[0] in hold and done is not None:
                self.held.append((payload, done))
                return 1
            return int(real(payload, done, lazy))

        cp.journal.append = append

    def kinds(self, kind: str) -> list[list[Any]]:
        return [r for r, _ in self.records if r[0] == kind]

    def release(self, payload: list[Any]) -> None:
        """The held record `payload` durable."""
        for i, (p, done) in enumerate(self.held):
            if p == payload:
                del self.held[i]
                done()
                return
        raise AssertionError(f"{payload} not held: {[p for p, _ in self.held]}")


def _msgs(p: Any, *ids: int) -> None:
    p.data_received(b"".join(encode({"t": "msg", "id": i, "data": f"m{i}"}) for i in ids))


async def test_a_confirm_does_not_pass_a_message_whose_discard_is_on_its_way(tmp_path: Path) -> None:
    """T00001, not resuming, sends 1 and 2; the active answers both (their discards, "d", on the
    way: the replies go once durable). Its connection drops and it says hello resuming. The
    discard of 2 is durable first: reply 2 goes and is kept until confirmed. The terminal
    confirms 2: the confirmation stops short of message 1, whose reply has not gone out, so
    when reply 1 goes it is kept too, and a hello after the connection dropped unread gets it
    again (marked), with 2, which that confirm did not settle either."""
    cp, h, p = _logged_on(tmp_path, None)
    rec = _Records(cp, hold=("d",))
    _msgs(p, 1, 2)
    cp.host_reply(h, "T00001", 1, "r1")
    cp.host_reply(h, "T00001", 2, "r2")
    p.connection_lost(None)
    p = recording_terminal(cp, "T00001", 0, first=1)
    rec.release(["d", "T00001", 2])
    assert _replies(p) == [(2, "r2", False)]
    p.data_received(encode({"t": "confirm", "id": 2}))
    assert all(r[2] < 1 for r in rec.kinds("c")), rec.kinds("c")
    rec.release(["d", "T00001", 1])
    assert _replies(p) == [(2, "r2", False), (1, "r1", False)]
    p.connection_lost(None)  # before the terminal read reply 1
    p = recording_terminal(cp, "T00001", 0, first=1)
    assert _replies(p) == [(1, "r1", True), (2, "r2", True)]


def _acks(p: Any) -> list[int]:
    p.flush()
    return [m["id"] for m in p.transport.frames() if m.get("t") == "ack"]


async def test_a_hello_claim_covers_the_reply_to_its_runs_first_id(tmp_path: Path) -> None:
    """A resuming terminal whose run starts at id 1 (`first` 1) gets reply 1 (kept until
    confirmed: at a held bound of 1, its next message waits). Its connection drops, and its hello
    says last_reply 1, first 1: reply 1 is its own run's, the claim covers it and settles it
    ("c" 1): it is not sent again, and the next message is taken at once."""
    cp = cp_core(tmp_path, 2, cp="held_bound = 1\n")
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0, first=1)
    cp.host_open(h, "T00001", "active", {})
    rec = _Records(cp)
    _msgs(p, 1)
    cp.host_reply(h, "T00001", 1, "r1")
    assert _replies(p) == [(1, "r1", False)]
    p.connection_lost(None)
    p = recording_terminal(cp, "T00001", 1, first=1)
    assert _replies(p) == []
    assert rec.kinds("c") == [["c", "T00001", 1]]
    _msgs(p, 2)
    assert _acks(p) == [2]


async def test_confirmed_replies_free_their_bytes_for_the_next_ones(tmp_path: Path) -> None:
    """The bound of kept replies counts their bytes (held_bytes): a reply that takes most of it
    and is confirmed frees its bytes, so a second one as large, confirmed too, leaves the
    terminal below the bound, its next message taken at once."""
    size = 4096
    cp = cp_core(tmp_path, 2, cp=f"held_bytes = {size}\n")
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0, first=1)
    cp.host_open(h, "T00001", "active", {})
    big = "x" * (size * 2 // 3)
    for mid in (1, 2):
        _msgs(p, mid)
        cp.host_reply(h, "T00001", mid, big)
        p.data_received(encode({"t": "confirm", "id": mid}))
    _msgs(p, 3)
    assert _acks(p) == [1, 2, 3]
    assert cp.terms["T00001"].kept_bytes == 0 and cp.counts.kept_data == 0 and cp.counts.kept == 0


async def test_a_settled_reply_and_message_let_their_journal_segments_go(tmp_path: Path) -> None:
    """Every segment pin a held message or a kept reply takes (its record's segment may not be
    deleted while it is live) is let go once the message is settled and the reply confirmed."""
    from collections import Counter

    cp, h, p = _logged_on(tmp_path, 0, first=1)
    live: Counter[int] = Counter()
    cp.journal.pin = lambda seg: live.update([seg])
    cp.journal.unpin = lambda seg: live.subtract([seg])
    _msgs(p, 1, 2, 3)
    for mid in (2, 1, 3):
        cp.host_reply(h, "T00001", mid, f"r{mid}")
    assert sum(live.values()) == 3  # the kept replies' (the messages settled as their "r" went)
    p.data_received(encode({"t": "confirm", "id": 3}))
    assert not cp.terms["T00001"].replies and not cp.terms["T00001"].held
    assert all(n == 0 for n in live.values()), live


async def test_a_sent_replys_record_and_a_confirmation_are_lazy_a_settled_ones_is_not(tmp_path: Path) -> None:
    """The "r" record of a reply already written to a resuming terminal, and the "c" of its
    confirmation, start no group commit of their own (nothing waits on them: a crash before them
    only has the message answered again). The "r" of a reply whose message is settled already
    (its discard durable, its terminal, not resuming, gone meanwhile) is the reply's only copy:
    it goes at once."""
    cp = cp_core(tmp_path, 3)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0, first=1)
    q = recording_terminal(cp, "T00002", None)
    cp.host_open(h, "T00001", "active", {})
    cp.host_open(h, "T00002", "active", {})
    rec = _Records(cp, hold=("d",))
    _msgs(p, 1)
    _msgs(q, 1)
    cp.host_reply(h, "T00001", 1, "r1")
    p.data_received(encode({"t": "confirm", "id": 1}))
    cp.host_reply(h, "T00002", 1, "q1")
    q.connection_lost(None)
    rec.release(["d", "T00002", 1])
    lazy = [(r[0], r[1], z) for r, z in rec.records if r[0] in ("r", "c")]
    assert lazy == [("r", "T00001", True), ("c", "T00001", True), ("r", "T00002", False)], rec.records


async def test_a_kept_reply_sent_once_to_a_terminal_that_resumes_by_then_is_kept_until_confirmed(tmp_path: Path) -> None:
    """T00001, not resuming, sends 1 and leaves; reply 1 is made while it is away (kept). Its
    hello, still not resuming, has reply 1 go once: its "d" first, the reply once that is
    durable. Before it is, the connection drops and T00001 says hello resuming: the reply,
    written marked resent when the "d" is durable, is kept now until the terminal confirms it,
    so a hello after that connection dropped unread gets it again."""
    cp, h, p = _logged_on(tmp_path, None)
    rec = _Records(cp, hold=("d",))
    _msgs(p, 1)
    p.connection_lost(None)
    cp.host_reply(h, "T00001", 1, "r1")
    p = recording_terminal(cp, "T00001", None)
    assert _replies(p) == []
    p.connection_lost(None)
    p = recording_terminal(cp, "T00001", 0, first=1)
    assert _replies(p) == []
    rec.release(["d", "T00001", 1])
    assert _replies(p) == [(1, "r1", True)]
    p.connection_lost(None)
    p = recording_terminal(cp, "T00001", 0, first=1)
    assert _replies(p) == [(1, "r1", True)]
    p.data_received(encode({"t": "confirm", "id": 1, "seen": 1}))
    assert not cp.terms["T00001"].replies


async def test_a_confirm_does_not_cover_a_reply_written_after_the_frames_it_had_seen(tmp_path: Path) -> None:
    """Run 1 of T00001 sent 1 and 2 and died without a bye; reply 2 is made while nobody is
    there. Run 2 (first 3) gets it at its hello (resent), sends 3 and gets reply 3; then the
    active answers run 1's message 1, written unmarked. The terminal's confirm of 3, written
    when it had read 2 reply frames, crossed reply 1: it covers ids up to 3, an earlier run's
    too, but not reply 1, still on its way; the connection drops before it is read, and the
    next hello gets it (marked), and the replies the confirm could not settle above it."""
    cp, h, p = _logged_on(tmp_path, 0)
    _msgs(p, 1, 2)
    p.connection_lost(None)  # no bye
    cp.host_reply(h, "T00001", 2, "r2")
    p = recording_terminal(cp, "T00001", 0, first=3)
    cp.host_open(h, "T00001", "active", {})
    _msgs(p, 3)
    cp.host_reply(h, "T00001", 3, "r3")
    cp.host_reply(h, "T00001", 1, "r1")
    assert _replies(p) == [(2, "r2", True), (3, "r3", False), (1, "r1", False)]
    p.data_received(encode({"t": "confirm", "id": 3, "seen": 2}))
    p.connection_lost(None)
    p = recording_terminal(cp, "T00001", 0, first=3)
    assert _replies(p)[:1] == [(1, "r1", True)]


async def test_a_reply_that_brings_the_kept_replies_to_the_bound_holds_the_next_message_back_at_once(tmp_path: Path) -> None:
    """Held bound 2: reply 1 is kept (its record durable), reply 2 brings the kept replies to
    the bound while its own record ("r", lazy) is still on the way. The terminal's message 3,
    read now, is held back, not acknowledged, until a confirm frees room (the bound is that of
    the replies kept, not of the records written)."""
    cp = cp_core(tmp_path, 2, cp="held_bound = 2\n")
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 0, first=1)
    cp.host_open(h, "T00001", "active", {})
    _msgs(p, 1, 2)
    cp.host_reply(h, "T00001", 1, "r1")
    rec = _Records(cp, hold=("r",))
    cp.host_reply(h, "T00001", 2, "r2")
    _msgs(p, 3)
    assert _acks(p) == [1, 2]
    rec.release(["r", "T00001", 2, "r2"])
    p.data_received(encode({"t": "confirm", "id": 2, "seen": 2}))
    assert _acks(p) == [1, 2, 3]


async def test_a_confirmed_reply_is_not_sent_again_by_a_restarted_cp(tmp_path: Path) -> None:
    """A resuming terminal confirms replies 1 and 2 of its 3; the CP dies with its records
    durable. The next one recovers only reply 3 as kept: a hello that claims nothing gets 3
    again (marked), not the confirmed ones."""
    cp, h, p = _logged_on(tmp_path, 0, first=1)
    rec = _Records(cp)
    _msgs(p, 1, 2, 3)
    for mid in (1, 2, 3):
        cp.host_reply(h, "T00001", mid, f"r{mid}")
    p.data_received(encode({"t": "confirm", "id": 2, "seen": 2}))
    cp2 = _restart(tmp_path, [r for r, _ in rec.records])
    p2 = recording_terminal(cp2, "T00001", 0, first=1)
    assert _replies(p2) == [(3, "r3", True)]


async def test_a_reply_kept_when_its_discard_is_durable_is_not_covered_by_a_confirm_that_had_not_seen_it(tmp_path: Path) -> None:
    """T00001, not resuming, sends 1; the active answers it (its discard on the way). The
    connection drops and it says hello resuming; the discard durable, reply 1 is written and
    kept. A confirm of 1 written when the terminal had read no reply frame on this connection
    crossed it: reply 1 stays kept, and a hello after the connection dropped gets it again."""
    cp, h, p = _logged_on(tmp_path, None)
    rec = _Records(cp, hold=("d",))
    _msgs(p, 1)
    cp.host_reply(h, "T00001", 1, "r1")
    p.connection_lost(None)
    p = recording_terminal(cp, "T00001", 0, first=1)
    rec.release(["d", "T00001", 1])
    assert _replies(p) == [(1, "r1", False)]
    p.data_received(encode({"t": "confirm", "id": 1, "seen": 0}))
    assert list(cp.terms["T00001"].replies) == [1]
    p.connection_lost(None)
    p = recording_terminal(cp, "T00001", 0, first=1)
    assert _replies(p) == [(1, "r1", True)]


async def test_a_terminal_that_logged_off_is_closed_only_once_every_message_is_answered(tmp_path: Path) -> None:
    """T00001 sends 1 and 2 and says bye: the CP answers both on that connection, and closes it
    after the last reply, not after the first."""
    cp, h, p = _logged_on(tmp_path, None)
    _msgs(p, 1, 2)
    p.data_received(encode({"t": "bye"}))
    cp.host_reply(h, "T00001", 1, "r1")
    assert not p.closed
    cp.host_reply(h, "T00001", 2, "r2")
    assert _replies(p) == [(1, "r1", False), (2, "r2", False)]
    assert p.closed


@pytest.mark.parametrize("resuming", [False, True], ids=["not-resuming", "resuming"])
async def test_a_reply_made_while_a_new_run_is_away_survives_the_answer_to_a_logoffs_message(tmp_path: Path, resuming: bool) -> None:
    """Run 1 of T00001 sends 1 and logs off (bye) before it is answered: its reply is nobody's.
    Run 2 logs on, sends 2 and leaves without a bye; reply 2 is made while it is away (kept,
    never sent). Then the active answers 1, to nobody: that settles nothing of run 2's (no "c"
    covers 2), and its next hello gets reply 2, marked resent. (Not resuming, the answer to 1
    settled reply 2 as if the terminal had had it, and run 2 never got it, not even after a CP
    restart: a lost reply.)"""
    cp, h, p = _logged_on(tmp_path, 0 if resuming else None)
    _msgs(p, 1)
    p.data_received(encode({"t": "bye"}))
    p.connection_lost(None)
    p = recording_terminal(cp, "T00001", 0 if resuming else None)
    cp.host_open(h, "T00001", "active", {})
    _msgs(p, 2)
    assert _acks(p) == [2]
    p.connection_lost(None)  # no bye
    rec = _Records(cp)
    cp.host_reply(h, "T00001", 2, "r2")
    cp.host_reply(h, "T00001", 1, "r1")
    assert not [c for c in rec.kinds("c") if c[2] >= 2], rec.kinds("c")
    p = recording_terminal(cp, "T00001", 0 if resuming else None)
    assert _replies(p) == [(2, "r2", True)]
