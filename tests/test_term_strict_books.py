"""The strict verdict and the ledger (hsb.term.books), fed frame by frame to a real
TerminalClient (tests/support/termfeed.py): a ledger reply, first or resent, that is not UTF-8
JSON is bad data, not an error; and the books, against a database whose entries are wrong, catch
a transfer applied with other accounts or twice, a refusal for insufficient funds the account
could pay, and a transfer refused for a reason they contradict."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.service import ledger, once
from hsb.service.db import open_database
from hsb.term.books import check_books
from hsb.term.workload import LedgerWorkload
from tests.support.termfeed import BASE, client, connect, feed, verdict

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("data", [b"\xff", b'{"ok":true\xff}', "not json", "[" * 100_000, {"ok": True}, None])
async def test_a_ledger_reply_that_is_not_utf8_json_is_bad_data_not_an_error(data: Any) -> None:
    """A ledger reply whose data is binary (not UTF-8) or not JSON text is bad data. Binary data
    once raised UnicodeDecodeError out of data_received: nothing counted, the id left outstanding,
    the rest of that read dropped (with --expect-disconnects the run could pass)."""
    w = LedgerWorkload(accounts=4, tag="t")
    c, stats = client(workload=w, idx=1)
    a, b = c.submit(), c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": data}, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": '{"ok":true}'})
    r = verdict(c, stats)
    assert not r.ok and r.bad_data == 1 and r.replied == 2 and not c.outstanding, r.failures
    assert r.failures == [f"bad data: 1 reply whose data is not an answer its request can get (e.g. T1:{a})"], r.failures
    assert w.replies[1][0] != '{"ok":true}'  # kept (the books count it answered), equal to no stored reply


@pytest.mark.parametrize("data", [b"\xff", "not json"])
async def test_a_resent_ledger_reply_that_is_not_utf8_json_is_bad_data_not_an_error(data: Any) -> None:
    """The same for a reply the CP sends again after a restart (`resent`), compared with the first."""
    c, stats = client(workload=LedgerWorkload(accounts=4, tag="t"), idx=1)
    a, b = c.submit(), c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": '{"ok":true}'})
    c.connection_lost(None)
    connect(c, last_acked=b)
    feed(c, {"t": "reply", "id": b, "data": data, "resent": True}, {"t": "reply", "id": a, "data": b'{"ok":true}'})
    r = verdict(c, stats)
    assert not r.ok and r.bad_data == 1 and r.resent_ignored == 0 and r.replied == 2 and not c.outstanding, r.failures


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
