"""Exactly-once effects (`ExactlyOnce`, SPEC §8; docs/ledger.md) on SQLite and on a real,
throwaway PostgreSQL server (tests/support/pg.py): one effect per message however often it is
delivered, the stored reply replayed, another request under a used id refused, an old record
table upgraded, and the failures around a commit (a redelivery racing the first run, an error
after the commit, a lookup that collides) tried again rather than answered as errors.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.service.api import ServiceUnavailable
from hsb.service.db import SqliteDatabase, open_database
from hsb.service.once import ExactlyOnce, RequestMismatch
from tests.support import pg as pgsupport
from tests.support.pg import fresh, needs_pg, run_on

pytestmark = pytest.mark.timeout(120)


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


async def test_exactly_once_on_sqlite(tmp_path: Path) -> None:
    await run_on(SqliteDatabase(str(tmp_path / "once.sqlite")), _exactly_once)


@needs_pg
async def test_exactly_once_on_postgresql(pg: pgsupport.PgServer) -> None:
    await run_on(open_database(fresh(pg)), _exactly_once)


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
    await run_on(SqliteDatabase(str(tmp_path / "old.sqlite")), _an_old_table_is_upgraded)


@needs_pg
async def test_an_old_idempotency_table_is_upgraded_on_postgresql(pg: pgsupport.PgServer) -> None:
    await run_on(open_database(fresh(pg)), _an_old_table_is_upgraded)


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
