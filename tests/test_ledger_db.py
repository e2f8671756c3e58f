"""The ledger's database layer (hsb.service.db; docs/ledger.md): SQLite's transactions (one
cancelled in its BEGIN, `run` as one call on its thread, a close that gives up on a hung
statement, a failed ROLLBACK that leaves the body's error) and PostgreSQL's on a real, throwaway server (tests/support/pg.py): the driver's
errors classified, a full pool said busy, commits durable whatever synchronous_commit the server
has, and a closed database that makes no new pool.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from hsb.service.api import ServiceUnavailable
from hsb.service.db import SqliteDatabase
from hsb.worker import Done
from tests.support import pg as pgsupport
from tests.support.pg import fresh, needs_pg
from tests.support.procs import until

pytestmark = pytest.mark.timeout(120)


def hangs_on_disk(on_thread: threading.Event, disk: threading.Event) -> Callable[[Any], Coroutine[Any, Any, int]]:
    """A transaction body that creates table t, sets `on_thread`, then holds the database's
    thread until `disk` is set (at most 30 s): as an fsync that does not return."""

    async def hangs(tx: Any) -> int:
        await tx.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER)")
        on_thread.set()
        disk.wait(30)
        return 1

    return hangs


async def test_sqlite_a_transaction_cancelled_in_its_begin_leaves_nothing_open(tmp_path: Path) -> None:
    """A message's work is cancelled when the active loses its CP link; if that lands while the
    BEGIN runs on the database's thread (waiting for the write lock), the transaction must not
    stay open: every later one failed ("cannot start a transaction within a transaction") and the
    database's write lock stayed held, the other host and the books locked out."""
    import sqlite3

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

    db = SqliteDatabase(str(tmp_path / "run.sqlite"))
    try:
        await db.setup(["CREATE TABLE t (k TEXT PRIMARY KEY)"])
        calls: list[int] = []
        real_call = db._exec.call

        def call(fn: Callable[[], Any], done: Done) -> None:
            calls.append(1)
            real_call(fn, done)

        db._exec.call = call  # type: ignore[method-assign]  # (the calls counted)
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


@pytest.mark.parametrize("way", ["run", "transaction"])
async def test_sqlite_a_rollback_that_fails_too_leaves_the_bodys_error_and_is_logged(tmp_path: Path, way: str) -> None:
    """A body that raised and whose ROLLBACK then failed (a disk gone bad under both): nothing was
    committed, so what the body raised is what happened (as on PostgreSQL) -- the ROLLBACK's error
    replaced it, and a bug in the body became "database unavailable", its message held and tried
    again for ever. The failed ROLLBACK is logged, and the next transaction still rolls the open
    one back before it begins."""
    import sqlite3

    from structlog.testing import capture_logs

    db = SqliteDatabase(str(tmp_path / "rollback.sqlite"))
    try:
        await db.setup(["CREATE TABLE t (k TEXT PRIMARY KEY)"])
        deny = {"on": True}

        def auth(action: int, arg1: Any, *_: Any) -> int:
            if deny["on"] and action == sqlite3.SQLITE_TRANSACTION and str(arg1).upper() == "ROLLBACK":
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        await db._call(lambda c: c.set_authorizer(auth))

        async def fails(tx: Any) -> None:
            await tx.execute("INSERT INTO t VALUES ('a')")
            raise ValueError("a bug")

        with capture_logs() as logs, pytest.raises(ValueError, match="a bug"):
            if way == "run":
                await db.run(fails)
            else:
                async with db.transaction() as tx:
                    await fails(tx)
        assert [e["error"] for e in logs if e["event"] == "sqlite_rollback_failed"] == ["not authorized"], logs
        deny["on"] = False

        async def keys(tx: Any) -> list[tuple[Any, ...]]:
            return await tx.fetch("SELECT k FROM t ORDER BY k")  # type: ignore[no-any-return]

        assert await db.run(keys) == []  # the open transaction rolled back by the next BEGIN
    finally:
        await db.close()


async def test_sqlite_close_gives_up_on_a_statement_that_does_not_return(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung disk: the statement on the database's thread does not return (fsync blocks;
    busy_timeout bounds only lock waits). close() queued its close behind it with no bound, so
    hsbd's stop hung (PostgreSQL's gives up after 5 s, the journal service's after 2 s). It gives
    up after close_timeout, and says so; the statement is left to end on its thread."""

    from hsb.service import db_sqlite as dbmod
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(dbmod, "log", rec, raising=False)
    db = SqliteDatabase(str(tmp_path / "hung.sqlite"))
    db.close_timeout = 0.3
    disk = threading.Event()
    on_thread = threading.Event()

    hung = asyncio.ensure_future(db.run(hangs_on_disk(on_thread, disk)))
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


def test_a_driver_in_a_state_it_did_not_expect_is_the_database_not_the_request() -> None:
    """asyncpg's InternalClientError ("cannot switch to state 15; another operation (2) is in
    progress"), seen while the server restarted: the message is tried again, not answered with
    an error (the database-outage test in test_ledger_e2e once got such an error reply for a message whose
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
