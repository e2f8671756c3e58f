"""The ledger service and exactly-once effects (SPEC §5.6, §8; docs/ledger.md).

In process: the request parser, the operations and `ExactlyOnce` on SQLite and on a real,
throwaway PostgreSQL server (tests/support/pg.py). End to end: real hsbcpd and hsbd from the
sandbox with `service = "ledger"` on PostgreSQL and on SQLite, 200 terminals sending
transfers, the active SIGKILLed or SIGSTOPped, hsbcpd SIGKILLed, the database stopped for a
while; after each, `hsbterm`'s books check (hsb.term.books) and the strict verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox
from hsb.service.api import ServiceUnavailable
from hsb.service.db import SqliteDatabase, open_database
from hsb.service.ledger import BadRequest, LedgerService, parse
from hsb.service.once import ExactlyOnce, RequestMismatch
from hsb.term.load import background_load
from hsb.term.workload import LedgerWorkload
from tests.support import pg as pgsupport
from tests.support.procs import http_get, log_events, until, wait_for
from tests.support.sandboxed import active_names, http_of, pid_of, wait_status

pytestmark = pytest.mark.timeout(120)

NO_PG = pgsupport.missing()
needs_pg = pytest.mark.skipif(NO_PG is not None, reason=NO_PG or "")


_dbs = iter(range(1, 10**6))


def fresh(pg: pgsupport.PgServer) -> str:
    return pg.createdb(f"t{os.getpid()}_{next(_dbs)}")


# --------------------------------------------------------------------------- the requests


@pytest.mark.parametrize(
    "data, why",
    [
        ("nonsense", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"op":"steal","account":"a"}', "unknown op"),
        ('{"op":"deposit","account":"a","amount":-5}', "positive integer"),
        ('{"op":"deposit","account":"a","amount":1.5}', "positive integer"),
        ('{"op":"deposit","account":"a","amount":true}', "positive integer"),
        ('{"op":"open","account":""}', "non-empty"),
        ('{"op":"open","account":"' + "x" * 65 + '"}', "longer than 64"),
        ('{"op":"transfer","from":"a","to":"a","amount":1}', "same account"),
        (b"\xff\xfe", "UTF-8"),
        (42, "JSON object as text"),
    ],
)
def test_bad_requests_are_named(data: Any, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        parse(data)


async def test_the_operations_and_their_refusals_on_sqlite(tmp_path: Path) -> None:
    s = LedgerService("host-a", sqlite=str(tmp_path / "l.sqlite"))
    ask = iter(range(1, 100))

    async def call(req: dict[str, Any] | str) -> dict[str, Any]:
        data = req if isinstance(req, str) else json.dumps(req)
        return json.loads(await s.handle("T1", next(ask), data, False))

    try:
        assert await call({"op": "open", "account": "a"}) == {"ok": True, "balance": 0}
        assert await call({"op": "open", "account": "a"}) == {"ok": False, "error": "exists"}
        assert await call({"op": "open", "account": "b"}) == {"ok": True, "balance": 0}
        assert await call({"op": "deposit", "account": "a", "amount": 100}) == {"ok": True, "balance": 100}
        assert await call({"op": "deposit", "account": "zz", "amount": 1}) == {"ok": False, "error": "no_such_account"}
        assert await call({"op": "withdraw", "account": "a", "amount": 101}) == {"ok": False, "error": "insufficient_funds", "balance": 100}
        assert await call({"op": "withdraw", "account": "a", "amount": 40}) == {"ok": True, "balance": 60}
        assert await call({"op": "transfer", "from": "a", "to": "b", "amount": 61}) == {"ok": False, "error": "insufficient_funds"}
        assert await call({"op": "transfer", "from": "a", "to": "b", "amount": 60}) == {"ok": True}
        assert await call({"op": "transfer", "from": "a", "to": "nobody", "amount": 1}) == {"ok": False, "error": "no_such_account"}
        assert await call({"op": "balance", "account": "b"}) == {"ok": True, "balance": 60}
        assert await call({"op": "balance", "account": "a"}) == {"ok": True, "balance": 0}
        # the same id again (its CP state lost, say) with another request: not applied, and not
        # answered with the first request's reply; the same request again gets that reply
        again = {"op": "deposit", "account": "b", "amount": 5}
        assert json.loads(await s.handle("T1", 1, json.dumps(again), True))["error"] == "id_reused"
        assert json.loads(await s.handle("T1", 1, json.dumps(again), False))["error"] == "id_reused"
        assert json.loads(await s.handle("T1", 1, json.dumps({"op": "open", "account": "a"}), True)) == {"ok": True, "balance": 0}
        assert await call({"op": "balance", "account": "b"}) == {"ok": True, "balance": 60}
        assert s.once.counters["mismatched"] == 2
        # redelivered, a request this code refuses, its id recorded for another one: not that one's reply
        assert json.loads(await s.handle("T1", 1, "{", True))["error"] == "bad_request"
        assert s.once.counters["mismatched"] == 3
        bad = await call("{")
        assert bad["ok"] is False and bad["error"] == "bad_request" and "not JSON" in bad["msg"]
        # each insufficient_funds refusal is an entry, in the order written (the books replay them)
        async with s.db.transaction() as tx:
            refused = await tx.fetch("SELECT msg_id, op, account, other, amount FROM ledger_entries WHERE op = 'refused' ORDER BY rowid")
        assert [tuple(r) for r in refused] == [(6, "refused", "a", None, 101), (8, "refused", "a", "b", 61)], refused
    finally:
        await s.close()


@needs_pg
async def test_an_old_entries_table_gets_its_order_and_refusals_replay_in_it_on_postgresql(pg: pgsupport.PgServer) -> None:
    """`ledger_entries` made before its `seq` (the order the books replay refusals in) gets the
    column at the next start, once with two hosts starting; the old rows numbered, new ones after."""
    dsn = fresh(pg)
    old = open_database(dsn)
    try:
        await old.setup(
            [
                "CREATE TABLE ledger_entries (terminal TEXT NOT NULL, msg_id BIGINT NOT NULL, op TEXT NOT NULL,"
                " account TEXT NOT NULL, other TEXT, amount BIGINT NOT NULL)",
                "INSERT INTO ledger_entries VALUES ('T0', 1, 'open', 'a', NULL, 0)",
            ]
        )
    finally:
        await old.close()
    hosts = [LedgerService(h, dsn=dsn) for h in ("host-a", "host-b")]
    try:
        await asyncio.gather(*(h._setup() for h in hosts))
        a = hosts[0]
        assert json.loads(await a.handle("T1", 1, '{"op":"open","account":"a"}', False))["ok"] is True
        assert json.loads(await a.handle("T1", 2, '{"op":"withdraw","account":"a","amount":5}', False))["error"] == "insufficient_funds"
        async with a.db.transaction() as tx:
            rows = [tuple(r) for r in await tx.fetch("SELECT op, msg_id, seq FROM ledger_entries ORDER BY seq")]
        assert [(op, mid) for op, mid, _ in rows] == [("open", 1), ("open", 1), ("refused", 2)], rows
    finally:
        for h in hosts:
            await h.close()


@needs_pg
async def test_the_books_check_reads_only_this_runs_idempotency_records_on_postgresql(
    pg: pgsupport.PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database kept across runs holds every earlier run's records of the same terminal names:
    the check read them all, in one snapshot with the service's 10 s statement and 1 s idle
    timeouts, and with millions of them said the books could not be checked. It reads this run's
    records only (from each terminal's id base on), on a connection of its own timeouts, and is
    as strict for them: a reply that differs from this run's record still fails it."""
    from types import SimpleNamespace

    from hsb.service import db as dbmod
    from hsb.term.books import check_books

    dsn = fresh(pg)
    base = 1_700_000_000_000_000  # this run's id base (the clock in µs); the earlier run's are below
    w = LedgerWorkload(accounts=4, initial=10_000, tag="b")
    term = SimpleNamespace(name="T1", idx=1, base=base, stride=1)
    src, dst, amount = w.transfer(1, 0)
    svc = LedgerService("host-a", dsn=dsn)
    try:
        await svc._setup()
        async with svc.db.transaction() as tx:
            for acct in w.accounts:
                await tx.execute("INSERT INTO ledger_accounts (account, balance) VALUES ($1, $2)", acct, w.initial)
                await tx.execute(
                    "INSERT INTO ledger_entries (terminal, msg_id, op, account, amount) VALUES ('T0', 0, 'deposit', $1, $2)", acct, w.initial
                )
            await tx.execute("UPDATE ledger_accounts SET balance = balance - $2 WHERE account = $1", src, amount)
            await tx.execute("UPDATE ledger_accounts SET balance = balance + $2 WHERE account = $1", dst, amount)
            await tx.execute(
                "INSERT INTO ledger_entries (terminal, msg_id, op, account, other, amount) VALUES ('T1', $1, 'transfer', $2, $3, $4)",
                base,
                src,
                dst,
                amount,
            )
            await tx.execute("INSERT INTO hsb_idempotency (terminal, msg_id, reply, at) VALUES ('T1', $1, $2, 0)", base, '{"ok":true}')
            # an earlier run of the same terminal names: its records, none of this run's
            await tx.execute(
                "INSERT INTO hsb_idempotency (terminal, msg_id, reply, at) SELECT 'T1', g, 'earlier', 0 FROM generate_series($1::bigint, $2::bigint) g",
                base - 3000,
                base - 1,
            )
    finally:
        await svc.close()
    read: list[tuple[str, int, Any]] = []
    real_fetch = dbmod._PgTx.fetch

    async def fetch(self: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        rows = await real_fetch(self, sql, *args)
        read.append((sql, len(rows), await self.conn.fetchval("SHOW idle_in_transaction_session_timeout")))
        return rows

    monkeypatch.setattr(dbmod._PgTx, "fetch", fetch)
    w.replies = {1: {0: '{"ok":true}'}}
    good = await check_books({"dsn": dsn}, w, [term])
    assert good.failures == [] and good.transfers_ok == 1, good.failures
    records = [(n, idle) for sql, n, idle in read if "hsb_idempotency" in sql]
    assert [n for n, _ in records] == [1], read  # this run's one record, not the earlier run's 3000
    assert all(idle == "1min" for _, _, idle in read), read  # its own timeouts, not the service's 1 s
    w.replies = {1: {0: '{"ok":false,"error":"insufficient_funds"}'}}  # told otherwise than its record says
    bad = await check_books({"dsn": dsn}, w, [term])
    assert any("(reply_differs)" in f for f in bad.failures), bad.failures


async def _exactly_once(db: Any) -> None:
    once = ExactlyOnce(db)
    await once.setup()
    await db.setup(["CREATE TABLE IF NOT EXISTS t_counter (k TEXT PRIMARY KEY, n BIGINT NOT NULL)"])
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO t_counter (k, n) VALUES ('x', 0)")
    runs = 0

    async def bump(tx: Any) -> str:
        nonlocal runs
        runs += 1
        n = await tx.fetchval("UPDATE t_counter SET n = n + 1 WHERE k = 'x' RETURNING n")
        return f"n={n}"

    first = await once.run("T1", 7, False, bump)
    assert first == "n=1"
    # delivered again after a failover: the stored reply, no second effect, not even tried
    assert await once.run("T1", 7, True, bump) == "n=1" and runs == 1
    # even without the redelivered mark, the record wins: the effect is rolled back
    assert await once.run("T1", 7, False, bump) == "n=1" and runs == 2
    # the same message on two hosts at once (an old active still finishing): one effect
    replies = await asyncio.gather(*(once.run("T2", 1, False, bump) for _ in range(5)))
    assert len(set(replies)) == 1, replies
    async with db.transaction() as tx:
        assert await tx.fetchval("SELECT n FROM t_counter WHERE k = 'x'") == 2
        assert await tx.fetchval("SELECT count(*) FROM hsb_idempotency") == 2
    assert once.counters["applied"] == 2 and once.counters["replayed"] >= 2

    async def as_bytes(tx: Any) -> Any:  # a reply that is not text: refused, its effect rolled back
        await tx.fetchval("UPDATE t_counter SET n = n + 1 WHERE k = 'x' RETURNING n")
        return b"n=3"

    # with the request: the same request again replays, another one for the same id is refused
    assert await once.run("T4", 1, False, bump, request="first") == "n=3"
    assert await once.run("T4", 1, True, bump, request="first") == "n=3"
    assert await once.run("T4", 1, False, bump, request=b"first") == "n=3"  # (its UTF-8 bytes: the same)
    for redelivered in (True, False):
        with pytest.raises(RequestMismatch):
            await once.run("T4", 1, redelivered, bump, request="second")
    assert await once.run("T4", 1, True, bump) == "n=3"  # no request given: nothing to compare
    assert once.counters["mismatched"] == 2
    async with db.transaction() as tx:
        assert await tx.fetchval("SELECT n FROM t_counter WHERE k = 'x'") == 3
        assert await tx.execute("DELETE FROM hsb_idempotency WHERE terminal = 'T4'") == 1
        assert await tx.execute("UPDATE t_counter SET n = 2 WHERE k = 'x'") == 1

    with pytest.raises(TypeError, match="reply as text"):  # (SQLite stored it as a blob, replayed as "b'n=3'")
        await once.run("T3", 1, False, as_bytes)
    async with db.transaction() as tx:
        assert await tx.fetchval("SELECT n FROM t_counter WHERE k = 'x'") == 2
        assert await tx.fetchval("SELECT count(*) FROM hsb_idempotency") == 2

    # an effect that fails when its first run is done (an insert of the same key), the repeat not
    # marked redelivered (a terminal's resend after a CP crash, to a host that never had it): the
    # first run's reply, not the error
    await db.setup(["CREATE TABLE IF NOT EXISTS t_orders (no TEXT PRIMARY KEY)"])

    async def place(tx: Any) -> str:
        await tx.execute("INSERT INTO t_orders (no) VALUES ('o-1')")
        return "placed o-1"

    assert await once.run("T5", 1, False, place) == "placed o-1"
    assert await once.run("T5", 1, False, place) == "placed o-1", "an unmarked repeat got its effect's error"
    with pytest.raises(Exception) as exc:  # noqa: PT011 - the database's own integrity error, either kind
        await once.run("T5", 2, False, place)  # a new message whose effect fails: its error stands
    assert "unique" in str(exc.value).lower() or "duplicate" in str(exc.value).lower()


async def _an_old_table_is_upgraded(db: Any) -> None:
    """A table made before the request's hash was kept gets the column at the next start; its
    old records (no hash) are answered as before, without a comparison."""
    await db.setup(
        [
            "CREATE TABLE hsb_idempotency (terminal TEXT NOT NULL, msg_id BIGINT NOT NULL, reply TEXT NOT NULL,"
            " at DOUBLE PRECISION NOT NULL, PRIMARY KEY (terminal, msg_id))"
        ]
    )
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO hsb_idempotency (terminal, msg_id, reply, at) VALUES ('T1', 1, 'old', 0)")
    once = ExactlyOnce(db)
    await once.setup()
    await once.setup()  # (again: both hosts start; the column is there once)

    async def nothing(tx: Any) -> str:
        return "new"

    assert await once.run("T1", 1, True, nothing, request="whatever") == "old"
    assert await once.run("T1", 2, False, nothing, request="b") == "new"
    with pytest.raises(RequestMismatch):
        await once.run("T1", 2, True, nothing, request="c")


async def test_an_old_idempotency_table_is_upgraded_on_sqlite(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "old.sqlite"))
    try:
        await _an_old_table_is_upgraded(db)
    finally:
        await db.close()


@needs_pg
async def test_an_old_idempotency_table_is_upgraded_on_postgresql(pg: pgsupport.PgServer) -> None:
    db = open_database(fresh(pg))
    try:
        await _an_old_table_is_upgraded(db)
    finally:
        await db.close()


async def test_exactly_once_on_sqlite(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "once.sqlite"))
    try:
        await _exactly_once(db)
    finally:
        await db.close()


async def test_sqlite_a_transaction_cancelled_in_its_begin_leaves_nothing_open(tmp_path: Path) -> None:
    """A message's work is cancelled when the active loses its CP link; if that lands while the
    BEGIN runs on the database's thread (waiting for the write lock), the transaction must not
    stay open: every later one failed ("cannot start a transaction within a transaction") and the
    database's write lock stayed held, the other host and the books locked out."""
    import sqlite3
    import threading

    path = tmp_path / "cancel.sqlite"
    db = SqliteDatabase(str(path))
    try:
        await db.setup(["CREATE TABLE t (k TEXT PRIMARY KEY)"])
        conn = await db._call(lambda c: c)
        began = threading.Event()
        conn.set_trace_callback(lambda sql: began.set() if sql.startswith("BEGIN IMMEDIATE") else None)
        other = sqlite3.connect(path, isolation_level=None)  # another host holding the write lock
        other.execute("BEGIN IMMEDIATE")

        async def work() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES ('never')")

        task = asyncio.ensure_future(work())
        deadline = time.monotonic() + 5
        while not began.is_set():  # its BEGIN is running on the thread, waiting for the lock
            assert time.monotonic() < deadline, "the BEGIN never ran"
            await asyncio.sleep(0.005)
        task.cancel()
        other.execute("ROLLBACK")  # the BEGIN now completes on the thread, its task gone
        other.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with db.transaction() as tx:  # the next transaction works, and nothing of the first is there
            await tx.execute("INSERT INTO t VALUES ('next')")
        async with db.transaction() as tx:
            assert await tx.fetch("SELECT k FROM t") == [("next",)]
        assert not await db._call(lambda c: c.in_transaction)
    finally:
        await db.close()


async def test_sqlite_run_is_the_whole_transaction_in_one_call_on_its_thread(tmp_path: Path) -> None:
    """`SqliteDatabase.run`: BEGIN, the body's statements and COMMIT in one call on the database's
    thread (not one hop per statement); a body that raises, or awaits anything but its
    statements, is rolled back and says why; and it waits for a `transaction()` still open."""
    import threading

    db = SqliteDatabase(str(tmp_path / "run.sqlite"))
    try:
        await db.setup(["CREATE TABLE t (k TEXT PRIMARY KEY)"])
        calls: list[int] = []
        real_call = db._exec.call
        db._exec.call = lambda fn, done: (calls.append(1), real_call(fn, done))[1]  # type: ignore[method-assign]
        threads: list[int] = []

        async def two(tx: Any) -> int:
            threads.append(threading.get_ident())
            await tx.execute("INSERT INTO t VALUES ($1)", "a")
            await tx.execute("INSERT INTO t VALUES ($1)", "b")
            return int(await tx.fetchval("SELECT count(*) FROM t"))

        assert await db.run(two) == 2
        assert len(calls) == 1 and threads and threads[0] != threading.get_ident()

        async def fails(tx: Any) -> None:
            await tx.execute("INSERT INTO t VALUES ('c')")
            raise ValueError("a bug")

        with pytest.raises(ValueError, match="a bug"):
            await db.run(fails)

        async def sleeps(tx: Any) -> None:
            await tx.execute("INSERT INTO t VALUES ('d')")
            await asyncio.sleep(0)

        with pytest.raises(RuntimeError, match="may await only its transaction's statements"):
            await db.run(sleeps)

        async def keys(tx: Any) -> list[tuple[Any, ...]]:
            return await tx.fetch("SELECT k FROM t ORDER BY k")  # type: ignore[no-any-return]

        assert await db.run(keys) == [("a",), ("b",)]  # neither 'c' nor 'd': both rolled back
        assert not await db._call(lambda c: c.in_transaction)

        order: list[str] = []

        async def later(tx: Any) -> None:
            order.append("run")
            await tx.execute("INSERT INTO t VALUES ('e')")

        async with db.transaction() as tx:  # a run() meanwhile waits for this one to end
            waiting = asyncio.ensure_future(db.run(later))
            await tx.execute("INSERT INTO t VALUES ('f')")
            await asyncio.sleep(0.05)  # an observation window for a negative check: the waiting run() must not start in it
            order.append("transaction")
        await waiting
        assert order == ["transaction", "run"]
        assert await db.run(keys) == [("a",), ("b",), ("e",), ("f",)]
    finally:
        await db.close()


async def test_sqlite_close_gives_up_on_a_statement_that_does_not_return(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung disk: the statement on the database's thread does not return (fsync blocks;
    busy_timeout bounds only lock waits). close() queued its close behind it with no bound, so
    hsbd's stop hung (PostgreSQL's gives up after 5 s, the journal service's after 2 s). It gives
    up after close_timeout, and says so; the statement is left to end on its thread."""
    import threading

    from hsb.service import db as dbmod
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(dbmod, "log", rec, raising=False)
    db = SqliteDatabase(str(tmp_path / "hung.sqlite"))
    db.close_timeout = 0.3
    disk = threading.Event()
    on_thread = threading.Event()

    async def hangs(tx: Any) -> int:
        await tx.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER)")
        on_thread.set()
        disk.wait(30)  # (on the database's thread: as an fsync that does not return)
        return 1

    hung = asyncio.ensure_future(db.run(hangs))
    try:
        await until(lambda: on_thread.is_set(), 5, what="the statement running")
        t0 = time.monotonic()
        await asyncio.wait_for(db.close(), 3)
        assert time.monotonic() - t0 < 2
        assert [e["path"] for e in rec.events("sqlite_close_abandoned")] == [str(tmp_path / "hung.sqlite")], rec.entries
    finally:
        disk.set()
    assert await hung == 1  # not abandoned: it ended, its answer delivered
    await until(lambda: not db._exec._thread.is_alive(), 5, what="the database's thread ended")


@needs_pg
async def test_exactly_once_on_postgresql(pg: pgsupport.PgServer) -> None:
    db = open_database(fresh(pg))
    try:
        await _exactly_once(db)
    finally:
        await db.close()


async def test_a_redelivery_whose_effect_fails_on_the_first_runs_commit_gets_that_runs_reply(pg: pgsupport.PgServer) -> None:
    """Two hosts on one message: the old active's run is still open when the redelivery reaches
    the new one, whose lookup cannot see it yet. The redelivery's effect inserts the same unique
    key, waits for the old run's commit, then fails on it: the answer is the old run's stored
    reply, not the error (both hosts' replies to one message are the same)."""
    dsn = fresh(pg)
    old, new = open_database(dsn), open_database(dsn)
    try:
        once_old, once_new = ExactlyOnce(old), ExactlyOnce(new)
        await once_old.setup()
        await old.setup(["CREATE TABLE IF NOT EXISTS t_orders (order_no TEXT PRIMARY KEY)"])
        inserted, release = asyncio.Event(), asyncio.Event()

        async def place_then_wait(tx: Any) -> str:
            await tx.execute("INSERT INTO t_orders (order_no) VALUES ('o-1')")
            inserted.set()
            await release.wait()  # (the old active, stopped inside its transaction)
            return "placed o-1"

        async def place(tx: Any) -> str:
            await tx.execute("INSERT INTO t_orders (order_no) VALUES ('o-1')")  # a unique key: fails on a duplicate
            return "placed o-1 (again?)"

        first = asyncio.ensure_future(once_old.run("T1", 5, False, place_then_wait, request="order o-1"))
        await asyncio.wait_for(inserted.wait(), 10)
        second = asyncio.ensure_future(once_new.run("T1", 5, True, place, request="order o-1"))

        async def waiting_on_the_lock() -> bool:
            async with new.transaction() as tx:
                n = await tx.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO t_orders%'")
            return bool(n)

        deadline = time.monotonic() + 10
        while not await waiting_on_the_lock():
            assert time.monotonic() < deadline, "the redelivery's insert never waited for the first run"
            assert not second.done(), second
            await asyncio.sleep(0.01)
        release.set()
        assert await asyncio.wait_for(first, 10) == "placed o-1"
        assert await asyncio.wait_for(second, 10) == "placed o-1"  # the first run's reply, not UniqueViolationError
        assert once_new.counters["replayed"] == 1 and once_new.counters["applied"] == 0
        async with old.transaction() as tx:
            assert await tx.fetchval("SELECT count(*) FROM t_orders") == 1
        # an effect that fails with no record anywhere is still answered with its error
        with pytest.raises(Exception, match="duplicate key"):
            await once_new.run("T1", 6, True, place, request="order o-1 again")
    finally:
        await old.close()
        await new.close()


async def test_a_ledger_whose_role_may_not_create_its_tables_holds_messages_and_names_the_fix(pg: pgsupport.PgServer) -> None:
    """A database role that may not create the tables (PostgreSQL 15's default on schema public
    for a role that does not own it): the message waits (ServiceUnavailable: held at the CP, the
    service failing), with the reason and the fix, never an error reply; granted, it goes on."""
    dsn = fresh(pg)
    db = dsn.split("@/", 1)[1].split("?")[0]
    role = f"r{os.getpid()}"
    pg._psql(f"CREATE ROLE {role} LOGIN")
    s = LedgerService("host-a", dsn=dsn.replace("postgres@", f"{role}@"))
    try:
        with pytest.raises(ServiceUnavailable, match=r"ledger setup failed \(InsufficientPrivilegeError.*role must own"):
            await s.handle("T1", 1, '{"op":"open","account":"a"}', False)
        with pytest.raises(ServiceUnavailable, match="ledger setup failed"):  # a malformed one waits as well
            await s.handle("T1", 2, "{", False)
        pg._psql(f"ALTER DATABASE {db} OWNER TO {role}")  # (schema public's owner is the database's: CREATE granted)
        assert json.loads(await s.handle("T1", 1, '{"op":"open","account":"a"}', True)) == {"ok": True, "balance": 0}
    finally:
        await s.close()


async def test_a_right_revoked_after_setup_holds_the_message_and_the_service_fails_until_granted(pg: pgsupport.PgServer) -> None:
    """INSERT on ledger_entries revoked from the service's role once its tables exist: a transfer
    was answered with an error reply and discarded, the service shown ok. It waits (no reply), the
    service fails with the fix named; granted again, it is applied once and answered."""
    import asyncpg

    from hsb.host.delivery import Delivery

    dsn = fresh(pg)
    db = dsn.split("@/", 1)[1].split("?")[0]
    role = f"g{os.getpid()}"
    pg._psql(f"CREATE ROLE {role} LOGIN")
    pg._psql(f"ALTER DATABASE {db} OWNER TO {role}")  # (it may create its tables)
    s = LedgerService("host-a", dsn=dsn.replace("postgres@", f"{role}@"))
    sent: list[dict[str, Any]] = []
    d = Delivery(s, lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[func-returns-value]
    admin = await asyncpg.connect(dsn)
    try:
        for mid, req in enumerate(
            ({"op": "open", "account": "a"}, {"op": "open", "account": "b"}, {"op": "deposit", "account": "a", "amount": 100}), 1
        ):
            d.deliver("T1", mid, json.dumps(req), False)
        await until(lambda: len(sent) == 3, 10, what="the setup's replies")
        await admin.execute(f"REVOKE INSERT ON ledger_entries FROM {role}")
        d.deliver("T1", 4, json.dumps({"op": "transfer", "from": "a", "to": "b", "amount": 10}), False)
        await until(lambda: d.health.retries >= 3, 10, what="the transfer tried three times")
        assert len(sent) == 3, sent[3:]  # no reply: it waits
        assert d.health.state == "failing" and "permission denied" in (d.health.error or "") and "grant" in (d.health.error or ""), d.health.as_dict()
        await admin.execute(f"GRANT INSERT ON ledger_entries TO {role}")
        await until(lambda: len(sent) == 4, 10, what="the transfer's reply")
        assert sent[3]["id"] == 4 and json.loads(sent[3]["data"]) == {"ok": True}, sent[3]
        assert d.health.state == "ok"
        assert await admin.fetchval("SELECT count(*) FROM ledger_entries WHERE msg_id = 4") == 1
        assert dict(await admin.fetch("SELECT account, balance FROM ledger_accounts")) == {"a": 90, "b": 10}
    finally:
        d.cancel()
        await admin.close()
        await s.close()


def test_a_driver_in_a_state_it_did_not_expect_is_the_database_not_the_request() -> None:
    """asyncpg's InternalClientError ("cannot switch to state 15; another operation (2) is in
    progress"), seen while the server restarted: the message is tried again, not answered with
    an error (the database-outage test below once got such an error reply for a message whose
    effect an earlier attempt had committed)."""
    import asyncpg

    from hsb.service.db import classify_pg

    kind = classify_pg(asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"))
    assert isinstance(kind, ServiceUnavailable)
    assert classify_pg(ValueError("a bug")) is None  # the application's own: still its error reply
    # the driver's own DataError (an InterfaceError too): a value it cannot encode, nothing sent: a bug
    assert classify_pg(asyncpg.exceptions._base.DataError("invalid input for query argument $1: 'x' (an integer is required)")) is None
    assert isinstance(classify_pg(asyncpg.InterfaceError("cannot perform operation: connection is closed")), ServiceUnavailable)
    # damaged data or index at the server: held, as SQLite's CORRUPT, not an error reply
    assert isinstance(classify_pg(asyncpg.exceptions.DataCorruptedError("could not read block")), ServiceUnavailable)
    assert isinstance(classify_pg(asyncpg.exceptions.IndexCorruptedError("index is corrupted")), ServiceUnavailable)


@needs_pg
async def test_a_failure_after_the_commit_is_tried_again_not_answered_as_an_error(pg: pgsupport.PgServer, monkeypatch: Any) -> None:
    """An error the driver raises once the transaction's body is done (at the COMMIT, or handing
    the connection back) leaves it unknown whether the effect committed: the message must be
    tried again, and the second try finds the first one's record."""
    import asyncpg
    import asyncpg.pool

    db = open_database(fresh(pg))
    try:
        once = ExactlyOnce(db)
        await once.setup()
        await db.setup(["CREATE TABLE IF NOT EXISTS t_counter (k TEXT PRIMARY KEY, n BIGINT NOT NULL)"])
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t_counter (k, n) VALUES ('x', 0)")

        async def bump(tx: Any) -> str:
            n = await tx.fetchval("UPDATE t_counter SET n = n + 1 WHERE k = 'x' RETURNING n")
            return f"n={n}"

        real = asyncpg.pool.Pool.release
        failed: list[bool] = []

        async def release(self: Any, conn: Any, *a: Any, **k: Any) -> None:
            await real(self, conn, *a, **k)
            if not failed:  # committed, and then something unforeseen fails
                failed.append(True)
                raise RuntimeError("the driver lost track of its connection")

        monkeypatch.setattr(asyncpg.pool.Pool, "release", release)
        with pytest.raises(ServiceUnavailable, match="ending the transaction"):
            await once.run("T1", 1, False, bump)
        assert failed
        assert await once.run("T1", 1, False, bump) == "n=1"  # as the host tries it again: the first one's reply
        async with db.transaction() as tx:
            assert await tx.fetchval("SELECT n FROM t_counter WHERE k = 'x'") == 1  # applied once
        with pytest.raises(ValueError, match="a bug"):  # the body's own error stays the application's
            async with db.transaction() as tx:
                await tx.execute("UPDATE t_counter SET n = n + 1 WHERE k = 'x'")
                raise ValueError("a bug")
        async with db.transaction() as tx:
            assert await tx.fetchval("SELECT n FROM t_counter WHERE k = 'x'") == 1  # rolled back
        # what the server answers the COMMIT with is a known outcome (rolled back): the error
        # reply, not a retry for ever
        await db.setup(["CREATE TABLE IF NOT EXISTS t_deferred (k INT, CONSTRAINT t_deferred_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"])
        with pytest.raises(asyncpg.UniqueViolationError):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t_deferred VALUES (1), (1)")  # checked at the COMMIT
    finally:
        await db.close()


async def _gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until process `pid` has died (a SIGKILL takes a moment)."""
    deadline = time.monotonic() + timeout
    while sandbox._alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} did not die"
        await asyncio.sleep(0.02)


async def nothing(tx: Any) -> str:
    """An effect that changes nothing (the record is what these tests look at)."""
    return "done"


async def _prunes_by_age(db: Any) -> None:
    """Records older than `keep` are pruned by the host that handles messages; newer ones stay,
    and so do each terminal's newest `keep_last` however old (T2 went away with a message the
    CP still holds: it is re-delivered when T2 is back, days later perhaps)."""
    once = ExactlyOnce(db, keep=3600.0, prune_every=0.0, keep_last=2)
    await once.setup()

    for mid in (1, 2, 3):
        await once.run("T1", mid, False, nothing)
    await once.run("T2", 1, False, nothing)
    first = once.pruning
    assert first is not None  # every message applied starts one (prune_every 0) unless one runs
    await asyncio.wait_for(first, 10)
    async with db.transaction() as tx:  # T1's first two and T2's one from two hours ago
        await tx.execute("UPDATE hsb_idempotency SET at = at - 7200 WHERE msg_id <= 2")
    await once.run("T1", 4, False, nothing)  # the next message applied starts a prune
    assert once.pruning is not first
    await asyncio.wait_for(once.pruning, 10)
    async with db.transaction() as tx:
        assert await tx.fetch("SELECT terminal, msg_id FROM hsb_idempotency ORDER BY terminal, msg_id") == [("T1", 3), ("T1", 4), ("T2", 1)]
    assert once.counters["pruned"] == 2
    assert await once.run("T2", 1, True, nothing) == "done" and once.counters["replayed"] == 1  # its record answered


async def test_old_records_are_pruned_on_sqlite(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "prune.sqlite"))
    try:
        await _prunes_by_age(db)
    finally:
        await db.close()


async def test_a_prune_keeps_the_cps_held_bound_when_keep_last_is_below_it(tmp_path: Path) -> None:
    """keep_last set below the CP's held_bound (said as an error at registration): until it is
    fixed, prunes keep each terminal's newest held_bound records, not keep_last: a message the
    CP still holds must find its record."""
    db = SqliteDatabase(str(tmp_path / "held.sqlite"))
    try:
        once = ExactlyOnce(db, keep=3600.0, prune_every=3600.0, keep_last=1)
        await once.setup()
        for mid in range(1, 6):
            await once.run("T1", mid, False, nothing)
        assert not once.check_keep_last(3)  # the CP holds up to 3 of a terminal's messages
        async with db.transaction() as tx:
            await tx.execute("UPDATE hsb_idempotency SET at = at - 7200")  # all of them due
        await once._prune()
        async with db.transaction() as tx:
            assert [r[0] for r in await tx.fetch("SELECT msg_id FROM hsb_idempotency ORDER BY msg_id")] == [3, 4, 5]
    finally:
        await db.close()


class _CountingDeletes:
    """A database whose transactions note what each DELETE removed."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.deleted: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def _counting(self, tx: Any) -> Any:
        outer = self

        class Tx:
            def __getattr__(self, name: str) -> Any:
                return getattr(tx, name)

            async def execute(self, sql: str, *args: Any) -> int:
                n: int = await tx.execute(sql, *args)
                if sql.startswith("DELETE"):
                    outer.deleted.append(n)
                return n

        return Tx()

    @contextlib.asynccontextmanager
    async def transaction(self) -> Any:
        async with self.db.transaction() as tx:
            yield self._counting(tx)

    async def run(self, body: Any) -> Any:
        return await self.db.run(lambda tx: body(self._counting(tx)))


async def _prunes_in_batches(db: Any) -> None:
    """Many records due: pruned `prune_batch` rows per transaction, every one of them, none newer."""
    counting = _CountingDeletes(db)
    once = ExactlyOnce(counting, keep=3600.0, prune_every=3600.0, prune_batch=2, keep_last=1)
    await once.setup()
    for mid in range(1, 8):
        await once.run("T1", mid, False, nothing)
    assert once.pruning is not None
    await asyncio.wait_for(once.pruning, 10)
    async with db.transaction() as tx:
        assert await tx.execute("UPDATE hsb_idempotency SET at = at - 7200 WHERE msg_id <= 5") == 5
    counting.deleted.clear()
    await asyncio.wait_for(once._prune(), 10)
    assert counting.deleted == [2, 2, 1] and once.counters["pruned"] == 5
    async with db.transaction() as tx:
        assert await tx.fetch("SELECT msg_id FROM hsb_idempotency ORDER BY msg_id") == [(6,), (7,)]


async def test_old_records_are_pruned_in_batches_on_sqlite(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "prune.sqlite"))
    try:
        await _prunes_in_batches(db)
    finally:
        await db.close()


@needs_pg
async def test_old_records_are_pruned_in_batches_on_postgresql(pg: pgsupport.PgServer) -> None:
    db = open_database(fresh(pg))
    try:
        await _prunes_in_batches(db)
    finally:
        await db.close()


@needs_pg
async def test_old_records_are_pruned_on_postgresql(pg: pgsupport.PgServer) -> None:
    db = open_database(fresh(pg))
    try:
        await _prunes_by_age(db)
    finally:
        await db.close()


@needs_pg
async def test_two_hosts_pruning_at_once_count_each_record_once(pg: pgsupport.PgServer) -> None:
    """Both hosts' prunes at once, each in its own snapshot: the records removed are counted by
    the DELETE that removed them, so the two counts add up to what was pruned (a count read
    before the DELETE counted them twice)."""
    dsn = fresh(pg)
    a_db, b_db, lock_db, watch_db = (open_database(dsn, tx_idle_timeout=30.0) for _ in range(4))
    try:
        a, b = (ExactlyOnce(x, keep=3600.0, prune_every=3600.0, keep_last=1) for x in (a_db, b_db))
        await a.setup()
        await b.setup()  # b's pool connected too

        for mid in range(1, 11):
            await a.run("T1", mid, False, nothing)
        assert a.pruning is not None
        await asyncio.wait_for(a.pruning, 10)
        async with a_db.transaction() as tx:
            assert await tx.execute("UPDATE hsb_idempotency SET at = at - 7200 WHERE msg_id <= 6") == 6
        # the old rows locked, so that both prunes have begun (and read) before either deletes
        async with lock_db.transaction() as hold:
            await hold.execute("SELECT 1 FROM hsb_idempotency WHERE msg_id <= 6 FOR UPDATE")
            both = asyncio.gather(a._prune(), b._prune())
            deadline = time.monotonic() + 10
            while True:
                async with watch_db.transaction() as tx:
                    waiting = await tx.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                if waiting >= 2:
                    break
                assert time.monotonic() < deadline, "the two prunes never both waited for the lock"
                await asyncio.sleep(0.01)
        await asyncio.wait_for(both, 10)
        assert a.counters["pruned"] + b.counters["pruned"] == 6, (a.counters, b.counters)
        async with a_db.transaction() as tx:
            assert await tx.fetchval("SELECT count(*) FROM hsb_idempotency") == 4
    finally:
        for db in (a_db, b_db, lock_db, watch_db):
            await db.close()


@needs_pg
async def test_opposite_transfers_at_once_neither_deadlock_nor_lose_money(pg: pgsupport.PgServer) -> None:
    s = LedgerService("host-a", dsn=fresh(pg), pool_size=20)
    try:
        for i, req in enumerate(
            (
                {"op": "open", "account": "a"},
                {"op": "open", "account": "b"},
                {"op": "deposit", "account": "a", "amount": 1000},
                {"op": "deposit", "account": "b", "amount": 1000},
            )
        ):
            await s.handle("setup", i + 1, json.dumps(req), False)
        reqs = [json.dumps({"op": "transfer", "from": x, "to": y, "amount": 7}) for x, y in [("a", "b"), ("b", "a")] * 100]
        replies = await asyncio.gather(*(s.handle(f"T{i}", 1, r, False) for i, r in enumerate(reqs)))
        assert all(json.loads(r) == {"ok": True} for r in replies)
        a = json.loads(await s.handle("setup", 10, '{"op":"balance","account":"a"}', False))["balance"]
        b = json.loads(await s.handle("setup", 11, '{"op":"balance","account":"b"}', False))["balance"]
        assert a == b == 1000
    finally:
        await s.close()


@needs_pg
async def test_a_database_that_went_away_is_unavailable_then_back(pg: pgsupport.PgServer) -> None:
    s = LedgerService("host-a", dsn=fresh(pg))
    try:
        assert json.loads(await s.handle("T1", 1, '{"op":"open","account":"a"}', False))["ok"]
        pg.stop()
        try:
            with pytest.raises(ServiceUnavailable, match="database"):
                await s.handle("T1", 2, '{"op":"deposit","account":"a","amount":5}', False)
        finally:
            pg.start()
        assert json.loads(await s.handle("T1", 2, '{"op":"deposit","account":"a","amount":5}', False)) == {"ok": True, "balance": 5}
    finally:
        await s.close()


# --------------------------------------------------------------------------- end to end


async def ledger_load(
    info: dict[str, Any],
    action: Any,
    *,
    terminals: int = 200,
    rate: float = 600,
    books: dict[str, Any],
    expect_disconnects: bool | str = False,
    settle: float = 30.0,
) -> Any:
    """Transfers from `terminals` terminals; `action()` once sending started; the report with its books."""
    task, stop = await background_load(
        info["cp"]["terminal"],
        terminals=terminals,
        rate=rate,
        duration=3600,
        settle=settle,
        workload=LedgerWorkload(accounts=40, initial=1_000),  # (transfers up to 500: some are refused, and checked)
        books=books,
        expect_disconnects=expect_disconnects,
    )
    try:
        await action()
        await asyncio.sleep(1.0)  # transfers after the fault too
    finally:
        stop.set()
    report = await task
    assert report.books is not None and "error" not in report.books, report.books
    assert report.ok, report.failures
    b = report.books
    assert b["total"] == b["expected_total"] > 0 and b["transfers_ok"] > 0 and b["entries"] >= b["transfers_ok"], b
    assert b["transfers_refused"] > 0, b  # the refusals' check had some to check
    return report


async def _kill_active(info: dict[str, Any], sig: int = signal.SIGKILL) -> int:
    a = pid_of(info, "host-a")
    await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == info["terminal_count"], what="all standby sessions")
    await asyncio.sleep(0.7)  # transfers in flight
    os.kill(a, sig)
    await wait_status(info, lambda s: "host-b" in active_names(s), what="host-b active")
    return a


@needs_pg
async def test_sigkill_of_the_active_under_transfers_postgresql(sb: Any, pg: pgsupport.PgServer) -> None:
    dsn = fresh(pg)
    info = await sb(terminals=200, service="ledger", dsn=dsn)
    info["terminal_count"] = 200
    await ledger_load(info, lambda: _kill_active(info), books={"dsn": dsn})


@needs_pg
async def test_a_reply_lost_with_the_active_is_replayed_not_reapplied_postgresql(sb: Any, pg: pgsupport.PgServer) -> None:
    """host-a dies after committing a transfer and before its reply left (crash point
    host.before_reply): host-b gets the message marked redelivered and answers with the
    stored reply; the transfer is applied once."""
    dsn = fresh(pg)
    info = await sb(
        terminals=200, service="ledger", dsn=dsn, host_env={"host-a": {"HSB_CRASH_POINTS": "host.before_reply", "HSB_CRASH_AFTER": "400"}}
    )
    a = pid_of(info, "host-a")

    async def crash() -> None:
        await wait_status(info, lambda s: not sandbox._alive(a) and "host-b" in active_names(s), timeout=60, what="host-a crashed, host-b active")

    await ledger_load(info, crash, books={"dsn": dsn})
    st = await wait_status(info, lambda s: any(h.get("service") for h in s["hosts"] if h.get("reachable")), what="host-b status")
    b = next(h for h in st["hosts"] if h.get("name") == "host-b")
    assert b["service"]["replayed"] >= 1, b["service"]  # the stored reply answered the redelivery


@needs_pg
async def test_sigstop_of_the_active_under_transfers_postgresql(sb: Any, pg: pgsupport.PgServer) -> None:
    dsn = fresh(pg)
    info = await sb(terminals=200, service="ledger", dsn=dsn)
    info["terminal_count"] = 200
    stopped: list[int] = []

    async def stop() -> None:
        stopped.append(await _kill_active(info, signal.SIGSTOP))
        os.kill(stopped[0], signal.SIGCONT)  # woken after the grant: it finds itself fenced

    try:
        await ledger_load(info, stop, books={"dsn": dsn})
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)


@needs_pg
async def test_sigkill_of_the_cp_under_transfers_postgresql(sb: Any, pg: pgsupport.PgServer) -> None:
    dsn = fresh(pg)
    info = await sb(terminals=200, service="ledger", dsn=dsn)
    d = Path(info["dir"])

    async def kill_cp() -> None:
        await asyncio.sleep(1.0)
        cp_pid = info["cp"]["pid"]
        os.kill(cp_pid, signal.SIGKILL)
        await _gone(cp_pid)
        sandbox.start_cp(d)
        await wait_status(info, lambda s: s["cp"].get("reachable") and s["serving"], what="CP back and serving")

    await ledger_load(info, kill_cp, books={"dsn": dsn}, expect_disconnects="cp")


@needs_pg
async def test_the_database_away_for_a_while_messages_wait_nothing_lost(sb: Any, pg: pgsupport.PgServer) -> None:
    dsn = fresh(pg)
    info = await sb(terminals=50, service="ledger", dsn=dsn)
    seen: dict[str, Any] = {}

    async def outage() -> None:
        await asyncio.sleep(1.0)
        pg.stop()
        try:
            st = await wait_status(
                info,
                lambda s: any((h.get("service") or {}).get("state") == "failing" for h in s["hosts"] if h.get("reachable")),
                timeout=15,
                what="the service shown failing",
            )
            seen["status"] = next(h["service"] for h in st["hosts"] if (h.get("service") or {}).get("state") == "failing")
            _, text = await asyncio.get_running_loop().run_in_executor(None, http_get, http_of(info, "host-a"), "/metrics")
            seen["metric"] = [ln for ln in text.splitlines() if ln.startswith("hsb_service_healthy")]
            t = time.monotonic()
            while time.monotonic() - t < 2.0:  # the outage lasts: messages keep arriving and wait
                await asyncio.sleep(0.1)
        finally:
            pg.start()
        await wait_status(
            info,
            lambda s: all((h.get("service") or {}).get("state", "ok") == "ok" for h in s["hosts"] if h.get("reachable")),
            timeout=30,
            what="the service answering again",
        )

    await ledger_load(info, outage, terminals=50, rate=200, books={"dsn": dsn}, settle=40)
    assert "database" in seen["status"]["error"] and seen["status"]["waiting_terminals"] >= 1, seen
    assert seen["metric"] == ["hsb_service_healthy 0.0"], seen


async def test_sqlite_sandbox_sigkill_active_and_cp(sb: Any) -> None:
    """The embedded default on one machine: both hosts on one SQLite file in the sandbox."""
    info = await sb(terminals=200, service="ledger")
    info["terminal_count"] = 200
    d = Path(info["dir"])
    assert info["ledger"] == {"sqlite": str(d / "ledger.sqlite")}

    async def both() -> None:
        await _kill_active(info)
        await asyncio.sleep(0.5)
        cp_pid = info["cp"]["pid"]
        os.kill(cp_pid, signal.SIGKILL)
        await _gone(cp_pid)
        sandbox.start_cp(d)
        await wait_status(info, lambda s: s["cp"].get("reachable") and s["serving"], what="CP back and serving")

    await ledger_load(info, both, books={"sqlite": str(d / "ledger.sqlite")}, rate=400, expect_disconnects=True)


async def test_sqlite_sandbox_sigstop_active(sb: Any) -> None:
    info = await sb(terminals=200, service="ledger")
    info["terminal_count"] = 200
    stopped: list[int] = []

    async def stop() -> None:
        stopped.append(await _kill_active(info, signal.SIGSTOP))
        os.kill(stopped[0], signal.SIGCONT)

    try:
        await ledger_load(info, stop, books={"sqlite": str(Path(info["dir"]) / "ledger.sqlite")}, rate=400)
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)


def test_every_exactly_once_helper_learns_the_cps_held_bound(tmp_path: Path) -> None:
    """A user's own service that never forwards `cp_bounds`: hsbd tells every ExactlyOnce of its
    process the CP's held_bound at registration all the same, so a prune keeps that many."""
    from hsb.service import once as once_mod

    db = SqliteDatabase(str(tmp_path / "u.sqlite"))
    mine = ExactlyOnce(db, keep_last=4)
    once_mod.tell_cp_bounds(1000)
    assert mine.held_bound == 1000


async def test_a_record_lookup_that_collides_after_an_effects_error_is_tried_again(tmp_path: Path) -> None:
    """The lookup made when an effect fails may itself collide (RetryTransaction): the message is
    tried again, not answered with that internal error."""
    from hsb.service.db import RetryTransaction

    db = SqliteDatabase(str(tmp_path / "r.sqlite"))
    try:
        once = ExactlyOnce(db)
        await once.setup()
        calls = 0

        async def flaky(tx: Any) -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("first try fails")
            return "done"

        real = once.stored
        looked = 0

        async def stored(*a: Any, **k: Any) -> str | None:
            nonlocal looked
            looked += 1
            if looked == 1:
                raise RetryTransaction("lookup collided")
            return await real(*a, **k)

        once.stored = stored  # type: ignore[method-assign]
        assert await once.run("T1", 1, False, flaky) == "done"
        assert calls == 2 and once.counters["collisions"] == 1
    finally:
        await db.close()


def test_an_unknown_op_is_refused_in_a_short_message() -> None:
    """The op is echoed back cut short: a huge one must not make the refusal too large to send."""
    with pytest.raises(BadRequest) as exc:
        parse(json.dumps({"op": "é" * 200_000}))
    assert len(str(exc.value)) < 200 and "unknown op" in str(exc.value)


def test_keep_last_below_the_cps_held_bound_is_said(tmp_path: Path) -> None:
    """A record pruned while the CP still holds its message would let a redelivery apply it
    again: keep_last must cover the CP's held_bound, which the host learns at registration."""
    db = SqliteDatabase(str(tmp_path / "k.sqlite"))
    assert ExactlyOnce(db, keep_last=256).check_keep_last(256)
    assert ExactlyOnce(db, keep_last=8, record=False).check_keep_last(256)  # no records: nothing to prune
    once = ExactlyOnce(db, keep_last=8)
    assert not once.check_keep_last(256)
    assert once.held_bound == 256  # what a prune keeps meanwhile (see _prunes_keep_the_held_bound)
    once.check_keep_last(16)  # a lower bound said later (a reload): the larger stays
    assert once.held_bound == 256


async def test_a_host_says_when_its_ledger_keeps_fewer_records_than_the_cp_holds(sb: Any) -> None:
    """Real processes: the CP's held_bound (256) reaches the host at its registration; a ledger
    with keep_last 8 says so in the host's log (both hosts: each registers)."""
    info = await sb(terminals=2, service="ledger", service_options={"keep_last": 8})
    d = Path(info["dir"])

    def said() -> list[dict[str, Any]]:
        return [e for e in log_events(d / "host-a.log") if e.get("event") == "idempotency_keep_last_below_held_bound"]

    wait_for(lambda: said(), 10, what="the host's error")
    e = said()[0]
    assert e["keep_last"] == 8 and e["held_bound"] == 256 and "keep_last to at least 256" in e["msg"], e


async def test_a_held_bound_raised_by_a_reload_reaches_the_hosts_ledgers(sb: Any) -> None:
    """Real processes: keep_last 300 covers the CP's 256; a SIGHUP of the CP raising held_bound
    to 512 reaches both hosts in a heartbeat's answer (not only at their next registration),
    and each one's ledger says that its records no longer cover it."""
    info = await sb(terminals=2, service="ledger", service_options={"keep_last": 300})
    d = Path(info["dir"])
    st = sandbox.load_state(d)

    def said(host: str) -> list[dict[str, Any]]:
        return [e for e in log_events(d / f"{host}.log") if e.get("event") == "idempotency_keep_last_below_held_bound"]

    cp_toml = d / "cp.toml"
    assert "held_bound = 256" in cp_toml.read_text()
    assert not said("host-a") and not said("host-b")
    cp_toml.write_text(cp_toml.read_text().replace("held_bound = 256", "held_bound = 512"))
    os.kill(st["cp"]["pid"], signal.SIGHUP)
    for host in ("host-a", "host-b"):
        wait_for(lambda host=host: said(host), 10, what=f"{host}'s ledger told of the new bound")  # type: ignore[misc]
        e = said(host)[0]
        assert e["keep_last"] == 300 and e["held_bound"] == 512, e
    await asyncio.sleep(0.5)  # an observation window: a heartbeat's answer telling it again would show in it
    assert len(said("host-a")) == 1 and len(said("host-b")) == 1  # told once, not at every heartbeat


@needs_pg
async def test_a_pool_with_every_connection_in_use_says_busy_not_unreachable(pg: pgsupport.PgServer) -> None:
    """Waiting past the timeout for a free connection while the database answers: the service
    waits (ServiceUnavailable, retried) and says the database is busy, not unreachable."""
    from hsb.service.db import PostgresDatabase

    db = PostgresDatabase(fresh(pg), pool_size=1, connect_timeout=0.3, tx_idle_timeout=30.0)
    held, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with db.transaction() as tx:
            await tx.fetchval("SELECT 1")
            held.set()
            await release.wait()

    task = asyncio.ensure_future(hold())
    try:
        await asyncio.wait_for(held.wait(), 10)
        with pytest.raises(ServiceUnavailable, match="database busy: all 1 pool connections in use"):
            async with db.transaction() as tx:
                await tx.fetchval("SELECT 1")
    finally:
        release.set()
        await task
        await db.close()


async def test_commits_are_durable_on_a_server_set_to_synchronous_commit_off(pg: pgsupport.PgServer) -> None:
    """A reply goes only after a durable commit: a database whose synchronous_commit is off
    (a crash of the server would lose commits already answered) gets it on for the service's
    connections, on every transaction (the pool's RESET ALL at each release brings the
    database's default back)."""
    import asyncpg

    from hsb.service.db import PostgresDatabase

    dsn = fresh(pg)
    admin = await asyncpg.connect(dsn)
    try:
        name = await admin.fetchval("SELECT current_database()")
        await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    finally:
        await admin.close()
    db = PostgresDatabase(dsn, pool_size=1)
    try:
        seen = []
        for _ in range(3):  # the same connection each time (pool_size 1), released in between
            async with db.transaction() as tx:
                seen.append(await tx.fetchval("SHOW synchronous_commit"))
        assert seen == ["on", "on", "on"], seen
    finally:
        await db.close()


async def test_commits_stay_durable_when_the_server_turns_synchronous_commit_off_under_a_pool(pg: pgsupport.PgServer) -> None:
    """`ALTER SYSTEM SET synchronous_commit = off` and a reload while the pool holds a connection:
    the reload reached its session (and the RESET ALL at each release), and nothing set it on
    again. Given at connect (a startup parameter), `on` outranks the server's files and is what
    RESET ALL restores."""
    import asyncpg

    from hsb.service.db import PostgresDatabase

    db = PostgresDatabase(fresh(pg), pool_size=1)
    admin = await asyncpg.connect(pg.dsn)
    try:
        async with db.transaction() as tx:  # the pool's one connection, made before the change
            assert await tx.fetchval("SHOW synchronous_commit") == "on"
        await admin.execute("ALTER SYSTEM SET synchronous_commit = off")
        await admin.fetchval("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while await admin.fetchval("SHOW synchronous_commit") != "off":  # (the reload reached the sessions)
            assert time.monotonic() < deadline, "the reload never reached a session"
            await asyncio.sleep(0.02)
        seen = []
        for _ in range(3):  # the same connection, released (RESET ALL) in between
            async with db.transaction() as tx:
                seen.append(await tx.fetchval("SHOW synchronous_commit"))
        assert seen == ["on", "on", "on"], seen
    finally:
        await admin.execute("ALTER SYSTEM RESET synchronous_commit")
        await admin.fetchval("SELECT pg_reload_conf()")
        await admin.close()
        await db.close()


async def test_a_closed_database_makes_no_new_pool(pg: pgsupport.PgServer) -> None:
    """After close() (the host stopping) a late transaction (a prune still running, a handler)
    is unavailable; it does not make a pool whose connections would outlive the stop."""
    from hsb.service.db import PostgresDatabase

    db = PostgresDatabase(fresh(pg))
    async with db.transaction() as tx:
        assert await tx.fetchval("SELECT 1") == 1
    await db.close()
    with pytest.raises(ServiceUnavailable, match="stopping"):
        async with db.transaction() as tx:
            await tx.fetchval("SELECT 1")
    assert db._pool is None
