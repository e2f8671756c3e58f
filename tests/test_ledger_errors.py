"""How the ledger and its database layer sort what goes wrong (hsb.service.db, hsb.service.once,
hsb.service.ledger), on the embedded SQLite: a database locked past busy_timeout is unavailable
at once (not twenty waits in a row while status says ok); a statement's own error is the
application's (an error reply), not "unavailable" for ever; a prune that fails is said and tried
again; a redelivered request this code cannot read is answered with the reply stored for it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.service.api import ServiceUnavailable
from hsb.service.db import SqliteDatabase
from hsb.service.ledger import LedgerService
from hsb.service.once import ExactlyOnce

pytestmark = pytest.mark.timeout(60)


async def test_a_database_locked_past_busy_timeout_is_unavailable_at_once(tmp_path: Path) -> None:
    path = tmp_path / "books.sqlite"
    svc = LedgerService("host-a", sqlite=str(path), busy_timeout=0.2)
    try:
        assert '"ok":true' in await svc.handle("T1", 1, '{"op":"open","account":"alice"}', False)
        other = sqlite3.connect(path, isolation_level=None)  # the other host, stopped inside a transaction
        other.execute("BEGIN IMMEDIATE")
        try:
            t0 = time.monotonic()
            with pytest.raises(ServiceUnavailable, match="database busy"):
                await svc.handle("T1", 2, '{"op":"deposit","account":"alice","amount":5}', False)
            assert time.monotonic() - t0 < 2.0, "waited busy_timeout again and again"
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert '"balance":5' in await svc.handle("T1", 2, '{"op":"deposit","account":"alice","amount":5}', True)
    finally:
        await svc.close()


async def test_a_statements_own_error_is_the_applications_not_unavailable(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "x.sqlite"))
    once = ExactlyOnce(db)
    try:
        await once.setup()

        async def bad(tx: Any) -> str:
            await tx.fetchval("SELECT no_such_function(1)")
            return "never"

        with pytest.raises(sqlite3.OperationalError, match="no such function"):
            await once.run("T1", 1, False, bad)
    finally:
        await db.close()


async def test_a_prune_that_fails_is_said_and_tried_again_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = SqliteDatabase(str(tmp_path / "x.sqlite"))
    once = ExactlyOnce(db, prune_every=0.0)
    try:
        await once.setup()
        once._due_sql = "SELECT terminal, msg_id FROM no_such_table WHERE 1 = $1 AND 2 = $2"  # a bug, a missing privilege
        from hsb.service import once as once_mod
        from tests.support.logrec import RecordingLog

        logs = RecordingLog()
        monkeypatch.setattr(once_mod, "log", logs)
        await asyncio.wait_for(once._prune(), 10)
        assert logs.events("idempotency_prune_failed"), logs.entries
        assert once.next_prune > time.monotonic()
    finally:
        await db.close()


async def test_a_redelivered_request_this_code_cannot_read_gets_the_stored_reply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Applied by a host whose code read it, then redelivered (after a failover) to a host whose
    code refuses it (an upgrade between: here a parser that refuses deposits): the first answer
    stands, nothing is applied again. The same request's bytes both times (its stored hash matches)."""
    from hsb.service import ledger

    svc = LedgerService("host-a", sqlite=str(tmp_path / "books.sqlite"))
    try:
        assert '"ok":true' in await svc.handle("T1", 1, '{"op":"open","account":"alice"}', False)
        deposit = '{"op":"deposit","account":"alice","amount":7}'
        first = await svc.handle("T1", 2, deposit, False)
        assert '"balance":7' in first
        read = ledger.parse

        def stricter(data: Any) -> ledger.Request:
            r = read(data)
            if r.op == "deposit":
                raise ledger.BadRequest("deposits are refused by this version")
            return r

        monkeypatch.setattr(ledger, "parse", stricter)
        assert await svc.handle("T1", 2, deposit, True) == first
        assert '"bad_request"' in await svc.handle("T1", 3, deposit, False)  # not redelivered: refused
        assert '"bad_request"' in await svc.handle("T1", 4, deposit, True)  # redelivered, nothing stored
        # another request under a recorded id (ids used again): not that one's reply
        assert '"bad_request"' in await svc.handle("T1", 2, '{"op":"deposit","account":"alice","amount":8}', True)
        # a refusal is recorded as the answer: the same message redelivered to a host whose code
        # reads it (a rollback of the upgrade) gets the refusal again, and is not applied
        refusal = await svc.handle("T1", 3, deposit, True)
        monkeypatch.setattr(ledger, "parse", read)
        assert await svc.handle("T1", 3, deposit, True) == refusal
        assert '"bad_request"' in await svc.handle("T1", 4, deposit, False)  # unmarked: meets the record all the same
        assert '"balance":7' in await svc.handle("T1", 5, '{"op":"balance","account":"alice"}', False)
    finally:
        await svc.close()


async def test_a_prune_meets_a_quiet_terminals_kept_records_once(tmp_path: Path) -> None:
    """Quiet terminals keep their newest `keep_last` records however old; a prune dates the ones
    it kept (they are not met again at every batch and every prune, which made one batch take
    seconds at 1,000 quiet terminals) and deletes the rest that is due, all of it."""
    db = SqliteDatabase(str(tmp_path / "x.sqlite"))
    once = ExactlyOnce(db, keep=3600.0, prune_every=3600.0, prune_batch=50, keep_last=3)

    async def nothing(tx: Any) -> str:
        return "done"

    try:
        await once.setup()
        for t in range(40):  # quiet terminals: 5 records each, the newest 3 kept
            for mid in range(1, 6):
                await once.run(f"Q{t}", mid, False, nothing)
        for mid in range(1, 201):  # a busy one
            await once.run("B", mid, False, nothing)
        if once.pruning is not None:
            await asyncio.wait_for(once.pruning, 10)
        async with db.transaction() as tx:
            await tx.execute("UPDATE hsb_idempotency SET at = at - 7200")  # all of it due
        await asyncio.wait_for(once._prune(), 30)
        async with db.transaction() as tx:
            due = await tx.fetchval("SELECT count(*) FROM hsb_idempotency WHERE at < ((julianday('now') - 2440587.5) * 86400.0) - 3600")
            per = dict(await tx.fetch("SELECT terminal, count(*) FROM hsb_idempotency GROUP BY terminal"))
        assert due == 0, "records left due: the next prune would meet them again"
        assert per == {**{f"Q{t}": 3 for t in range(40)}, "B": 3}, per
        assert once.counters["pruned"] == 40 * 2 + 197
        seen, deleted = await db.run(once._prune_batch)
        assert (seen, deleted) == (0, 0)  # the next prune looks at nothing
    finally:
        await db.close()


async def test_a_file_that_is_not_a_database_is_unavailable_not_an_error_reply(tmp_path: Path) -> None:
    path = tmp_path / "books.sqlite"
    path.write_bytes(b"this is not a database file at all" * 200)
    svc = LedgerService("host-a", sqlite=str(path))
    try:
        with pytest.raises(ServiceUnavailable, match="not a database"):
            await svc.handle("T1", 1, '{"op":"open","account":"alice"}', False)
    finally:
        await svc.close()


async def test_a_prune_transaction_deletes_at_most_a_batch(tmp_path: Path) -> None:
    """However many terminals have records due, one prune transaction deletes at most
    `prune_batch` records (each terminal's DELETE is bounded by its records the batch saw)."""
    db = SqliteDatabase(str(tmp_path / "x.sqlite"))
    once = ExactlyOnce(db, keep=3600.0, prune_every=3600.0, prune_batch=20, keep_last=1)
    per_transaction: list[int] = []

    class Counting:
        def __init__(self, tx: Any) -> None:
            self.tx, self.n = tx, 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self.tx, name)

        async def execute(self, sql: str, *args: Any) -> int:
            n: int = await self.tx.execute(sql, *args)
            if sql.startswith("DELETE"):
                self.n += n
            return n

    async def nothing(tx: Any) -> str:
        return "done"

    try:
        await once.setup()
        for mid in range(1, 12):  # round the terminals: the oldest records are of many terminals
            for t in range(30):
                await once.run(f"T{t}", mid, False, nothing)
        if once.pruning is not None:
            await asyncio.wait_for(once.pruning, 10)
        async with db.transaction() as tx:
            await tx.execute("UPDATE hsb_idempotency SET at = at - 7200")
        real_run = db.run

        async def run(body: Any) -> Any:
            async def counted(tx: Any) -> Any:
                c = Counting(tx)
                out = await body(c)
                per_transaction.append(c.n)
                return out

            return await real_run(counted)

        db.run = run  # type: ignore[method-assign]
        await asyncio.wait_for(once._prune(), 30)
        assert per_transaction and max(per_transaction) <= 20, per_transaction
        assert sum(per_transaction) == 30 * 10 == once.counters["pruned"]
    finally:
        await db.close()


async def test_a_constraint_that_mentions_a_lock_is_the_applications_error(tmp_path: Path) -> None:
    """Sorted by SQLite's result code, not by the words in its message: a trigger that refuses
    with "account is locked" is the application's answer, not a busy database retried for ever."""
    db = SqliteDatabase(str(tmp_path / "x.sqlite"))
    try:
        await db.setup(
            [
                "CREATE TABLE acct (name TEXT PRIMARY KEY, locked INT NOT NULL)",
                "CREATE TRIGGER no_locked BEFORE UPDATE ON acct WHEN OLD.locked = 1 BEGIN SELECT RAISE(ABORT, 'account is locked'); END",
                "INSERT INTO acct VALUES ('a', 1)",
            ]
        )
        with pytest.raises(sqlite3.IntegrityError, match="account is locked"):
            async with db.transaction() as tx:
                await tx.execute("UPDATE acct SET locked = 0 WHERE name = 'a'")
    finally:
        await db.close()
