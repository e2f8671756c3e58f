"""The ledger service's requests and operations (SPEC §5.6; docs/ledger.md), in process: the
request parser and its refusals, each operation's reply on SQLite and on a real, throwaway
PostgreSQL server (tests/support/pg.py), the entries' order the books replay, the books check's
read of this run's records, a role short of rights holding messages, opposite transfers at
once, and a database that went away.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from hsb.service.api import ServiceUnavailable
from hsb.service.db import open_database
from hsb.service.ledger import BadRequest, LedgerService, parse
from hsb.term.workload import LedgerWorkload
from tests.support import pg as pgsupport
from tests.support.pg import fresh, needs_pg
from tests.support.procs import until

pytestmark = pytest.mark.timeout(120)


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
        answer: dict[str, Any] = json.loads(await s.handle("T1", next(ask), data, False))
        return answer

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


def test_an_unknown_op_is_refused_in_a_short_message() -> None:
    """The op is echoed back cut short: a huge one must not make the refusal too large to send."""
    with pytest.raises(BadRequest) as exc:
        parse(json.dumps({"op": "é" * 200_000}))
    assert len(str(exc.value)) < 200 and "unknown op" in str(exc.value)


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
        # 20 at once, one a pool connection: the 180 others would wait for a connection, and on a
        # busy machine the last of them past the pool's 5 s ("database busy", as designed)
        turns = asyncio.Semaphore(20)

        async def transfer(i: int, r: str) -> str:
            async with turns:
                answer: str = await s.handle(f"T{i}", 1, r, False)
                return answer

        replies = await asyncio.gather(*(transfer(i, r) for i, r in enumerate(reqs)))
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
