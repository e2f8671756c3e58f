"""Early delivery: the CP hands a message to the active while its journal record is being made
durable (the group commit and the service's work overlap), and still acknowledges only what is
durable. The reply never overtakes the ack, and a host marks an id it handed to its service
before as redelivered, so a message the CP delivered and then lost in a crash, sent again by
its terminal, is never processed twice unmarked (docs/cp-journal.md, "Early delivery")."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.host.delivery import Delivery
from hsb.wire.framing import encode
from tests.support.campaign import run_campaign
from tests.support.cpcore import HeldJournal, cp_core, fake_host, journal_kinds, recording_terminal

pytestmark = pytest.mark.timeout(30)


def frames(p: Any) -> list[dict[str, Any]]:
    p.flush()
    return list(p.transport.frames())


def durable_cp(tmp_path: Path, *, marks: bool = True) -> tuple[Any, Any, Any, HeldJournal]:
    """host-a active with marks_repeats (or not), T00001's session open at it; the journal's
    "a" records durable only when the test says so (`j.release()`)."""
    cp = cp_core(tmp_path, 2)
    cp.journal.durable = True  # (the memory-only journal behind HeldJournal: as if it wrote)
    a = fake_host(cp, "host-a", record=True)
    a.marks_repeats = marks
    a.adopts = True  # (adoption is how a restarted CP learns what the active had handed over)
    cp.host_register(a, "active", 1)
    t = recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    j = HeldJournal(cp, ("a",))
    return cp, a, t, j


def delivered(h: Any) -> list[tuple[int, bool]]:
    out: list[tuple[int, bool]] = []
    for f in frames(h):
        if f["t"] == "deliver":
            out.append((f["id"], f["redelivered"]))
        elif f["t"] == "deliver_batch":
            out += [(it[1], it[3]) for it in f["items"]]
    return out


def to_terminal(t: Any) -> list[tuple[str, int]]:
    return [(f["t"], f["id"]) for f in frames(t) if f["t"] in ("ack", "reply")]


async def test_a_message_goes_to_the_active_before_its_record_is_durable_and_the_ack_waits(tmp_path: Path) -> None:
    cp, a, t, j = durable_cp(tmp_path)
    t.data_received(encode({"t": "msg", "id": 1, "data": "x"}))
    assert delivered(a) == [(1, False)], "not handed over while its record was being written"
    assert to_terminal(t) == [], "acknowledged before its record was durable"
    j.release()
    assert to_terminal(t) == [("ack", 1)]
    assert delivered(a) == [(1, False)], "handed over a second time once durable"
    assert cp.counters["delivered_early"] == 1


async def test_many_outstanding_messages_all_go_early_in_order(tmp_path: Path) -> None:
    cp, a, t, j = durable_cp(tmp_path)
    for mid in range(1, 201):  # (none durable yet: a terminal with 200 outstanding)
        t.data_received(encode({"t": "msg", "id": mid, "data": "x"}))
    assert delivered(a) == [(mid, False) for mid in range(1, 201)]
    assert cp.counters["delivered_early"] == 200
    j.release()
    assert [mid for kind, mid in to_terminal(t) if kind == "ack"] == list(range(1, 201))
    assert delivered(a) == [(mid, False) for mid in range(1, 201)], "handed over again once durable"


async def test_a_reply_that_comes_before_the_record_is_durable_waits_for_the_ack(tmp_path: Path) -> None:
    cp, a, t, j = durable_cp(tmp_path)
    t.data_received(encode({"t": "msg", "id": 1, "data": "x"}))
    cp.host_reply(a, "T00001", 1, "answer")
    assert to_terminal(t) == [], "the reply overtook the ack (a CP crash now would lose the message's record)"
    cp.host_reply(a, "T00001", 1, "again")  # a second reply for it is never a second answer
    j.release()
    assert to_terminal(t) == [("ack", 1), ("reply", 1)]
    replies = [f for f in frames(t) if f["t"] == "reply"]
    assert replies[0]["data"] == "answer" and "resent" not in replies[0]
    assert not t.term.held, "answered, yet still held"


async def test_a_host_that_does_not_mark_repeats_gets_a_message_only_once_it_is_durable(tmp_path: Path) -> None:
    cp, a, t, j = durable_cp(tmp_path, marks=False)
    t.data_received(encode({"t": "msg", "id": 1, "data": "x"}))
    assert delivered(a) == [], "an older host cannot tell a repeat: it must not get a message that may be lost"
    j.release()
    assert delivered(a) == [(1, False)] and to_terminal(t) == [("ack", 1)]
    assert cp.counters["delivered_early"] == 0


async def test_a_stalled_journal_delivers_nothing_early(tmp_path: Path) -> None:
    cp, a, t, j = durable_cp(tmp_path)
    cp.journal.state = "stalled"
    t.data_received(encode({"t": "msg", "id": 1, "data": "x"}))
    assert delivered(a) == [], "handed over while the journal could not write it"
    cp.journal.state = "ok"
    j.release()
    assert delivered(a) == [(1, False)]


async def test_the_active_lost_before_the_record_is_durable_the_next_gets_it_marked(tmp_path: Path) -> None:
    cp, a, t, j = durable_cp(tmp_path)
    b = fake_host(cp, "host-b", record=True)
    b.marks_repeats = True
    b.adopts = True
    b.instance = "b1"
    cp.host_register(b, "standby", 1)
    cp.host_open(b, "T00001", "standby", {})
    t.data_received(encode({"t": "msg", "id": 1, "data": "x"}))
    assert delivered(a) == [(1, False)]
    a.connection_lost(None)  # host-a dies with it, unanswered
    b.data_received(encode({"t": "switchover", "reason": "test", "planned": False, "peer_closed": True}))
    cp.settle_flip()
    assert cp.active is b
    assert delivered(b) == [], "handed over again before its record was durable"
    j.release()
    assert delivered(b) == [(1, True)], "the message host-a had must reach host-b marked redelivered, once"
    assert ("ack", 1) in to_terminal(t)


async def test_a_message_sent_again_that_this_cp_does_not_have_goes_marked_redelivered(tmp_path: Path) -> None:
    """The double faults the hosts' memory cannot cover (hsbd restarted while the CP was down, a
    second CP crash after the active changed): the terminal marks what it sends again `resent`,
    and a CP that does not have that id delivers it marked, early or not; its successors are new."""
    cp, a, t, j = durable_cp(tmp_path)
    t.data_received(encode({"t": "msg", "id": 3, "data": "x", "resent": True}))
    t.data_received(encode({"t": "msg", "id": 4, "data": "y"}))
    t.data_received(encode({"t": "msg", "id": 5, "data": "z", "resent": "yes"}))  # (not true: not a mark, not an error)
    assert delivered(a) == [(3, True), (4, False), (5, False)], "a message an earlier CP may have handed over went unmarked"
    assert cp.counters["resent_unknown"] == 1 and not t.closed
    j.release()
    t.data_received(encode({"t": "msg", "id": 4, "data": "y", "resent": True}))  # (one it has: acknowledged again)
    assert delivered(a) == [(3, True), (4, False), (5, False)] and cp.counters["resent_unknown"] == 1
    assert [mid for kind, mid in to_terminal(t) if kind == "ack"] == [3, 4, 5, 4]
    # to a host that does not mark repeats: delivered once durable, marked all the same
    (tmp_path / "b").mkdir()
    cp2, a2, t2, j2 = durable_cp(tmp_path / "b", marks=False)
    t2.data_received(encode({"t": "msg", "id": 7, "data": "x", "resent": True}))
    assert delivered(a2) == []
    j2.release()
    assert delivered(a2) == [(7, True)]


async def test_a_message_never_overtakes_an_earlier_one_still_waiting_for_its_record(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 2)
    cp.journal.durable = True
    a = fake_host(cp, "host-a", record=True)
    a.marks_repeats = a.adopts = True
    cp.host_register(a, "active", 1)
    t = recording_terminal(cp, "T00001")
    j = HeldJournal(cp, ("a",))
    t.data_received(encode({"t": "msg", "id": 1, "data": "x"}))  # no session yet: not delivered
    cp.host_open(a, "T00001", "active", {})  # 1 is not durable: it waits for its record
    t.data_received(encode({"t": "msg", "id": 2, "data": "y"}))
    assert delivered(a) == [], "2 went ahead of 1"
    j.release()
    assert delivered(a) == [(1, False), (2, False)]
    t.data_received(encode({"t": "msg", "id": 3, "data": "z"}))  # 1 and 2 with the active: 3 goes at once
    assert delivered(a) == [(1, False), (2, False), (3, False)]
    assert cp.counters["delivered_early"] == 1


async def test_messages_stay_in_order_when_the_role_comes_back_to_the_active_in_a_sliced_flip(tmp_path: Path) -> None:
    """1 waits (the active is released for a handover); the grantee is lost and the role comes
    back; 2 becomes durable before the sliced flip reaches its terminal, and 3 comes: the host
    gets 1, 2, 3 in that order (a review found 2, 3, 1)."""
    cp = cp_core(tmp_path, 3, cp="flip_slice = 1\n")
    cp.journal.durable = True
    a = fake_host(cp, "host-a", record=True)
    a.marks_repeats = a.adopts = True
    cp.host_register(a, "active", 1)
    b = fake_host(cp, "host-b", record=True)
    b.instance = "b1"
    cp.host_register(b, "standby", 1)
    terms = [recording_terminal(cp, f"T{i:05d}") for i in range(1, 4)]
    for t in terms:
        cp.host_open(a, t.term.name, "active", {})
        cp.host_open(b, t.term.name, "standby", {})
    t = terms[2]
    j = HeldJournal(cp, ("e", "a"))
    cp.host_release(a)
    t.data_received(encode({"t": "msg", "id": 1, "data": "one"}))
    j.release()  # 1 durable, not delivered: host-a is released
    cp.host_handover(a)  # granted to host-b (its epoch record held)
    b.connection_lost(None)
    j.release_one()  # host-b's grant: lost, the role back to host-a (its epoch record held)
    t.data_received(encode({"t": "msg", "id": 2, "data": "two"}))
    j.release_one()  # host-a's epoch durable: the flip starts, a terminal a slice
    j.release_one()  # 2 durable
    t.data_received(encode({"t": "msg", "id": 3, "data": "three"}))
    cp.settle_flip()
    j.release()
    got = delivered(a)
    assert [mid for mid, _ in got] == [1, 2, 3], got
    assert not any(again for _, again in got), got


async def test_what_the_active_had_handed_over_is_marked_for_whoever_serves_next(tmp_path: Path) -> None:
    """After a CP restart the active names its sessions (adopt) and, with them, the highest id
    it handed to its service per terminal. A message up to that id, sent again by its terminal
    (its record died with the CP), is marked redelivered by the CP too: so after a switchover
    the other host, which never saw it, knows it may have taken effect."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", record=True)
    a.marks_repeats = a.adopts = True
    a.instance = "a1"
    b = fake_host(cp, "host-b", record=True)
    b.marks_repeats = b.adopts = True
    b.instance = "b1"
    cp.host_register(a, "active", 1)
    cp.host_register(b, "standby", 1)
    cp.host_adopt(a, [], True, {"T00001": 5, "T99999": 3})  # (a name the CP does not define: ignored)
    assert cp.terms["T00001"].handed_floor == 5
    cp.host_release(a)
    cp.host_handover(a)  # a planned switchover to host-b before the terminal is back
    cp.settle_flip()
    assert cp.active is b
    t = recording_terminal(cp, "T00001")
    cp.host_open(b, "T00001", "active", {})
    for mid in (5, 6):
        t.data_received(encode({"t": "msg", "id": mid, "data": "x"}))
    assert delivered(b) == [(5, True), (6, False)]


async def test_what_an_active_being_demoted_handed_over_still_counts(tmp_path: Path) -> None:
    from hsb.cp.host_link import HostProtocol

    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", record=True)
    a.marks_repeats = a.adopts = True
    a.instance = "a1"
    b = fake_host(cp, "host-b", record=True)
    b.instance = "b1"
    cp.host_register(a, "active", 1)
    cp.host_register(b, "standby", 1)
    j = HeldJournal(cp, ("e",))
    cp.host_release(a)
    cp.host_handover(a)  # granted to host-b; host-a has not heard of it yet
    assert cp.active is b and a.role == "demoting" and j.held
    HostProtocol.on_adopt(a, {"t": "adopt", "items": [["T00001", {}]], "handed": {"T00001": 4}, "epoch": 1, "last": False})
    assert cp.terms["T00001"].handed_floor == 4
    assert cp.terms["T00001"].active is None, "a demoted host's session taken as the active's"
    j.release()  # the grant takes effect: host-a is told it is demoted
    cp.settle_flip()
    assert a.role != "demoting"
    HostProtocol.on_adopt(a, {"t": "adopt", "items": [], "handed": {"T00002": 9}, "epoch": 1, "last": False})
    assert cp.terms["T00002"].handed_floor == 0, "a frame of a host told it is no longer the active counted"


async def test_a_host_marks_an_id_it_handed_to_its_service_before() -> None:
    seen: list[tuple[int, bool]] = []

    class Svc:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            seen.append((message_id, redelivered))
            return "ok"

    sent: list[dict[str, Any]] = []
    d = Delivery(Svc(), lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 1, "x", False)
    d.deliver("T1", 2, "y", False)
    d.deliver("T1", 2, "y", False)  # the CP lost its record of 2 and the terminal sent it again
    d.deliver("T2", 2, "z", False)  # another terminal's 2 is its own
    d.deliver("T1", 1, "x", True)  # marked by the CP: stays marked, not counted as a repeat found here
    deadline = time.monotonic() + 10
    while len(sent) < 5:
        assert time.monotonic() < deadline, "not every message was answered"
        await asyncio.sleep(0.01)
    assert sorted(seen) == [(1, False), (1, True), (2, False), (2, False), (2, True)]
    assert d.counters["repeats_marked"] == 1 and d.counters["redelivered"] == 2


@pytest.mark.timeout(300)
async def test_hsbcpd_and_then_the_active_killed_after_an_early_delivery_the_next_active_gets_it_marked(tmp_path: Path) -> None:
    """A double fault, real processes: hsbcpd dies holding a reply to a message it delivered before
    its record reached the disk, and the active is SIGKILLed while the CP is down, so no host
    remembers having handed that message to its service. The terminal's `resent` mark alone makes
    the next active process it marked redelivered (without it: processed twice, unmarked)."""
    summary = await run_campaign(tmp_path / "c", 2, terminals=40, rate=200, churners=0, actions=("crash_cp_reply_before_durable_then_active",))
    assert summary["actions"]["crash_cp_reply_before_durable_then_active"] == 2, summary["fallbacks"]
    assert summary["lost"] == 0 and summary["duplicates"] == 0, summary
    assert summary["failures"] == [], summary
    assert summary["processed_twice_without_redelivered_mark"] == 0, summary
    assert summary["acknowledged_not_in_any_journal"] == 0, summary
    assert summary["processed_more_than_once"] >= 2, summary


@pytest.mark.timeout(300)
async def test_sigkill_of_hsbcpd_after_an_early_delivery_was_answered_processes_it_again_marked(tmp_path: Path) -> None:
    """Real hsbcpd and hsbd (the journal service) under load from resuming terminals: the CP dies
    holding a reply to a message it delivered before its record reached the disk (the crash point
    holds the record back), is started again, and the terminal sends that message again as a new
    one. The active processes it a second time, marked redelivered by what the hosts remember
    (the active's own memory, or the ids it names to the restarted CP at adoption); the
    terminals do not mark what they send again here, as a terminal that does not. The strict
    verdict holds and every id processed more than once was marked each time but the first."""
    summary = await run_campaign(tmp_path / "c", 2, terminals=40, rate=200, churners=0, actions=("crash_cp_reply_before_durable",), mark_resent=False)
    assert summary["actions"]["crash_cp_reply_before_durable"] == 2, summary["fallbacks"]
    assert summary["acknowledged"] > 0
    assert summary["lost"] == 0 and summary["duplicates"] == 0, summary
    assert summary["failures"] == [], summary
    assert summary["processed_twice_without_redelivered_mark"] == 0, summary
    assert summary["acknowledged_not_in_any_journal"] == 0, summary
    # each crash lost the record of a message the active had answered: processed again, marked
    assert summary["processed_more_than_once"] >= 2, summary


async def test_the_host_names_what_it_handed_to_its_service_before_its_sessions() -> None:
    """hsbd's adoption starts with every terminal's highest id handed to its service, in frames
    within the size the CP takes (`open_batch`), before it names a session."""
    from types import SimpleNamespace

    from hsb.host.sessions import ACTIVE, SessionTable
    from hsb.host.sessions_ctl import SessionsCtl
    from hsb.terminals import TerminalDef, TerminalSpec

    sent: list[dict[str, Any]] = []

    async def drain() -> None:
        return None

    defs: dict[str, TerminalSpec] = {f"T{i:05d}": TerminalDef(name=f"T{i:05d}", attrs={}) for i in range(1, 4)}
    handed = {f"T{i:05d}": i for i in range(1, 601)}  # (terminals gone since: named all the same)
    srv: Any = SimpleNamespace(
        sessions=SessionTable(defs),
        cp=SimpleNamespace(send=sent.append, send_raw=lambda raw: sent.extend(Decoder().feed(raw)), drain=drain),
        ha=SimpleNamespace(granted=True, epoch=3),
        delivery=SimpleNamespace(handed=handed),
    )
    from hsb.wire.framing import Decoder

    c = SessionsCtl(srv)
    c.open_batch_bytes = 2048  # (a CP of max_frame 4096, the smallest allowed)
    for ts in srv.sessions.table.values():
        ts.state = ACTIVE
    c.adopt_gen += 1
    await c._adopt(c.adopt_gen, list(defs))
    firsts = [m for m in sent if m.get("handed")]
    assert len(firsts) > 1 and all(len(encode(m)) <= 2048 for m in firsts), [len(encode(m)) for m in firsts]
    assert sent[: len(firsts)] == firsts, "a session was named before every handed id was said"
    got: dict[str, int] = {}
    for m in firsts:
        assert m["items"] == [] and m["epoch"] == 3 and not m["last"]
        got.update(m["handed"])
    assert got == handed
    assert [it[0] for m in sent for it in m["items"]] == list(defs) and sent[-1]["last"] is True


async def test_a_reply_settled_for_a_terminal_that_resumed_meanwhile_is_kept_for_it(tmp_path: Path) -> None:
    """A non-resuming terminal's message is answered; the record that settles it ("d") is not yet
    durable when its connection drops and the terminal comes back resuming (last_reply), then drops
    again. Once "d" is durable, the reply must be kept for the resuming terminal and resent at its
    next hello: it went neither to a connection, nor to the outbox (which is not for resuming
    terminals), nor to the kept replies, and the acknowledged message was never answered."""
    cp = cp_core(tmp_path, 2)
    cp.journal.durable = True
    a = fake_host(cp, "host-a", "active", record=True)
    t = recording_terminal(cp, "T00001", last_reply=None)  # does not resume
    cp.host_open(a, "T00001", "active", {})
    j = HeldJournal(cp, ("d",))
    t.data_received(encode({"t": "msg", "id": 1, "data": "x"}))
    assert to_terminal(t) == [("ack", 1)]
    cp.host_reply(a, "T00001", 1, "r1")
    assert j.held, "the settling record is not held"
    t.connection_lost(ConnectionResetError("gone"))
    t2 = recording_terminal(cp, "T00001", last_reply=0)  # back, resuming now
    cp.host_open(a, "T00001", "active", {})
    t2.connection_lost(ConnectionResetError("gone again"))
    j.release()  # "d" durable now
    assert 1 in cp.terms["T00001"].replies, "the reply was dropped"
    t3 = recording_terminal(cp, "T00001", last_reply=0)
    replies = [f for f in frames(t3) if f["t"] == "reply"]
    assert [(f["id"], f["data"]) for f in replies] == [(1, "r1")], frames(t3)


async def test_a_reply_for_a_non_resuming_terminal_that_is_away_is_kept_in_the_journal(tmp_path: Path) -> None:
    """A terminal that does not resume is disconnected when the active answers its messages: the
    replies are kept with a record of their own ("r"), never in memory only, which a crash of
    the CP would lose (acknowledged messages never answered); at its next hello
    they are sent, marked resent, and settled."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active", record=True)
    t = recording_terminal(cp, "T00001", last_reply=None)
    cp.host_open(a, "T00001", "active", {})
    kinds = journal_kinds(cp)
    for mid in (1, 2):
        t.data_received(encode({"t": "msg", "id": mid, "data": f"m{mid}"}))
    assert to_terminal(t) == [("ack", 1), ("ack", 2)]
    t.connection_lost(ConnectionResetError("gone"))
    for mid in (1, 2):
        cp.host_reply(a, "T00001", mid, f"r{mid}")
    term = cp.terms["T00001"]
    assert sorted(term.replies) == [1, 2], term.replies
    assert kinds.count("r") == 2 and "d" not in kinds, kinds
    t2 = recording_terminal(cp, "T00001", last_reply=None)
    got = [(f["id"], f["data"], f.get("resent")) for f in frames(t2) if f["t"] == "reply"]
    assert got == [(1, "r1", True), (2, "r2", True)], got
    assert not term.replies and not term.held  # sent and settled: a terminal that does not resume confirms nothing


async def test_another_message_under_an_id_whose_ack_reached_the_new_connection_unseen_is_refused(tmp_path: Path) -> None:
    """The same, with message 1's record made durable between the welcome (last_acked 0) and the
    other message: its ack goes to the new connection, which had sent nothing under 1 yet. The
    terminal has not seen that ack when it sends its own 1: taken for a repeat of an acknowledged
    id, it was acknowledged, never processed, and answered with the first message's reply."""
    from tests.support.cpcore import recording_terminal

    cp, a, t, j = durable_cp(tmp_path)
    t.data_received(encode({"t": "msg", "id": 1, "data": "withdraw 50"}))
    t.connection_lost(None)
    t2 = recording_terminal(cp, "T00001")
    assert [f["last_acked"] for f in frames(t2) if f["t"] == "welcome"] == [0]
    j.release()  # durable now: its ack goes to this connection
    t2.data_received(encode({"t": "msg", "id": 1, "data": "balance?"}))
    assert t2.closed and [f["code"] for f in frames(t2) if f["t"] == "error"] == ["id_reused"], frames(t2)
    assert "balance?" not in str(frames(a))


async def test_another_message_under_an_id_answered_since_the_welcome_is_refused(tmp_path: Path) -> None:
    """The same once the first message was answered and let go as well (its reply record made
    durable, a few milliseconds): the CP no longer holds it to compare, but its connection's
    welcome noted what it held then."""
    from tests.support.cpcore import recording_terminal

    cp, a, t, j = durable_cp(tmp_path)
    t.data_received(encode({"t": "msg", "id": 1, "data": "withdraw 50"}))
    t.connection_lost(None)
    t2 = recording_terminal(cp, "T00001")
    j.release()
    cp.host_reply(a, "T00001", 1, "r1")  # answered: settled, no longer held
    assert 1 not in cp.terms["T00001"].held
    t2.data_received(encode({"t": "msg", "id": 1, "data": "balance?"}))
    assert t2.closed and [f["code"] for f in frames(t2) if f["t"] == "error"] == ["id_reused"], frames(t2)
    t3 = recording_terminal(cp, "T00001")  # welcomed with last_acked 1: a repeat now is acknowledged again
    t3.data_received(encode({"t": "msg", "id": 1, "data": "balance?"}))
    assert not t3.closed and [f["id"] for f in frames(t3) if f["t"] == "ack"] == [1]


async def test_what_a_welcome_noted_goes_once_its_connection_sent_past_it(tmp_path: Path) -> None:
    """The data a welcome noted of the messages held unacknowledged (for id_reused) is let go once
    the connection has sent past them: kept, it held those messages' data for the connection's
    whole life, outside every bound."""
    from tests.support.cpcore import recording_terminal

    cp, a, t, j = durable_cp(tmp_path)
    t.data_received(encode({"t": "msg", "id": 1, "data": "withdraw 50"}))
    t.connection_lost(None)
    t2 = recording_terminal(cp, "T00001")
    assert t2.unacked_at_welcome == {1: "withdraw 50"}
    t2.data_received(encode({"t": "msg", "id": 1, "data": "withdraw 50", "resent": True}))  # its resend
    assert not t2.closed and t2.unacked_at_welcome == {}


async def test_an_id_below_one_accepted_and_never_sent_is_refused_not_dropped(tmp_path: Path) -> None:
    """Ids strictly increase (SPEC §6.2): a message 3 after 5, while 5 is not yet durable, was
    dropped without a word ("its ack is on its way"), and the next welcome's last_acked 5 told the
    terminal it had been acknowledged: lost. Refused, `bad_id`."""
    cp, a, t, j = durable_cp(tmp_path)
    t.data_received(encode({"t": "msg", "id": 5, "data": "five"}))
    t.data_received(encode({"t": "msg", "id": 3, "data": "three"}))
    assert t.closed and [f["code"] for f in frames(t) if f["t"] == "error"] == ["bad_id"], frames(t)
    j.release()
    assert "three" not in str(frames(a))


async def test_another_message_under_an_id_accepted_from_an_earlier_connection_is_refused(tmp_path: Path) -> None:
    """A terminal sent message 1 and its connection went before 1's record was durable; its next
    welcome says last_acked 0. A terminal that lost what it sent goes on from there with another
    message as 1. Taken for a resend of the first (dropped, "its ack is on its way"), it was
    acknowledged and answered with the first message's reply. Refused, `id_reused`; a resend of
    the same message is still taken as one."""
    from tests.support.cpcore import recording_terminal

    cp, a, t, j = durable_cp(tmp_path)
    t.data_received(encode({"t": "msg", "id": 1, "data": "withdraw 50"}))
    t.connection_lost(None)
    t2 = recording_terminal(cp, "T00001")
    t2.data_received(encode({"t": "msg", "id": 1, "data": "withdraw 50", "resent": True}))  # the same: a resend
    assert not t2.closed
    t2.data_received(encode({"t": "msg", "id": 1, "data": "balance?"}))
    assert t2.closed and [f["code"] for f in frames(t2) if f["t"] == "error"] == ["id_reused"]
    assert [f["last_acked"] for f in frames(t2) if f["t"] == "welcome"] == [0]
    j.release()
    assert delivered(a) and all(m == 1 for m, _ in delivered(a))  # only the first message went to the host
    assert "balance?" not in str(frames(a))
    # once 1's record is durable its ack has gone to the connection of the time: the id is an
    # acknowledged one, and a repeat of one is acknowledged again, whatever it says (SPEC §6.2)
    t3 = recording_terminal(cp, "T00001")
    t3.data_received(encode({"t": "msg", "id": 1, "data": "balance?"}))
    assert not t3.closed and [f["id"] for f in frames(t3) if f["t"] == "ack"] == [1]
