"""Tests from a mutation audit of hsb/service/db.py (the services' database layer, docs/ledger.md):
each pins a behaviour that a single-point change of the module broke while every other test
still passed. SQLite: the write lock held from a transaction's BEGIN and given back at once when
its message is cancelled (SQLITE_LOCKED said busy: tests/test_db_error_kinds.py), a statement queued when the database closes
held as unavailable, a `run` body that awaits something else closed on the spot. Both: the count
of rows a statement changed (0 for none, the command tag's last word). PostgreSQL: a connection
that cannot say whether it is closed taken as closed, "all pool connections in use" said only
when they are, a pool that does not close terminated.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.service.db import SqliteDatabase
from tests.support import pg as pgsupport
from tests.support.pg import fresh, needs_pg
from tests.support.pgfakes import FakePool
from tests.test_db_error_kinds import assert_another_may_write_at_once
from tests.test_ledger_db import hangs_on_disk

pytestmark = pytest.mark.timeout(60)


async def test_a_sqlite_transaction_holds_the_write_lock_from_its_begin(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE: the other host's transaction cannot start while one of ours is open,
    even before our first write. A deferred BEGIN would take the lock only at the first write,
    and a read-then-write (a withdrawal's balance, then its update; the ledger's `for_update` is
    empty on SQLite) could act on a balance the other host changed meanwhile."""
    path = tmp_path / "lock.sqlite"
    db = SqliteDatabase(str(path))
    try:
        await db.setup(["CREATE TABLE t (k TEXT PRIMARY KEY)"])
        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            async with db.transaction() as tx:
                assert await tx.fetchval("SELECT count(*) FROM t") == 0
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            other.execute("BEGIN IMMEDIATE")  # ours ended: the lock is free
            other.execute("ROLLBACK")
        finally:
            other.close()
    finally:
        await db.close()


async def test_a_sqlite_statement_that_changes_no_rows_counts_none(tmp_path: Path) -> None:
    """`execute` gives the rows a statement changed: 0 for one that changes none (a DDL
    statement, where sqlite3's rowcount is -1), as PostgreSQL's command tag gives, never a
    negative count a caller would add up (a prune's total)."""
    db = SqliteDatabase(str(tmp_path / "n.sqlite"))
    try:
        async with db.transaction() as tx:
            assert await tx.execute("CREATE TABLE t (k TEXT)") == 0
            assert await tx.execute("INSERT INTO t VALUES ($1), ($2)", "a", "b") == 2

        async def body(tx: object) -> int:
            return await tx.execute("CREATE INDEX t_k ON t (k)")  # type: ignore[attr-defined,no-any-return]

        assert await db.run(body) == 0
    finally:
        await db.close()


def test_a_connection_that_cannot_say_whether_it_is_closed_is_not_open() -> None:
    """A pool's proxy whose connection was terminated raises when asked: taken as closed, so a
    driver refusal on it is the connection's (held), not the body's bug (an error reply)."""
    from hsb.service.db import _still_open

    class Gone:
        def is_closed(self) -> bool:
            raise RuntimeError("connection has been released back to the pool")

    class Open:
        def is_closed(self) -> bool:
            return False

    assert _still_open(Gone()) is False
    assert _still_open(Open()) is True


@needs_pg
async def test_a_postgresql_statement_counts_the_rows_it_changed(pg: pgsupport.PgServer) -> None:
    """`execute` gives the rows an INSERT, UPDATE or DELETE changed, read from the command tag's
    last word ("INSERT 0 2": 2, not the 0 in its middle), and 0 for a tag without a count."""
    from hsb.service.db import PostgresDatabase

    db = PostgresDatabase(fresh(pg))
    try:
        async with db.transaction() as tx:
            assert await tx.execute("CREATE TABLE t (k TEXT)") == 0
            assert await tx.execute("INSERT INTO t VALUES ($1), ($2)", "a", "b") == 2
            assert await tx.execute("UPDATE t SET k = k || 'x'") == 2
            assert await tx.execute("DELETE FROM t WHERE k = $1", "ax") == 1
    finally:
        await db.close()


async def test_a_statement_timing_out_with_the_pool_full_is_not_said_to_be_the_pool() -> None:
    """A TimeoutError from the body's own statement, every pool connection in use meanwhile:
    the connection was had, so "all pool connections in use" (raise pool_size) is the wrong
    advice; it is said as the database's (unreachable or slow)."""
    from hsb.service.api import ServiceUnavailable
    from hsb.service.db import PostgresDatabase

    db = PostgresDatabase("postgresql://unused", pool_size=1)
    db._pool = FakePool()
    with pytest.raises(ServiceUnavailable) as exc:
        async with db.transaction():
            raise TimeoutError("the statement timed out")
    assert "pool connections in use" not in str(exc.value), exc.value
    assert "unreachable" in str(exc.value), exc.value


async def test_a_connect_that_times_out_with_a_connection_idle_is_not_said_to_be_a_full_pool() -> None:
    """The wait for a connection timed out while one of the pool's was idle: the pool was not
    full (raising pool_size would not help), the database did not answer: "unreachable"."""
    from hsb.service.api import ServiceUnavailable
    from hsb.service.db import PostgresDatabase

    db = PostgresDatabase("postgresql://unused", pool_size=1)
    db._pool = FakePool(idle=1, acquire_fails=TimeoutError())
    with pytest.raises(ServiceUnavailable) as exc:
        async with db.transaction():
            pass
    assert "pool connections in use" not in str(exc.value) and "unreachable" in str(exc.value), exc.value
    db._pool = FakePool(idle=0, acquire_fails=TimeoutError())  # every one in use: busy, as said
    with pytest.raises(ServiceUnavailable, match="all 1 pool connections in use"):
        async with db.transaction():
            pass


async def test_a_pool_that_does_not_close_is_terminated() -> None:
    """close() at the host's stop: a pool whose close fails (a dead server) is terminated, its
    connections not left open past the stop; and no pool is made after it."""
    from hsb.service.api import ServiceUnavailable
    from hsb.service.db import PostgresDatabase

    seen: list[str] = []

    class Stuck:
        async def close(self) -> None:
            seen.append("close")
            raise OSError("the server is gone")

        def terminate(self) -> None:
            seen.append("terminate")

    db = PostgresDatabase("postgresql://unused")
    db._pool = Stuck()
    await db.close()
    assert seen == ["close", "terminate"] and db._pool is None
    with pytest.raises(ServiceUnavailable, match="stopping"):
        async with db.transaction():
            pass


async def test_a_sqlite_statement_queued_when_the_database_closes_is_unavailable(tmp_path: Path) -> None:
    """hsbd stopping while a statement hangs on the database's thread (a hung disk) and another
    waits behind it: close() gives up on the first and drops the second, which is then
    "database closed" (ServiceUnavailable: its message held), not the worker's RuntimeError
    taken for the application's bug (an error reply)."""
    import threading

    from hsb.service.api import ServiceUnavailable

    db = SqliteDatabase(str(tmp_path / "hung.sqlite"))
    db.close_timeout = 0.2
    disk, on_thread = threading.Event(), threading.Event()

    hung = asyncio.ensure_future(db.run(hangs_on_disk(on_thread, disk)))
    try:
        deadline = time.monotonic() + 5
        while not on_thread.is_set():
            assert time.monotonic() < deadline, "the statement never ran"
            await asyncio.sleep(0.005)
        queued = asyncio.ensure_future(db._call(lambda c: c.execute("SELECT 1").fetchone()))
        await asyncio.sleep(0)  # (its first step: queued on the worker, behind the hung one)
        await asyncio.wait_for(db.close(), 10)
        with pytest.raises(ServiceUnavailable, match="database closed"):
            await asyncio.wait_for(queued, 10)
    finally:
        disk.set()
    assert await asyncio.wait_for(hung, 10) == 1


async def test_a_sqlite_transaction_cancelled_in_its_body_gives_the_write_lock_back_at_once(tmp_path: Path) -> None:
    """A message's work cancelled (the CP link lost) in the middle of its transaction: rolled
    back on the spot, so the other host (another connection to the file) may write at once, not
    only after this host's next transaction."""
    path = tmp_path / "x.sqlite"
    db = SqliteDatabase(str(path))
    inside, never = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES ('mine')")
            inside.set()
            await never.wait()

    try:
        await db.setup(["CREATE TABLE t (k TEXT PRIMARY KEY)"])
        task = asyncio.ensure_future(work())
        await asyncio.wait_for(inside.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_another_may_write_at_once(path)
    finally:
        await db.close()


async def test_a_sqlite_run_body_that_awaits_something_else_is_closed_there_and_then(tmp_path: Path) -> None:
    """`run`'s body may await only its transaction's statements: one that awaits anything else
    is refused (RuntimeError) and closed on the spot, so its `finally` runs inside the
    transaction, before the ROLLBACK, not later whenever the garbage collector gets to it (on
    whatever thread, outside any transaction)."""
    db = SqliteDatabase(str(tmp_path / "x.sqlite"))
    finished: list[bool] = []

    async def body(tx: Any) -> None:
        try:
            await asyncio.sleep(0)  # (not one of its transaction's statements)
        finally:
            finished.append(True)

    try:
        with pytest.raises(RuntimeError, match="may await only its transaction's") as exc:
            await db.run(body)
        assert finished == [True], "the body was left suspended"
        del exc
    finally:
        await db.close()
