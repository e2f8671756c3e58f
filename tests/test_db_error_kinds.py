"""hsb.service.db's sorting of what goes wrong, in process: every PostgreSQL state and driver
error the module names gets its kind (retry, unavailable, or the application's error reply),
SQLite's extended result codes count by their primary code (SQLITE_LOCKED as busy), and a SQLite transaction whose
body fails gives the database's write lock back at once (the other host is not locked out)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import structlog

from hsb.service.api import RetryTransaction, ServiceUnavailable
from hsb.service.db import SqliteDatabase
from tests.support.pgfakes import FakePool

pytestmark = pytest.mark.timeout(30)

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg (a dependency of hsb) is not installed")
E = asyncpg.exceptions

KINDS: list[tuple[Any, type[BaseException] | None, bool]] = [
    (E.DeadlockDetectedError("x"), RetryTransaction, False),  # 40P01
    (E.SerializationError("x"), RetryTransaction, False),  # 40001
    (E.QueryCanceledError("x"), ServiceUnavailable, False),  # 57014: our command_timeout
    (E.DataCorruptedError("x"), ServiceUnavailable, False),  # XX001
    (E.IndexCorruptedError("x"), ServiceUnavailable, False),  # XX002
    (E.InvalidAuthorizationSpecificationError("x"), ServiceUnavailable, False),  # 28000
    (E.ConnectionDoesNotExistError("x"), ServiceUnavailable, False),  # class 08
    (E.TooManyConnectionsError("x"), ServiceUnavailable, False),  # class 53
    (E.AdminShutdownError("x"), ServiceUnavailable, False),  # 57P
    (E.PostgresIOError("x"), ServiceUnavailable, False),  # class 58
    (E.UniqueViolationError("x"), None, False),  # the request's: an error reply
    (E.DivisionByZeroError("x"), None, False),
    (E._base.DataError("cannot encode"), None, False),  # the driver's: nothing sent, a bug
    (asyncpg.InterfaceError("the connection is closed"), ServiceUnavailable, False),
    (asyncpg.InterfaceError("cannot perform operation: another operation is in progress"), None, True),
    (ConnectionResetError("reset by peer"), ServiceUnavailable, False),
    (TimeoutError(), ServiceUnavailable, False),
    (ValueError("a bug"), None, False),
]


@pytest.mark.parametrize(("exc", "kind", "conn_open"), KINDS, ids=[f"{type(e).__name__}-{o}" for e, _, o in KINDS])
def test_each_postgresql_error_gets_its_kind(exc: BaseException, kind: type[BaseException] | None, conn_open: bool) -> None:
    from hsb.service.db import classify_pg

    got = classify_pg(exc, conn_open=conn_open)
    if kind is None:
        assert got is None, got
    else:
        assert isinstance(got, kind), got


def assert_another_may_write_at_once(path: Path) -> None:
    """Another connection to the SQLite file (the other host's) takes the write lock at once and
    finds none of the rolled-back row `mine` in table `t`."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")  # SQLITE_BUSY at once if the lock were still held
        other.execute("INSERT INTO t VALUES ('other')")
        other.execute("COMMIT")
        assert other.execute("SELECT k FROM t").fetchall() == [("other",)]
    finally:
        other.close()


@pytest.mark.parametrize(
    ("code", "unavailable"),
    [
        (getattr(sqlite3, "SQLITE_IOERR_WRITE", 778), True),
        (getattr(sqlite3, "SQLITE_IOERR_FSYNC", 1034), True),
        (getattr(sqlite3, "SQLITE_READONLY_DBMOVED", 1032), True),
        (sqlite3.SQLITE_FULL, True),
        (sqlite3.SQLITE_NOTADB, True),
        (getattr(sqlite3, "SQLITE_BUSY_SNAPSHOT", 517), True),
        # SQLITE_LOCKED (a lock inside the same process, or its extended codes) is the lock as
        # SQLITE_BUSY is: the message waits, "database busy", not an error reply
        (sqlite3.SQLITE_LOCKED, "database busy"),
        (getattr(sqlite3, "SQLITE_LOCKED_SHAREDCACHE", 262), "database busy"),
        (getattr(sqlite3, "SQLITE_CONSTRAINT_CHECK", 275), False),
        (sqlite3.SQLITE_ERROR, False),
    ],
)
async def test_sqlite_errors_are_sorted_by_their_primary_result_code(tmp_path: Path, code: int, unavailable: bool | str) -> None:
    """What SQLite raises carries an extended code (IOERR_WRITE, READONLY_DBMOVED, ...): its low
    byte is the kind; a disk failing on write is the database's, not an error reply (`unavailable`:
    ServiceUnavailable, with this text if one is given)."""
    db = SqliteDatabase(str(tmp_path / "x.sqlite"))
    exc = sqlite3.OperationalError("from sqlite")
    exc.sqlite_errorcode = code

    def fails(c: sqlite3.Connection) -> None:
        raise exc

    try:
        if unavailable:
            with pytest.raises(ServiceUnavailable, match=unavailable if isinstance(unavailable, str) else None):
                await db._call(fails)
        else:
            with pytest.raises(sqlite3.OperationalError):
                await db._call(fails)
    finally:
        await db.close()


@pytest.mark.parametrize("way", ["run", "transaction"])
async def test_a_sqlite_body_that_fails_gives_the_write_lock_back_at_once(tmp_path: Path, way: str) -> None:
    """Rolled back on the spot, not at this host's next transaction: the other host (another
    connection to the same file) may write meanwhile, without waiting."""
    path = tmp_path / "x.sqlite"
    db = SqliteDatabase(str(path))
    try:
        await db.setup(["CREATE TABLE t (k TEXT PRIMARY KEY)"])

        async def fails(tx: Any) -> None:
            await tx.execute("INSERT INTO t VALUES ('mine')")
            raise ValueError("a bug")

        with pytest.raises(ValueError, match="a bug"):
            if way == "run":
                await db.run(fails)
            else:
                async with db.transaction() as tx:
                    await fails(tx)
        assert_another_may_write_at_once(path)
    finally:
        await db.close()


async def test_sqlite_commits_are_on_disk_before_the_reply(tmp_path: Path) -> None:
    """WAL with synchronous=FULL: a commit survives a power cut (NORMAL may lose the last ones)."""
    db = SqliteDatabase(str(tmp_path / "x.sqlite"))
    try:
        assert await db._call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
        assert await db._call(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    finally:
        await db.close()


async def test_a_sqlite_file_made_anew_is_logged_with_its_path(tmp_path: Path) -> None:
    """No file at the path: a new, empty ledger is made, and said (a typo in one host's path
    would otherwise give that host a ledger of its own without a word); an existing file is not."""
    path = tmp_path / "sub" / "x.sqlite"
    for made in (True, False):
        db = SqliteDatabase(str(path))
        try:
            with structlog.testing.capture_logs() as logs:
                await db._call(lambda c: c.execute("SELECT 1").fetchone())
        finally:
            await db.close()
        said = [e for e in logs if e["event"] == "sqlite_database_created"]
        assert [e["path"] for e in said] == ([str(path)] if made else [])
        assert path.exists()


async def test_a_sqlite_file_whose_folder_cannot_be_made_is_unavailable(tmp_path: Path) -> None:
    """The folder is made at the first statement; a path through a regular file (a mount not
    there, a wrong path) fails with an OSError: the database is not there, the message waits."""
    (tmp_path / "plain").write_text("not a folder")
    db = SqliteDatabase(str(tmp_path / "plain" / "sub" / "x.sqlite"))
    try:
        with pytest.raises(ServiceUnavailable, match="database unavailable"):
            async with db.transaction() as tx:
                await tx.execute("SELECT 1")
    finally:
        await db.close()


async def test_a_closed_sqlite_database_refuses_statements_as_unavailable(tmp_path: Path) -> None:
    """A message still in hand at the host's stop meets a closed database: held (not an error
    reply), and a second close is harmless."""
    db = SqliteDatabase(str(tmp_path / "x.sqlite"))
    await db.setup(["CREATE TABLE t (k TEXT)"])
    await db.close()
    await db.close()
    with pytest.raises(ServiceUnavailable, match="database closed"):
        async with db.transaction() as tx:
            await tx.execute("SELECT 1")

    async def body(tx: Any) -> None:
        await tx.execute("SELECT 1")

    with pytest.raises(ServiceUnavailable, match="database closed"):
        await db.run(body)


@pytest.mark.parametrize(
    ("own", "kind"),
    [
        (E.DeadlockDetectedError("deadlock detected"), RetryTransaction),
        (E.ConnectionDoesNotExistError("connection was closed in the middle of operation"), ServiceUnavailable),
        (E.UniqueViolationError("duplicate key"), E.UniqueViolationError),
        (ValueError("the body's bug"), ValueError),
        (asyncio.CancelledError(), asyncio.CancelledError),  # (a cancelled call stays cancelled, not "unknown")
    ],
)
async def test_a_body_that_raised_is_sorted_as_itself_when_its_rollback_fails_too(own: BaseException, kind: type[BaseException]) -> None:
    """Nothing was committed, so what the body raised is what happened, sorted as it would have
    been (a deadlock retried, not answered with an error because the ROLLBACK failed as well)."""
    from hsb.service.db import PostgresDatabase

    db = PostgresDatabase("postgresql://unused")
    db._pool = FakePool(E.InterfaceError("cannot perform operation: connection is closed"))
    with pytest.raises(kind):
        async with db.transaction():
            raise own


@pytest.mark.parametrize(
    ("fails", "kind"),
    [
        (RuntimeError("the connection broke while committing"), ServiceUnavailable),  # committed or not: unknown
        (E.UniqueViolationError("deferred constraint at COMMIT"), E.UniqueViolationError),  # the server rolled it back
    ],
)
async def test_a_commit_that_fails_on_our_side_is_unknown_and_one_the_server_refused_is_the_requests(
    fails: BaseException, kind: type[BaseException]
) -> None:
    from hsb.service.db import PostgresDatabase

    db = PostgresDatabase("postgresql://unused")
    db._pool = FakePool(fails)
    with pytest.raises(kind) as exc:
        async with db.transaction():
            pass
    if kind is ServiceUnavailable:
        assert "whether it committed unknown" in str(exc.value)


async def test_a_sqlite_transaction_left_open_by_a_failed_rollback_is_rolled_back_at_the_next(tmp_path: Path) -> None:
    """The ROLLBACK after a body's error fails too (a disk in trouble for a moment): the next
    transaction rolls the open one back first, not "cannot start a transaction within a transaction"
    at every message from then on."""
    db = SqliteDatabase(str(tmp_path / "x.sqlite"))
    try:
        await db.setup(["CREATE TABLE t (k TEXT)"])
        real = await db._call(lambda c: c)

        class RollbackFailsOnce:
            failed = False

            def execute(self, sql: str, *args: Any) -> Any:
                if sql == "ROLLBACK" and not self.failed:
                    self.failed = True
                    raise sqlite3.OperationalError("disk I/O error, once")
                return real.execute(sql, *args)

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        proxy = RollbackFailsOnce()
        db._conn = proxy  # type: ignore[assignment]
        with pytest.raises((sqlite3.OperationalError, ValueError)):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES ('lost')")
                raise ValueError("the body's error")
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES ('next')")
        assert proxy.failed

        async def keys(tx: Any) -> Any:
            return await tx.fetch("SELECT k FROM t")

        assert await db.run(keys) == [("next",)]
    finally:
        await db.close()
