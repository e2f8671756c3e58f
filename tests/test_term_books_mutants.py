"""The ledger's books check (hsb/term/books.py), each test naming a behaviour that a mutation audit
of the module found no test for: an answer without its idempotency record, a balance above what
its entries explain, the setup terminal's answers, a reply whose `ok` is not `true` or that is no
JSON object, an `id_reused` refusal, a reply that came while the database was read, the refused
count, the records of more terminals than one statement reads, and (on PostgreSQL) one snapshot
for every statement. In-process, on SQLite files but for the last."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.service.db import open_database
from hsb.term import books as booksmod
from hsb.term.books import Books, check_books
from hsb.term.workload import LedgerWorkload
from tests.support import pg as pgsupport
from tests.support.booksdb import Entry, fill, named
from tests.support.pg import fresh

BASE = 1000
OK = '{"ok":true}'
pytestmark = pytest.mark.timeout(30)


async def _check(path: Path, w: LedgerWorkload, clients: Sequence[Any], entries: Sequence[Entry] = (), **kw: Any) -> Books:
    db = open_database(None, str(path))
    try:
        await fill(db, w, entries, **kw)
    finally:
        await db.close()
    return await check_books({"sqlite": str(path)}, w, clients)


def _t1() -> SimpleNamespace:
    return SimpleNamespace(name="T1", idx=1, base=BASE, stride=1)


def _transfer(w: LedgerWorkload, k: int = 0) -> Entry:
    """The entry of terminal T1's transfer `k`, as its message asked for."""
    src, dst, amount = w.transfer(1, k)
    return ("T1", BASE + k, "transfer", src, dst, amount)


async def test_an_answer_without_its_idempotency_record_fails(tmp_path: Path) -> None:
    """A terminal answered for a message the database holds no idempotency record of (the reply
    a redelivery would get is gone) is a breach, with everything else right."""
    w = LedgerWorkload(accounts=4, initial=1000, tag="m")
    w.replies = {1: {0: OK}}
    b = await _check(tmp_path / "b.db", w, [_t1()], [_transfer(w)])
    assert named(b.failures) == ["record_missing"], b.failures


async def test_a_balance_above_what_its_entries_explain_fails(tmp_path: Path) -> None:
    """An entry whose effect the balance lacks (a withdrawal written, the balance never lowered):
    the total holds, the account holds more than its replay; that is a breach too."""
    w = LedgerWorkload(accounts=4, initial=1000, tag="m")
    w.replies = {1: {0: OK}}
    withdrawn: Entry = ("T0", 7, "withdraw", w.accounts[0], None, 5)
    b = await _check(tmp_path / "b.db", w, [_t1()], [_transfer(w), withdrawn], records=[("T1", BASE, OK)])
    assert named(b.failures) == ["replay_mismatch"], b.failures


async def test_the_setup_terminals_answers_are_not_transfers(tmp_path: Path) -> None:
    """Terminal 0's first messages open the accounts and deposit into them: their answers
    (`ok` with no transfer entry) are no transfer told ok and never applied."""
    w = LedgerWorkload(accounts=4, initial=1000, tag="s")
    t0 = SimpleNamespace(name="T0", idx=0, base=BASE, stride=1)
    setup = {k: '{"ok":true,"balance":0}' if k % 2 == 0 else f'{{"ok":true,"balance":{w.initial}}}' for k in range(w.setup_count)}
    w.replies = {0: setup, 1: {0: OK}}
    records = [("T0", BASE + k, text) for k, text in setup.items()] + [("T1", BASE, OK)]
    b = await _check(tmp_path / "b.db", w, [t0, _t1()], [_transfer(w)], records=records)
    assert b.failures == [] and b.transfers_ok == 1, b.failures


async def test_a_reply_whose_ok_is_not_true_tells_nothing_was_applied(tmp_path: Path) -> None:
    """Only `"ok": true` is the ledger's ok: a reply with `"ok": 1` told the terminal nothing of
    a transfer, so one applied is a breach."""
    w = LedgerWorkload(accounts=4, initial=1000, tag="o")
    w.replies = {1: {0: '{"ok":1}'}}
    b = await _check(tmp_path / "b.db", w, [_t1()], [_transfer(w)], records=[("T1", BASE, '{"ok":1}')])
    assert "told_refused_applied" in named(b.failures) and b.transfers_ok == 0, b.failures


async def test_an_id_reused_refusal_is_left_to_the_same_answer_check(tmp_path: Path) -> None:
    """`id_reused` is an answer the ledger gives a transfer (docs: left to **same answer**): it
    is not contradicted by the books; its reply differing from the stored one is the breach."""
    w = LedgerWorkload(accounts=4, initial=1000, tag="i")
    w.replies = {1: {0: '{"ok":false,"error":"id_reused","msg":"another request"}'}}
    b = await _check(tmp_path / "b.db", w, [_t1()], records=[("T1", BASE, '{"ok":false,"error":"insufficient_funds"}')])
    assert named(b.failures) == ["reply_differs"], b.failures


@pytest.mark.parametrize("reply", ["[1]", "5", '"ok"', "null"])
async def test_a_reply_that_is_json_but_no_object_tells_nothing_was_applied(tmp_path: Path, reply: str) -> None:
    """A reply that is JSON but not an object is no answer of the ledger's (the verdict's bad
    data): told nothing was applied, with nothing applied the books agree, and the check runs."""
    w = LedgerWorkload(accounts=4, initial=1000, tag="j")
    w.replies = {1: {0: reply}}
    b = await _check(tmp_path / "b.db", w, [_t1()], records=[("T1", BASE, reply)])
    assert b.failures == [] and b.transfers_refused == 1, b.failures


async def test_a_refusal_counts_as_refused(tmp_path: Path) -> None:
    """The books count each transfer told refused (the report shows the count)."""
    w = LedgerWorkload(accounts=4, initial=10, tag="r")
    refusal = '{"ok":false,"error":"insufficient_funds"}'
    src, dst, _ = w.transfer(1, 0)
    w.replies = {1: {0: refusal}}
    b = await _check(tmp_path / "b.db", w, [_t1()], [("T1", BASE, "refused", src, dst, w.initial + 1)], records=[("T1", BASE, refusal)])
    assert b.failures == [] and (b.transfers_ok, b.transfers_refused) == (0, 1) and b.as_dict()["transfers_refused"] == 1, b.failures


async def test_a_reply_that_comes_while_the_database_is_read_is_not_judged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replies judged are those the terminals had before the database was read: one that
    comes during the read (its commit may be after the snapshot) is not yet owed to the books."""
    w = LedgerWorkload(accounts=4, initial=1000, tag="d")
    w.replies = {1: {0: OK}}
    path = tmp_path / "b.db"
    db = open_database(None, str(path))
    try:
        await fill(db, w, [_transfer(w)], records=[("T1", BASE, OK)])
    finally:
        await db.close()
    real = open_database  # (the one hsb.term.books opens with)

    def opening(*a: Any, **kw: Any) -> Any:
        inner: Any = real(*a, **kw)
        plain = inner.transaction

        @asynccontextmanager
        async def transaction() -> AsyncIterator[Any]:
            async with plain() as tx:
                w.replies[1][1] = OK  # message 1 answered now: its effect not read
                yield tx

        inner.transaction = transaction
        return inner

    monkeypatch.setattr(booksmod, "open_database", opening)
    b = await check_books({"sqlite": str(path)}, w, [_t1()])
    assert b.failures == [] and b.transfers_ok == 1, b.failures


async def test_the_records_of_more_terminals_than_one_statement_reads_are_all_read(tmp_path: Path) -> None:
    """The records are read RECORDS_CHUNK terminals a statement: with one terminal more than two
    statements' worth, every terminal's record is read (none said missing)."""
    w = LedgerWorkload(accounts=4, initial=1000, tag="c")
    n = 2 * booksmod.RECORDS_CHUNK + 1
    clients = [SimpleNamespace(name=f"T{i:04d}", idx=i, base=BASE, stride=1) for i in range(1, n + 1)]
    told = "error: RuntimeError"  # a host's error: no ledger answer, nothing applied
    w.replies = {c.idx: {0: told} for c in clients}
    b = await _check(tmp_path / "b.db", w, clients, records=[(c.name, BASE, told) for c in clients])
    assert b.failures == [] and b.transfers_refused == n, b.failures[:3]


@pytest.mark.timeout(120)
async def test_the_check_reads_one_snapshot_on_postgresql(pg: pgsupport.PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL every statement of the check reads one snapshot: a transfer committed
    between its read of the balances and of the entries (the service goes on during a mid-run
    check) is in neither, not in the entries only (a balance its entries do not explain)."""
    from hsb.service import db as dbmod

    dsn = fresh(pg)
    w = LedgerWorkload(accounts=4, initial=1000, tag="p")
    w.replies = {1: {0: OK}}
    db = open_database(dsn, None)
    try:
        await fill(db, w, [_transfer(w)], records=[("T1", BASE, OK)])
    finally:
        await db.close()
    real_fetch = dbmod._PgTx.fetch
    done: list[bool] = []

    async def fetch(self: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        rows = await real_fetch(self, sql, *args)
        if "FROM ledger_accounts" in sql and not done:  # the balances read: T1's message 1 commits now
            done.append(True)
            other = open_database(dsn, None)
            try:
                t, mid, op, src, dst, amount = _transfer(w, 1)
                async with other.transaction() as tx:
                    await tx.execute(
                        "INSERT INTO ledger_entries (terminal, msg_id, op, account, other, amount) VALUES ($1, $2, $3, $4, $5, $6)",
                        t,
                        mid,
                        op,
                        src,
                        dst,
                        amount,
                    )
                    await tx.execute("UPDATE ledger_accounts SET balance = balance - $2 WHERE account = $1", src, amount)
                    await tx.execute("UPDATE ledger_accounts SET balance = balance + $2 WHERE account = $1", dst, amount)
            finally:
                await other.close()
        return rows

    monkeypatch.setattr(dbmod._PgTx, "fetch", fetch)
    b = await check_books({"dsn": dsn}, w, [_t1()], final=False)
    assert done and b.failures == [], b.failures
