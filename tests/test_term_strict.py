"""The strict verdict's harder cases, fed frame by frame to a real TerminalClient: replies the CP
sends again after a restart (`resent`), acknowledgements of ids never sent, refusals where
disconnects are expected, terminals that do not come back, and the ledger's books against a
database whose entries are wrong."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.service import ledger, once
from hsb.service.db import open_database
from hsb.term.books import check_books
from hsb.term.client import TerminalClient
from hsb.term.load import LoadStats, _not_back, _report
from hsb.term.report import LoadReport
from hsb.term.workload import LedgerWorkload
from hsb.wire.framing import encode
from tests.support.transports import RecordingTransport

BASE = 1000
pytestmark = pytest.mark.timeout(30)


def _connect(c: TerminalClient, last_acked: int = 0) -> RecordingTransport:
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": last_acked})
    return tr


def _feed(c: TerminalClient, *msgs: dict[str, Any]) -> None:
    c.data_received(b"".join(encode(m) for m in msgs))


def _client(**kw: Any) -> tuple[TerminalClient, LoadStats]:
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, check_data=True, **kw)
    _connect(c)
    return c, stats


def _verdict(c: TerminalClient, stats: LoadStats, not_back: list[TerminalClient] | None = None) -> LoadReport:
    return _report([c], stats, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, not_back or [])


def _answered_out_of_order(c: TerminalClient) -> tuple[int, int]:
    """Two messages sent and acked; only the second answered; then the CP goes and comes back.
    The terminal's new hello says last_reply 0 (the first reply is missing), so the CP may
    send the second reply again, marked resent."""
    a, b = c.submit(), c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": c.payload(b)})
    c.connection_lost(None)
    _connect(c, last_acked=b)
    assert c.told_last_reply == 0
    return a, b


async def test_a_resent_reply_the_terminal_has_is_ignored_only_with_the_same_data() -> None:
    c, stats = _client()
    a, b = _answered_out_of_order(c)
    _feed(c, {"t": "reply", "id": b, "data": c.payload(b), "resent": True}, {"t": "reply", "id": a, "data": c.payload(a)})
    r = _verdict(c, stats)
    assert r.ok and r.resent_ignored == 1, r.failures
    _feed(c, {"t": "reply", "id": b, "data": c.payload(b), "resent": True})  # once more on this connection
    r = _verdict(c, stats)
    assert not r.ok and r.duplicates == 1, r.failures
    c, stats = _client()
    a, b = _answered_out_of_order(c)
    _feed(c, {"t": "reply", "id": b, "data": "someone else's answer", "resent": True})
    r = _verdict(c, stats)
    assert not r.ok and r.bad_data == 1 and any(f.startswith("bad data") for f in r.failures), r.failures


@pytest.mark.parametrize("resume", [True, False])
async def test_a_reply_sent_twice_on_one_connection_is_a_duplicate_resent_or_not(resume: bool) -> None:
    """Only a reply the terminal held when it said hello may come again marked resent: a CP
    that sends a reply twice on one connection, the second copy marked, sends a duplicate (this
    once passed, as an ignored resend, on every terminal's first connection)."""
    c, stats = _client(resume=resume)
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)}, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = _verdict(c, stats)
    assert not r.ok and r.duplicates == 1 and r.resent_ignored == 0, r.failures


async def test_a_resent_reply_up_to_the_hellos_last_reply_is_a_duplicate() -> None:
    c, stats = _client()
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    _connect(c, last_acked=a)
    assert c.told_last_reply == a  # the CP was told this terminal holds it
    _feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = _verdict(c, stats)
    assert not r.ok and r.duplicates == 1, r.failures


async def _confirmed_again(tr: RecordingTransport) -> None:
    """Until a `confirm` is written to `tr` (its timer: 50 ms), within 2 s."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not [f for f in tr.frames() if f["t"] == "confirm"]:
        assert loop.time() - t0 < 2.0, "never confirmed again"
        await asyncio.sleep(0.005)


async def test_a_resent_reply_up_to_the_hellos_last_reply_from_a_restarted_cp_is_ignored_and_confirmed_again() -> None:
    """A restarted CP (another `cp` in the welcome) cannot know which of the replies it recovered
    its process before wrote to the terminal: it sends them all again, marked, those the hello
    said it holds too, and keeps them until a confirm covers them. hsbterm counted one at or below
    its hello's last_reply a duplicate, and never confirmed it again (its confirm had gone). Now
    it ignores each once and confirms it again; a second copy is still a duplicate."""
    c, stats = _client()
    c.connection_lost(None)
    _connect_to(c, "a")
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    assert c.confirmed == a
    c.connection_lost(None)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    assert [f["last_reply"] for f in tr.frames() if f["t"] == "hello"] == [a]
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": a, "cp": "b"})  # another CP process
    _feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = _verdict(c, stats)
    assert r.ok and r.resent_ignored == 1, r.failures
    await _confirmed_again(tr)
    assert [f["id"] for f in tr.frames() if f["t"] == "confirm"] == [a]
    _feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})  # once more on this connection
    r = _verdict(c, stats)
    assert not r.ok and r.duplicates == 1, r.failures


async def test_the_reply_to_a_recovered_message_on_a_later_connection_to_the_restarted_cp_is_ignored_and_confirmed_again() -> None:
    """A restarted CP redelivers the messages it recovered from its journal and sends each reply,
    marked, whatever a hello said (its process before may never have sent it), when the active
    answers: possibly after the terminal's connection dropped and a new one said hello to the
    same process, its last_reply covering that id. hsbterm took the resend as a duplicate (it
    allowed one below the hello's last_reply only on the first connection to the new process).
    Now one up to that welcome's last_acked is ignored, and confirmed again, once while that
    process serves (a third connection to it that gets it again: a duplicate); above it, the CP
    recovered nothing: still a duplicate."""
    c, stats = _client()
    c.connection_lost(None)
    _connect_to(c, "a")
    a, b = c.submit(), c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": a, "cp": "b"})  # restarted: a recovered
    _feed(c, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": c.payload(b)})
    c.connection_lost(None)  # before the active answered a again
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    assert [f["last_reply"] for f in tr.frames() if f["t"] == "hello"] == [b]
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": b, "cp": "b"})  # the same process
    assert c.told_last_reply == b
    _feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = _verdict(c, stats)
    assert r.ok and r.resent_ignored == 1, r.failures
    await _confirmed_again(tr)
    assert [(f["id"], f["seen"]) for f in tr.frames() if f["t"] == "confirm"] == [(b, 1)]  # seen: the reply frames read here
    _feed(c, {"t": "reply", "id": b, "data": c.payload(b), "resent": True})  # not recovered: the hello said it holds it
    r = _verdict(c, stats)
    assert not r.ok and r.duplicates == 1, r.failures
    # a third connection to the same process, its hello covering a: that process sent a's reply
    # once already (it sends each recovered one once), so a second copy is a duplicate
    c.connection_lost(None)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    assert [f["last_reply"] for f in tr.frames() if f["t"] == "hello"] == [b]
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": b, "cp": "b"})
    _feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = _verdict(c, stats)
    assert not r.ok and r.duplicates == 2 and r.resent_ignored == 1, r.failures


async def test_a_resent_reply_for_an_id_never_sent_is_unexpected_unless_an_earlier_runs() -> None:
    c, stats = _client(stride=10)  # this terminal's ids: 1000, 1010, ...; 1001 is another terminal's
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    _feed(c, {"t": "reply", "id": BASE - 5, "data": "x", "resent": True})  # below this run's ids: an earlier run's
    r = _verdict(c, stats)
    assert r.ok and r.earlier_run_replies == 1, r.failures
    _feed(c, {"t": "reply", "id": BASE + 1, "data": "x", "resent": True})  # another terminal's id
    _feed(c, {"t": "reply", "id": BASE + 500, "data": "x", "resent": True})  # not sent yet
    r = _verdict(c, stats)
    assert not r.ok and r.unexpected == 2, r.failures


async def test_an_earlier_runs_resent_replies_are_confirmed_and_not_claimed_at_the_next_hello() -> None:
    """Replies the CP kept for an earlier run of this terminal (it died without a bye) come
    resent after this run's first hello. Ignored, never confirmed, they stayed kept for good, and
    at the CP's bound of kept replies none of this run's messages was taken: this run, with no
    reply of its own, could confirm nothing. It confirms them now. Its next hello said it holds
    every reply up to the highest, and the CP would forget unsent one of the earlier run's made
    while it was away (it cannot know their ids): it says 0 at every hello now, and ignores once
    each what the CP sends again that it holds, its own and the earlier run's."""
    c, stats = _client()
    assert c.transport is not None
    tr: Any = c.transport
    _feed(c, {"t": "reply", "id": BASE - 9, "data": "x", "resent": True}, {"t": "reply", "id": BASE - 5, "data": "y", "resent": True})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while BASE - 5 not in [f["id"] for f in tr.frames() if f["t"] == "confirm"]:
        assert loop.time() - t0 < 5, tr.frames()
        await asyncio.sleep(0.01)
    assert all(f["id"] <= BASE - 5 for f in tr.frames() if f["t"] == "confirm")
    c.connection_lost(None)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    assert tr.frames()[0] == {"t": "hello", "terminal": "T1", "last_reply": 0, "first": BASE}
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0})
    _feed(c, {"t": "reply", "id": BASE - 5, "data": "y", "resent": True})  # one it has: counted once
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    r = _verdict(c, stats)
    assert r.ok and r.earlier_run_replies == 2, r.failures
    c.connection_lost(None)
    tr = _connect(c, last_acked=a)
    assert tr.frames()[0]["last_reply"] == 0  # none of its own claimed either
    _feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = _verdict(c, stats)
    assert r.ok and r.resent_ignored == 1, r.failures
    _feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})  # twice on one connection
    r = _verdict(c, stats)
    assert not r.ok and r.duplicates == 1, r.failures


async def test_an_earlier_runs_reply_made_after_this_run_logged_on_is_confirmed_not_unexpected() -> None:
    """The active may answer an earlier run's messages (it died without a bye) after this run
    logged on: the CP sends those replies as they come, not marked resent. They were counted
    unexpected and never confirmed (the CP kept them, at its bound for good). They are an earlier
    run's now, confirmed; one the CP sends after a confirm of ours covered it (it took that
    confirm short of a message then unanswered: answered out of order) is confirmed again. An
    id at or above the run's first that it never sent is still unexpected."""
    c, stats = _client(stride=10)
    tr: Any = c.transport

    def confirms() -> list[int]:
        return [f["id"] for f in tr.frames() if f["t"] == "confirm"]

    async def until(n: int) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while len(confirms()) < n:
            assert loop.time() - t0 < 5, tr.frames()
            await asyncio.sleep(0.01)

    _feed(c, {"t": "reply", "id": BASE - 5, "data": "x"})
    await until(1)
    assert confirms() == [BASE - 5]
    _feed(c, {"t": "reply", "id": BASE - 7, "data": "y"})  # answered after BASE - 5: the CP kept both
    await until(2)
    assert confirms() == [BASE - 5, BASE - 5]
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    tr = _connect(c, last_acked=a)
    assert c.told_last_reply == 0  # (an earlier run's replies came: it claims none)
    _feed(c, {"t": "reply", "id": BASE - 3, "data": "z"})  # sent as it came
    r = _verdict(c, stats)
    assert r.ok and r.earlier_run_replies == 3 and r.unexpected == 0, r.failures
    _feed(c, {"t": "reply", "id": BASE + 1, "data": "x"}, {"t": "reply", "id": BASE + 500, "data": "x"})
    r = _verdict(c, stats)
    assert not r.ok and r.unexpected == 2 and r.earlier_run_replies == 3, r.failures


async def test_nothing_follows_the_bye_on_the_wire() -> None:
    """A terminal that logs off while its welcome is still to come writes its bye; the welcome
    then came and had it send what was not acknowledged, after the bye (stats.resent counting
    them). Logged on, a reply the CP still owed it after its bye was confirmed after it, and a
    message submitted then was sent. Nothing follows the bye now."""
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, check_data=True)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    c.submit()  # not logged on yet: sent after the welcome
    c.bye()
    _feed(c, {"t": "welcome", "terminal": "T1", "last_acked": 0})
    assert [f["t"] for f in tr.frames()] == ["hello", "bye"], tr.frames()
    assert stats.resent == 0
    c, stats = _client()
    tr = c.transport  # type: ignore[assignment]
    a = c.submit()
    _feed(c, {"t": "ack", "id": a})
    c.bye()
    _feed(c, {"t": "reply", "id": a, "data": c.payload(a)}, {"t": "reply", "id": BASE - 5, "data": "x"})  # owed; an earlier run's
    c.submit()
    c.bye()
    assert [f["t"] for f in tr.frames()] == ["hello", "msg", "bye"], tr.frames()
    assert c.confirm_timer is None  # (nor one to come)


async def test_an_ack_for_an_id_never_sent_fails_the_run() -> None:
    c, stats = _client(stride=10)
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    _feed(c, {"t": "ack", "id": a})  # a second ack of its own id (a resend acked again): fine
    assert _verdict(c, stats).ok
    _feed(c, {"t": "ack", "id": BASE - 7})  # an earlier run's message, made durable after this hello: fine
    assert _verdict(c, stats).ok
    _feed(c, {"t": "ack", "id": BASE + 3})
    r = _verdict(c, stats)
    assert not r.ok and r.unexpected_acks == 1 and any(f.startswith("unexpected acks: 1") for f in r.failures), r.failures


async def test_a_last_acked_above_what_the_terminal_sent_is_an_unexpected_ack() -> None:
    """The welcome's last_acked says what the CP acknowledged for this terminal: one of its own
    ids (after a CP restart), or an earlier run's (below the run's first id). An id of this run
    it never sent (it passed silently) is an unexpected ack, as one in an `ack` frame is."""
    c, stats = _client(stride=10)
    c.connection_lost(None)
    _connect(c, last_acked=BASE - 3)  # an earlier run's (nothing of this run acknowledged yet): fine
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    _connect(c, last_acked=a)  # its own id again (a CP restarted, a reconnect): fine
    assert _verdict(c, stats).ok
    c.connection_lost(None)
    _connect(c, last_acked=BASE + 10_000)  # far above anything it sent
    r = _verdict(c, stats)
    assert not r.ok and r.unexpected_acks == 1 and any(f.startswith("unexpected acks: 1") for f in r.failures), r.failures
    c.connection_lost(None)
    _connect(c, last_acked=BASE + 1)  # below its last id, but not one of its ids (another terminal's)
    assert _verdict(c, stats).unexpected_acks == 2


@pytest.mark.parametrize("data", [b"\xff", b'{"ok":true\xff}', "not json", "[" * 100_000, {"ok": True}, None])
async def test_a_ledger_reply_that_is_not_utf8_json_is_bad_data_not_an_error(data: Any) -> None:
    """A ledger reply whose data is binary (not UTF-8) or not JSON text is bad data. Binary data
    once raised UnicodeDecodeError out of data_received: nothing counted, the id left outstanding,
    the rest of that read dropped (with --expect-disconnects the run could pass)."""
    w = LedgerWorkload(accounts=4, tag="t")
    c, stats = _client(workload=w, idx=1)
    a, b = c.submit(), c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": data}, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": '{"ok":true}'})
    r = _verdict(c, stats)
    assert not r.ok and r.bad_data == 1 and r.replied == 2 and not c.outstanding, r.failures
    assert r.failures == [f"bad data: 1 replies whose data is not an answer its request can get (e.g. T1:{a})"], r.failures
    assert w.replies[1][0] != '{"ok":true}'  # kept (the books count it answered), equal to no stored reply


@pytest.mark.parametrize("data", [b"\xff", "not json"])
async def test_a_resent_ledger_reply_that_is_not_utf8_json_is_bad_data_not_an_error(data: Any) -> None:
    """The same for a reply the CP sends again after a restart (`resent`), compared with the first."""
    c, stats = _client(workload=LedgerWorkload(accounts=4, tag="t"), idx=1)
    a, b = c.submit(), c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": '{"ok":true}'})
    c.connection_lost(None)
    _connect(c, last_acked=b)
    _feed(c, {"t": "reply", "id": b, "data": data, "resent": True}, {"t": "reply", "id": a, "data": b'{"ok":true}'})
    r = _verdict(c, stats)
    assert not r.ok and r.bad_data == 1 and r.resent_ignored == 0 and r.replied == 2 and not c.outstanding, r.failures


def test_a_refusal_fails_the_run_even_where_disconnects_are_expected() -> None:
    done = {"sent": 1, "acked": 1, "replied": 1}
    race = LoadReport(terminals=1, welcomed=1, expect_disconnects=True, errors={"already_connected": 3}, **done)
    assert race.ok, race.failures  # a reconnect that beat the CP's notice of the old connection: retried
    for code in ("bad_frame", "unknown_terminal", "bad_hello"):
        r = LoadReport(terminals=1, welcomed=1, expect_disconnects=True, errors={code: 1, "already_connected": 1}, **done)
        assert not r.ok and r.failures == [f"CP errors: {code} x1"], r.failures
    assert not LoadReport(terminals=1, welcomed=1, errors={"already_connected": 1}, **done).ok  # not expected: a failure


async def test_a_terminal_that_does_not_come_back_fails_the_run() -> None:
    c, stats = _client()
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    assert _not_back([c]) == [] and _verdict(c, stats).ok
    c.connection_lost(None)  # gone, and (no connector here) never logs on again
    gone = _not_back([c])
    assert gone == [c]
    r = _verdict(c, stats, gone)
    assert not r.ok and r.not_back == 1 and r.not_back_names == ["T1"], r.failures
    assert any(f.startswith("not back: 1 terminals") for f in r.failures)
    _connect(c, last_acked=a)
    assert _not_back([c]) == []


async def test_a_terminal_logged_on_without_its_session_again_is_not_back() -> None:
    """Logged on, but the session it had is gone and no other came: not served, so not back."""
    c, stats = _client()
    assert _not_back([c]) == []  # never had a session (a run that does not wait for one): fine
    _feed(c, {"t": "session", "state": "open", "epoch": 1})
    assert _not_back([c]) == []
    _feed(c, {"t": "session", "state": "closed", "epoch": 2})
    gone = _not_back([c])
    assert gone == [c]
    r = _verdict(c, stats, gone)
    assert not r.ok and r.not_back == 1 and any(f.startswith("not back: 1 terminals") for f in r.failures), r.failures
    _feed(c, {"t": "session", "state": "open", "epoch": 2})
    assert _not_back([c]) == []
    c.connection_lost(None)
    _connect(c, last_acked=0)  # logged on again: its session comes with the welcome or soon after
    assert _not_back([c]) == [c]
    _feed(c, {"t": "session", "state": "open", "epoch": 2})
    assert _not_back([c]) == []


async def _entry(tx: Any, t: str, mid: int, op: str, acct: str, other: str | None, n: int) -> None:
    """One ledger entry, as the ledger writes it."""
    await tx.execute(
        "INSERT INTO ledger_entries (terminal, msg_id, op, account, other, amount) VALUES ($1, $2, $3, $4, $5, $6)", t, mid, op, acct, other, n
    )


async def _ledger_db(path: Path) -> Any:
    db = open_database(None, str(path))
    await db.setup(ledger.DDL)
    await db.setup(once.DDL)
    return db


async def test_the_books_catch_a_transfer_applied_with_other_accounts_or_twice(tmp_path: Path) -> None:
    w = LedgerWorkload(accounts=4, initial=10_000, tag="t")
    term = SimpleNamespace(name="T1", idx=1, base=BASE, stride=1)
    db = await _ledger_db(tmp_path / "ledger.db")
    src, dst, amount = w.transfer(1, 0)

    async def fill(entries: list[tuple[str, str, int]]) -> None:
        async with db.transaction() as tx:
            for acct in w.accounts:
                await tx.execute("INSERT INTO ledger_accounts (account, balance) VALUES ($1, $2)", acct, w.initial)
            for s_, d_, n in entries:
                await tx.execute("UPDATE ledger_accounts SET balance = balance - $2 WHERE account = $1", s_, n)
                await tx.execute("UPDATE ledger_accounts SET balance = balance + $2 WHERE account = $1", d_, n)
                await _entry(tx, "T1", BASE, "transfer", s_, d_, n)
            for acct in w.accounts:
                await _entry(tx, "T0", 0, "deposit", acct, None, w.initial)
            await tx.execute("INSERT INTO hsb_idempotency (terminal, msg_id, reply, at) VALUES ($1, $2, $3, $4)", "T1", BASE, '{"ok":true}', 0.0)

    w.replies = {1: {0: '{"ok":true}'}}
    await fill([(src, dst, amount)])
    good = await check_books({"sqlite": str(tmp_path / "ledger.db")}, w, [term])
    assert good.failures == [], good.failures
    await db.close()

    for name, entries, failure in (
        ("other", [(dst, src, amount)], "wrong_transfer"),  # the accounts the other way round
        ("more", [(src, dst, amount + 1)], "wrong_transfer"),
        ("twice", [(src, dst, amount), (src, dst, amount)], "applied_twice"),
    ):
        db = await _ledger_db(tmp_path / f"{name}.db")
        await fill(entries)
        bad = await check_books({"sqlite": str(tmp_path / f"{name}.db")}, w, [term])
        await db.close()
        assert any(f"({failure})" in f for f in bad.failures), (name, bad.failures)

    # a reply that is not the ledger's (a host's `error: …`), the effect applied twice all the same:
    # both are caught, with or without the idempotency records to compare
    w.replies = {1: {0: "error: RuntimeError"}}
    for idempotency in (True, False):
        db = await _ledger_db(tmp_path / f"err-{idempotency}.db")
        await fill([(src, dst, amount), (src, dst, amount)])
        bad = await check_books({"sqlite": str(tmp_path / f"err-{idempotency}.db")}, w, [term], idempotency=idempotency)
        await db.close()
        assert any("(applied_twice)" in f for f in bad.failures), (idempotency, bad.failures)
        assert any("(told_refused_applied)" in f for f in bad.failures), (idempotency, bad.failures)


async def test_the_books_catch_a_refusal_for_insufficient_funds_the_account_could_pay(tmp_path: Path) -> None:
    """An insufficient_funds refusal is an entry (op `refused`), replayed in the order the entries
    were written: right while the account held less than asked; wrong if it held enough then
    (a refusal read from a stale balance, say); and a terminal told it must have that entry."""
    w = LedgerWorkload(accounts=4, initial=100, tag="r")
    term = SimpleNamespace(name="T1", idx=1, base=BASE, stride=1)
    src, dst, _ = w.transfer(1, 0)
    refusal = '{"ok":false,"error":"insufficient_funds"}'

    async def books(name: str, asked: int, refused_entry: bool, at_start: bool = False, twice: bool = False) -> list[str]:
        db = await _ledger_db(tmp_path / f"{name}.db")
        async with db.transaction() as tx:
            if refused_entry and at_start:  # before the deposits: the account held 0 then
                await _entry(tx, "T1", BASE, "refused", src, dst, asked)
            for acct in w.accounts:
                await tx.execute("INSERT INTO ledger_accounts (account, balance) VALUES ($1, $2)", acct, w.initial)
                await _entry(tx, "T0", 0, "deposit", acct, None, w.initial)
            if refused_entry and not at_start:
                await _entry(tx, "T1", BASE, "refused", src, dst, asked)
            if twice:
                await _entry(tx, "T1", BASE, "refused", src, dst, asked)
            await tx.execute("INSERT INTO hsb_idempotency (terminal, msg_id, reply, at) VALUES ($1, $2, $3, $4)", "T1", BASE, refusal, 0.0)
        await db.close()
        return (await check_books({"sqlite": str(tmp_path / f"{name}.db")}, w, [term])).failures

    w.replies = {1: {0: refusal}}
    assert await books("right", w.initial + 1, True) == []
    assert await books("right-then", w.initial, True, at_start=True) == []  # it held 0 when refused
    wrong = await books("wrong", w.initial, True)  # it held exactly enough
    assert any("(refused_wrongly)" in f for f in wrong), wrong
    unrecorded = await books("unrecorded", w.initial + 1, False)
    assert any("(refusal_unrecorded)" in f for f in unrecorded), unrecorded
    # the same message refused twice (processed twice: its idempotency record did not hold), or
    # refused with nobody told: counted as any effect is
    twice = await books("twice", w.initial + 1, True, twice=True)
    assert any("(applied_twice)" in f for f in twice), twice
    w.replies = {}
    unanswered = await books("unanswered", w.initial + 1, True)
    assert any("(applied_unanswered)" in f for f in unanswered), unanswered


async def test_the_books_catch_a_transfer_refused_for_a_reason_they_contradict(tmp_path: Path) -> None:
    """Only insufficient_funds refusals were checked: a transfer between two of the run's accounts
    answered no_such_account (or balance_limit, bad_request), with its record and no entry,
    counted as refused and passed. Each fails now where the books contradict it, and passes where
    they do not (an account missing, a request the workload made malformed)."""

    async def books(name: str, w: LedgerWorkload, reply: str, opened: list[str]) -> list[str]:
        db = await _ledger_db(tmp_path / f"{name}.db")
        async with db.transaction() as tx:
            for acct in opened:
                await tx.execute("INSERT INTO ledger_accounts (account, balance) VALUES ($1, $2)", acct, w.initial)
                await _entry(tx, "T0", 0, "deposit", acct, None, w.initial)
            await tx.execute("INSERT INTO hsb_idempotency (terminal, msg_id, reply, at) VALUES ($1, $2, $3, $4)", "T1", BASE, reply, 0.0)
        await db.close()
        w.replies = {1: {0: reply}}
        term = SimpleNamespace(name="T1", idx=1, base=BASE, stride=1)
        return (await check_books({"sqlite": str(tmp_path / f"{name}.db")}, w, [term])).failures

    w = LedgerWorkload(accounts=4, initial=100, tag="c")
    _, dst, _ = w.transfer(1, 0)
    for name, reply in (
        ("missing", '{"ok":false,"error":"no_such_account"}'),
        ("limit", '{"ok":false,"error":"balance_limit","max":4611686018427387904}'),
        ("bad", '{"ok":false,"error":"bad_request","msg":"not JSON"}'),
        ("exists", '{"ok":false,"error":"exists"}'),
        ("none", '{"ok":false}'),
    ):
        failures = await books(name, w, reply, w.accounts)
        assert any("(refusal_contradicted)" in f and f"T1:{BASE}" in f for f in failures), (name, failures)
        assert len(failures) == 1, (name, failures)  # the rest holds: balanced, recorded, nothing applied
    # where the books agree: the account was never opened; the request was malformed as made
    gone = await books("gone", w, '{"ok":false,"error":"no_such_account"}', [a for a in w.accounts if a != dst])
    assert not any("(refusal_contradicted)" in f for f in gone), gone
    long = LedgerWorkload(accounts=4, initial=100, tag="x" * 70)  # account names past 64 characters
    malformed = await books("malformed", long, '{"ok":false,"error":"bad_request","msg":"too long"}', long.accounts)
    assert malformed == [], malformed
    # a reply nested past the JSON reader's depth is no answer of the ledger's (the verdict's
    # bad_data), not a crash of the check: nothing applied, as it was told
    deep = await books("deep", w, "[" * 100_000, w.accounts)
    assert deep == [], deep


def test_a_run_that_sent_nothing_is_not_ok() -> None:
    """Terminals logged on and nothing sent (a rate of 0, a duration too short for the rate)
    proves nothing: it fails, it does not say every message was answered exactly once."""
    idle = LoadReport(terminals=10, welcomed=10, sent=0)
    assert not idle.ok and idle.exit_status == 1 and any(f.startswith("nothing sent") for f in idle.failures)
    assert LoadReport(terminals=10, welcomed=10, sent=5, acked=5, replied=5).ok


def test_another_terminals_ids_are_not_taken_for_an_earlier_runs() -> None:
    """In a run, terminal i's ids start at the run's first id + i: the first ids of the terminals
    before it lie below its own first id but are this run's. An ack or a resent reply of one of
    them reaching this terminal is misdelivered, not an earlier run's to be excused."""
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T4", stats, base=BASE + 3, floor=BASE, stride=4, idx=3, check_data=True)
    _connect(c)
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    _feed(c, {"t": "ack", "id": BASE + 1})  # terminal T2's first id
    _feed(c, {"t": "reply", "id": BASE + 2, "data": "x", "resent": True})  # T3's
    r = _verdict(c, stats)
    assert not r.ok and r.unexpected_acks == 1 and r.unexpected == 1, r.failures
    _feed(c, {"t": "ack", "id": BASE - 1})  # below the run's first id: an earlier run's, excused
    assert _verdict(c, stats).unexpected_acks == 1


async def test_a_send_owed_while_logged_off_counts_its_wait_in_the_latency() -> None:
    """A message whose turn came while the terminal was not logged on (a conventional failover
    disconnected it) goes out after the next welcome; its reply's latency counts from when it was
    due, not from when it could be sent: that wait is what the terminal's user saw."""
    import asyncio
    import time

    c, stats = _client()
    stats.sending = True
    c.connection_lost(None)
    due = time.monotonic() - 0.5
    stats.defer(c, due)
    _connect(c)  # logged on again: what it owes goes out on the next turn of the loop
    deadline = time.monotonic() + 5
    while not c.outstanding:
        assert time.monotonic() < deadline, "the owed send never went out"
        await asyncio.sleep(0)
    (mid,) = c.outstanding
    _feed(c, {"t": "ack", "id": mid}, {"t": "reply", "id": mid, "data": c.payload(mid)})
    assert stats.latency.max >= 0.5, stats.latency.max
    assert stats.ack_latency.max < 0.5  # the CP's part is measured from the send


async def test_a_send_owed_from_the_sending_phase_goes_out_when_the_terminal_is_back_later() -> None:
    """A terminal a failover kept away until the sending phase was over: what it owed goes out
    when it is back (in the settle time), not dropped, so the longest waits are in the figures."""
    import asyncio
    import time

    c, stats = _client()
    stats.sending = True
    c.connection_lost(None)
    stats.defer(c, time.monotonic() - 1.0)
    stats.sending = False  # the sending phase ends while it is away
    _connect(c)
    deadline = time.monotonic() + 5
    while not c.outstanding:
        assert time.monotonic() < deadline, "what it owed was dropped"
        await asyncio.sleep(0)
    assert not stats.deferred
    (mid,) = c.outstanding
    _feed(c, {"t": "ack", "id": mid}, {"t": "reply", "id": mid, "data": c.payload(mid)})
    assert stats.latency.max >= 1.0


def test_answers_the_logoff_brings_are_not_in_the_latencies() -> None:
    """A message the CP held until the terminal logged off (its active gone, say), acknowledged
    and answered only then: it is late at the logoff, and its wait was the logoff's, not the
    service's. It went into both latency histograms, five seconds at their top for a run whose
    answers all took milliseconds; now neither, and the answered count is as before."""
    c, stats = _client()
    a, b = c.submit(), c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.outstanding[b] -= 5.0  # sent five seconds ago, held since
    settled = {c: bytes(c.marks)}
    stats.settled([c])
    c.bye()
    _feed(c, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": c.payload(b)})  # the logoff's answers
    assert stats.latency.count == 1 and stats.ack_latency.count == 1
    assert stats.latency.max < 5.0 and stats.ack_latency.max < 5.0
    assert stats.replied == 2  # (the progress lines' count: every first reply)
    r = _report([c], stats, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, [], settled)
    assert r.replied == 1 and r.late_at_logoff == 1 and r.latency_ms["max"] is not None and r.latency_ms["max"] < 5000.0, r


async def test_owed_sends_stop_before_the_end_of_the_settle_time() -> None:
    """Past `owed_until` (the last part of the settle time, left for answers) what a terminal
    owes is not sent: sent then, it could not be answered before the end and would fail the run."""
    import asyncio
    import time

    c, stats = _client()
    stats.sending = True
    c.connection_lost(None)
    stats.defer(c, time.monotonic() - 1.0)
    stats.sending = False
    stats.owed_until = time.monotonic() - 0.1  # the settle time's last part: nothing more goes out
    _connect(c)
    for _ in range(5):
        await asyncio.sleep(0)  # (turns of the loop for the hook, which must send nothing)
    assert not c.outstanding and c in stats.deferred
    assert not stats.owing()


def test_a_welcome_from_another_cp_process_counts_as_the_cp_away() -> None:
    """A CP restarted under a master that holds its listener never refuses a connect: the
    welcome's `cp` (its process) tells the terminal that the CP it logs on to is another one."""
    c, _ = _client()
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0, "cp": "a"})  # (the first said none)
    c.connection_lost(None)
    _connect_to(c, "a")  # the same CP: a failover's reconnect, not a CP restart
    assert c.cp_reconnects == 0
    c.connection_lost(None)
    _connect_to(c, "b")
    assert c.cp_reconnects == 1
    c.connection_lost(None)
    c.cp_away()  # a connect refused first, then another CP: counted once
    _connect_to(c, "c")
    assert c.cp_reconnects == 2


def test_each_change_of_cp_process_a_terminal_lived_through_counts_once() -> None:
    """Welcomed by CP process a, which stalls: a connect of the terminal times out in its full
    accept queue, which counts the CP away. The next connect gets into that queue, the hello goes,
    and a dies: the queue is reset (a drop while logging on, naming no CP process), and a connect
    is refused. b welcomes: one change of CP process, a to b. The reset connection counted a
    second (taken for a process that died before welcoming), more than the one crash explains;
    only a welcome names a process (one that dies before welcoming is the CP log's to show). A
    connect that failed while b was there all along (b welcomes it again) was no change; a welcome
    from another process after the terminal was only parked is one."""
    c = TerminalClient("T1", LoadStats(1), base=BASE, keepalive=0)
    _connect_to(c, "a")
    c.connection_lost(OSError("timed out"))  # a stalls: the dead-peer detection ends the connection
    c.cp_away()  # a connect timed out in a's full accept queue
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]  # queued: hello sent
    c.connection_lost(None)  # a dies: its accept queue reset, no welcome
    c.cp_away()  # refused: nothing listens
    _connect_to(c, "b")
    assert c.cp_reconnects == 1 and c.logon_drops == 1
    c.connection_lost(None)
    c.cp_away()  # refused, or timed out in an overloaded backlog: b welcomes it again
    _connect_to(c, "b")
    assert c.cp_reconnects == 1
    c.connection_lost(None)
    c.cp_away(found=False)  # parked: another terminal's connect failed
    _connect_to(c, "c")
    assert c.cp_reconnects == 2


def _connect_to(c: TerminalClient, cp: str) -> None:
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0, "cp": cp})


async def test_a_message_sent_again_after_a_reconnect_is_marked_resent_and_one_never_sent_is_not() -> None:
    """hsbterm marks what it sends again (never acknowledged) `resent`: the CP, which may have lost
    it with an earlier process that handed it to the active, then delivers it marked redelivered.
    A message submitted while away goes out for the first time: unmarked."""
    c, _ = _client(resume=True)
    a = c.submit()
    tr = c.transport
    assert isinstance(tr, RecordingTransport)
    assert [f.get("resent") for f in tr.frames() if f["t"] == "msg"] == [None]
    c.connection_lost(None)
    b = c.submit()  # (away: kept for the next welcome)
    tr2 = _connect(c, last_acked=0)
    sent = [(f["id"], f.get("resent")) for f in tr2.frames() if f["t"] == "msg"]
    assert sent == [(a, True), (b, None)]
    c.connection_lost(None)
    tr3 = _connect(c, last_acked=a)  # the CP has a now: only b again, sent before on the last connection
    assert [(f["id"], f.get("resent")) for f in tr3.frames() if f["t"] == "msg"] == [(b, True)]


async def test_a_terminal_told_not_to_mark_sends_again_unmarked() -> None:
    """(`mark_resent=False`: a test's stand-in for a terminal that does not mark its resends.)"""
    c, _ = _client(resume=True, mark_resent=False)
    a = c.submit()
    c.connection_lost(None)
    tr = _connect(c, last_acked=0)
    assert [(f["id"], f.get("resent")) for f in tr.frames() if f["t"] == "msg"] == [(a, None)]


async def test_a_last_acked_below_an_id_the_cp_acknowledged_fails_the_run() -> None:
    """After a reconnect (a CP restart) the welcome's last_acked is below an id the CP had
    acknowledged: that ack was not durable (the CP forgot it). If the message is answered later
    all the same (the terminal resends it), nothing else would notice: it fails the run."""
    c, stats = _client(stride=10)
    a = c.submit()
    b = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "ack", "id": b}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    _connect(c, last_acked=a)  # b was acknowledged, and is forgotten
    _feed(c, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": c.payload(b)})  # resent, answered
    r = _verdict(c, stats)
    assert not r.ok and r.acks_forgotten == 1 and any(f.startswith("acks forgotten: 1") for f in r.failures), r.failures


def test_a_drop_while_the_same_cp_process_was_there_counts_whatever_connects_failed() -> None:
    """CP-restart mode excuses only what the CP's absence explains. A terminal dropped while the
    same CP process served, parked because a connect of another terminal failed (or one of its
    own failed for a reason of ours), was excused; the same CP welcoming it again says the CP
    was there all along. A welcome from another CP process is a restart: excused, and the one
    change of CP process it lived through (a → b)."""
    c = TerminalClient("T1", LoadStats(1), base=BASE)
    _connect_to(c, "a")
    c.connection_lost(None)
    c.cp_away(found=False)  # parked: the group's probe says the CP is away
    _connect_to(c, "a")
    assert c.cp_present_drops == 1
    c.connection_lost(None)
    c.cp_away()
    _connect_to(c, "b")  # another CP process: it restarted
    assert c.cp_present_drops == 1 and c.cp_reconnects == 1


def test_a_connection_refused_before_its_welcome_keeps_the_cps_absence_known() -> None:
    """The CP away (connects fail), then back, and the first connection is refused before its
    welcome (already_connected: the new CP has not seen the old connection go): the next welcome
    is still after the CP's absence. It counted as a drop with the CP present, and the CP's
    absence twice."""
    c, _ = _client()
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0})  # (a CP that does not say which process)
    c.connection_lost(None)
    c.cp_away()  # connects fail: the CP is away
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    _feed(c, {"t": "error", "code": "already_connected", "msg": "T1 is connected"})
    c.connection_lost(None)  # refused before its welcome
    c.cp_away()
    _feed_welcome = {"t": "welcome", "terminal": c.name, "last_acked": 0}
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    _feed(c, _feed_welcome)
    assert c.cp_present_drops == 0 and c.cp_reconnects == 1


def test_a_connection_closed_after_the_hello_without_a_word_fails_a_strict_run() -> None:
    """The CP reads the hello and closes with neither a welcome nor an error: the terminal gets in
    at its next try, and nothing else counted it. In a strict run it is a failure; one refused
    with an error frame (it says why) is not counted."""
    c, stats = _client()
    c.connection_lost(None)
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    _feed(c, {"t": "error", "code": "already_connected", "msg": "x"})
    c.connection_lost(None)  # refused, saying why
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    c.connection_lost(None)  # closed without a word
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0})
    r = _verdict(c, stats)
    assert r.logon_drops == 1 and not r.ok and any(f.startswith("dropped while logging on: 1") for f in r.failures), r.failures


@pytest.mark.parametrize(
    "frames",
    [
        [{"t": "welcome", "terminal": "T2", "last_acked": 0}],  # logged on as another terminal
        [{"t": "welcome", "terminal": "T1"}],  # no last_acked: what the CP holds is unknown
        [{"t": "welcome", "terminal": "T1", "last_acked": 0}, {"t": "welcome", "terminal": "T1", "last_acked": 0}],
        [{"t": "ack", "id": BASE}, {"t": "welcome", "terminal": "T1", "last_acked": 0}],  # before the welcome
    ],
    ids=["other-terminal", "no-last-acked", "second-welcome", "ack-first"],
)
async def test_a_welcome_that_breaks_the_protocol_fails_the_run(frames: list[dict[str, Any]]) -> None:
    """A CP that welcomes a terminal under another name serves its messages as that terminal's
    (an echo reply still matches the id and data sent); one that says no last_acked, welcomes
    twice, or answers before welcoming breaks the protocol. Each is a protocol error."""
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, check_data=True)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    _feed(c, *frames)
    assert c.protocol_errors == 1 and tr.closing
    assert [f["code"] for f in tr.frames() if f["t"] == "error"] == ["bad_fields"]
    r = _verdict(c, stats)
    assert not r.ok and any(f.startswith("protocol errors: 1") for f in r.failures), r.failures


class _ClosedLoop(LoadStats):
    """Sends the next message on each first reply, as a closed-loop load does."""

    def on_reply(self, c: TerminalClient, msg_id: int, data: Any, latency: float | None, kind: str) -> None:
        super().on_reply(c, msg_id, data, latency, kind)
        if kind == "first":
            c.submit()


async def test_a_message_whose_write_went_with_its_connection_is_a_first_send_after_the_welcome() -> None:
    """The next message, submitted while one read is handled, waits for the end of the read to be
    written; if the read closed the connection (an error frame) it never left. After the next
    welcome it goes unmarked (a resent mark would say an earlier CP may have handed it to the
    active), and a last_acked that covers it is an ack of an id the CP cannot have."""
    stats = _ClosedLoop(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, check_data=True)
    _connect(c)
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)}, {"t": "error", "code": "x", "msg": "going"})
    b = a + 1
    assert c.sent == 2 and c.sent_upto == a  # b was submitted, never written
    c.connection_lost(None)
    tr = _connect(c, last_acked=a)
    assert [(f["id"], f.get("resent")) for f in tr.frames() if f["t"] == "msg"] == [(b, None)]
    c.connection_lost(None)
    c.submit()  # (away: kept for the next welcome, never written yet)
    c2 = c.base + 2
    tr = _connect(c, last_acked=c2)  # covers an id that never left this terminal
    assert c.unexpected_acks == 1
    # b (written on the last connection) is taken as acknowledged; c2 is still sent: nothing took it
    assert [f["id"] for f in tr.frames() if f["t"] == "msg"] == [c2]


async def test_an_earlier_runs_reply_resent_after_a_hello_that_holds_this_runs_is_confirmed() -> None:
    """A hello that says this terminal holds a reply of this run claims no earlier run's: it says
    `first`, this run's first id, and the CP sends again at each hello every reply it keeps
    below it (one written to a connection that dropped before this run read it, and whose ack
    was lost with it, so the run never learned of the earlier one). Such a reply, resent below
    the hello's last_reply, was unexpected; it is an earlier run's now, confirmed."""
    c, stats = _client()
    a = c.submit()
    _feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    tr = _connect(c, last_acked=a)
    assert tr.frames()[0] == {"t": "hello", "terminal": "T1", "last_reply": a, "first": BASE}
    _feed(c, {"t": "reply", "id": BASE - 5, "data": "T2:0", "resent": True})
    r = _verdict(c, stats)
    assert r.ok and r.unexpected == 0 and r.earlier_run_replies == 1, r.failures
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not [f for f in tr.frames() if f["t"] == "confirm"]:  # (its confirm batched: 50 ms)
        assert loop.time() - t0 < 5, tr.frames()
        await asyncio.sleep(0.01)
    assert [f for f in tr.frames() if f["t"] == "confirm"] == [{"t": "confirm", "id": a, "seen": 1}]


def test_a_run_of_no_terminals_proves_nothing() -> None:
    r = LoadReport(terminals=0)
    assert not r.ok and any("no terminals" in f for f in r.failures), r.failures


class _FlowTransport(RecordingTransport):
    """A transport with asyncio's flow control: past `high` bytes not yet read by the CP it
    pauses its protocol's writing (from inside `write`, as asyncio's do); `read_all` (the CP reads
    everything) resumes it."""

    def __init__(self, protocol: TerminalClient, high: int) -> None:
        super().__init__("cp")
        self.protocol, self.high = protocol, high
        self.unread = 0
        self.paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unread += len(data)
        if self.unread > self.high and not self.paused:
            self.paused = True
            self.protocol.pause_writing()

    def read_all(self) -> None:
        self.unread = 0
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()

    def msgs(self) -> list[tuple[int, bool]]:
        return [(f["id"], bool(f.get("resent"))) for f in self.frames() if f["t"] == "msg"]


def test_a_cp_that_does_not_read_stops_the_terminals_writes_until_it_reads_again() -> None:
    """A CP that stops reading a terminal (at its held bound, or stalled): the terminal's writes
    fill its transport's buffer, which asks it to pause. hsbterm went on writing every message
    (and, after a reconnect, its whole resend) into that buffer, without bound. It now writes
    nothing new while paused, the load owing its sends; when the CP reads again, what waited goes
    out in id order, each once, then the owed sends. The same for what it sends again after a
    reconnect: marked resent, the rest when the CP reads."""
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, pad="x" * 1000)  # 100 of them: more than a chunk of the resend
    tr = _FlowTransport(c, high=4096)
    c.connection_made(tr)  # type: ignore[arg-type]
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0})
    ids = [c.submit() for _ in range(100)]  # the CP reads none of it
    written = len(tr.msgs())
    assert tr.paused and tr.unread < 4096 + 1100 and written < 6, (tr.unread, written)
    assert not c.can_send
    stats.sending = True
    stats.defer(c, 0.0)  # the load's next turn while paused: owed, not written
    tr.read_all()  # the CP reads again: the rest goes, in chunks, pausing again past the mark
    while tr.paused:
        tr.read_all()
    assert tr.msgs() == [(i, False) for i in [*ids, ids[-1] + 1]]  # (the owed send last)
    assert c.can_send and not stats.deferred
    c.connection_lost(None)  # none of it acknowledged: all of it goes again after the welcome
    tr = _FlowTransport(c, high=4096)
    c.connection_made(tr)  # type: ignore[arg-type]
    _feed(c, {"t": "welcome", "terminal": c.name, "last_acked": ids[9]})  # the first ten acknowledged
    assert tr.paused and len(tr.msgs()) < 91, len(tr.msgs())
    c.submit()  # while paused: waits behind the resend
    while tr.paused:
        tr.read_all()
    assert tr.msgs() == [(i, True) for i in [*ids[10:], ids[-1] + 1]] + [(ids[-1] + 2, False)]
