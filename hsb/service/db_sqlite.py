"""The SQLite side of hsb.service.db: one machine's database (the sandbox's and the demo's).

Both hosts open the same file, which is safe only on a local disk (SQLite's locks do not hold
across NFS), so it is for one machine; PostgreSQL (hsb.service.db) is the database for two.
A transaction runs on the database's own thread (a Worker); `SqliteDatabase.run` hands a
whole transaction over in one call. What goes wrong is sorted as hsb.service.db's docstring says:
SQLite's result codes for an unavailable database (the file, the disk, the lock after
`busy_timeout`) are `ServiceUnavailable`, any other is the statement's, the application's error.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import structlog

from hsb.service.api import ServiceError, ServiceUnavailable
from hsb.worker import Worker, consume

log = structlog.get_logger("hsb.service")

T = TypeVar("T")


_PLACEHOLDER = re.compile(r"\$(\d+)")
# SQLite's primary result codes (the low byte of the exception's `sqlite_errorcode`) for the
# database being unavailable: the file, the disk or its memory; BUSY and LOCKED are the lock (after
# busy_timeout: SQLite's busy handler has waited already). Any other code is the statement's
# (SQLITE_ERROR: no such table or function, a misused value, a syntax error; SQLITE_CONSTRAINT: a
# constraint or a trigger's RAISE), as PostgreSQL's SQLSTATE classes 42 (but for a right or a
# table missing: DEPLOYMENT_STATES), 22 and 23 are the application's: an error reply, not a retry for ever that would hold every later message of the
# terminal. (By code, not by the words of the message: "account is locked" may be a trigger's.)
_SQLITE_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_SQLITE_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_SCHEMA,
        sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_NOLFS,
    }
)


@functools.lru_cache(maxsize=512)
def _sql(sql: str) -> str:
    """A statement's `$n` placeholders as SQLite's `?n` (a service has few distinct statements)."""
    return _PLACEHOLDER.sub(r"?\1", sql)


# one statement on the connection, for both kinds of SQLite transaction (on the database's thread)
def _changed(c: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> int:
    return max(0, c.execute(_sql(sql), args).rowcount)


def _row(c: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    return c.execute(_sql(sql), args).fetchone()  # type: ignore[no-any-return]


def _rows(c: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    return c.execute(_sql(sql), args).fetchall()


class _SqliteTx:
    for_update = ""  # BEGIN IMMEDIATE holds the database's write lock for the whole transaction

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def execute(self, sql: str, *args: Any) -> int:
        return await self.db._call(lambda c: _changed(c, sql, args))  # type: ignore[no-any-return]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        return await self.db._call(lambda c: _row(c, sql, args))  # type: ignore[no-any-return]

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self.db._call(lambda c: _rows(c, sql, args))  # type: ignore[no-any-return]


class _DirectTx:
    """The transaction of `SqliteDatabase.run`, on the database's thread: each statement runs
    on the spot, so an `await` of one never suspends (see `_drive`)."""

    for_update = ""

    def __init__(self, c: sqlite3.Connection) -> None:
        self.c = c

    async def execute(self, sql: str, *args: Any) -> int:
        return _changed(self.c, sql, args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = _row(self.c, sql, args)
        return None if row is None else row[0]

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        return _row(self.c, sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return _rows(self.c, sql, args)


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a transaction's body to its end on this thread: it awaits only `_DirectTx`'s
    statements, which never suspend, so one step finishes it."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError(
        "on SQLite a transaction's body runs on the database's thread and may await only its transaction's"
        " statements (tx.execute, tx.fetchval, ...): move any other await out of it"
    )


def _whole(c: sqlite3.Connection, body: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    _begin(c)
    try:
        result = _drive(body(_DirectTx(c)))
        c.execute("COMMIT")
    except BaseException:
        _rollback_after_error(c)
        raise
    return result


def _rollback_open(c: sqlite3.Connection) -> None:
    if c.in_transaction:
        c.execute("ROLLBACK")


def _rollback_after_error(c: sqlite3.Connection) -> None:
    """The ROLLBACK after the body (or its COMMIT) raised. If it fails too, nothing was committed,
    so the body's error is what happened (as on PostgreSQL): the ROLLBACK's is logged, not raised
    in its place, and the transaction it left open is rolled back by the next BEGIN."""
    try:
        _rollback_open(c)
    except sqlite3.Error as exc:
        log.warning(
            "sqlite_rollback_failed", error=str(exc), msg="the transaction's ROLLBACK failed after its body's error; the next BEGIN rolls it back"
        )


def _begin(c: sqlite3.Connection) -> None:
    # The asyncio lock is held: a transaction still open on this connection is one whose task
    # was cancelled before it could roll back. Left open, every later BEGIN would fail and the
    # database's write lock would stay held; it is rolled back first.
    _rollback_open(c)
    c.execute("BEGIN IMMEDIATE")


# RETURNING (3.35: the ledger and the idempotency record), upsert's ON CONFLICT (3.24), row values (3.15)
SQLITE_NEEDED = (3, 35, 0)


def check_sqlite_version() -> None:
    """Refuse a SQLite library too old for the statements of hsb.service (each would fail, and
    every message be answered with an error), naming what to do."""
    found = tuple(sqlite3.sqlite_version_info)
    if found < SQLITE_NEEDED:
        need = ".".join(map(str, SQLITE_NEEDED))
        raise ServiceError(
            f"SQLite {sqlite3.sqlite_version} is too old: the service's statements need SQLite {need} or later (RETURNING);"
            " use PostgreSQL ([service_options] dsn = 'postgresql://…'), or run hsbd on a Python linked with a newer SQLite"
        )


class SqliteDatabase:
    """One connection on one thread of its own; one transaction at a time (BEGIN IMMEDIATE);
    WAL, synchronous=FULL: a commit is on disk before the reply goes out."""

    kind = "sqlite"
    # how long close() waits for the statement still running (an fsync on a hung disk): as
    # PostgresDatabase's close, a dead disk must not hang hsbd's stop
    close_timeout = 5.0

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        check_sqlite_version()  # at the start (hsbd's config check builds the service), not at each message
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        # one thread for the connection; the loop gives it the GIL (hsb.worker) once a
        # millisecond, without spinning: a transaction is one call, and they come back to back
        self._exec = Worker("hsb-sqlite", spin_s=0.0)
        self._conn: sqlite3.Connection | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.path.exists():  # (a typo in one host's path would give it a ledger of its own)
                log.warning(
                    "sqlite_database_created",
                    path=str(self.path),
                    msg="no database file there: a new, empty one is made; both hosts must name the same file (service_options sqlite)",
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            self._conn = c
        return self._conn

    async def _call(self, fn: Any) -> Any:
        if self._closed:
            raise self._closed_error()

        def run() -> Any:
            return fn(self._connect())

        try:
            return await self._exec.run(run)
        except RuntimeError as exc:
            if self._closed:  # closed while it was queued (the worker's own error)
                raise self._closed_error() from exc
            raise  # a transaction body's (run): the application's
        except (MemoryError, OSError) as exc:  # (the folder or the file while connecting, the memory)
            raise ServiceUnavailable(f"database unavailable: sqlite {self.path}: {type(exc).__name__}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            primary = code & 0xFF if isinstance(code, int) else None  # (extended codes: the low byte)
            if primary in _SQLITE_BUSY:  # waited busy_timeout already: retrying at once is no use
                raise ServiceUnavailable(
                    f"database busy: sqlite {self.path}: {exc} (another transaction held it past {self.busy_timeout:g} s)"
                ) from exc
            if primary in _SQLITE_UNAVAILABLE:
                raise ServiceUnavailable(f"database unavailable: sqlite {self.path}: {exc} ({getattr(exc, 'sqlite_errorname', code)})") from exc
            raise  # the statement's fault (the application's SQL, a constraint, or a schema it does not match)

    def _closed_error(self) -> ServiceUnavailable:
        return ServiceUnavailable(f"database closed: sqlite {self.path}")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTx]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                await self._call(_begin)
                yield _SqliteTx(self)
                await self._call(lambda c: c.execute("COMMIT"))
            except BaseException:  # also cancelled while BEGIN ran on the thread: it still began there
                await asyncio.shield(self._call(_rollback_after_error))
                raise

    async def run(self, body: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """`body(tx)` in one transaction, the whole of it in one call on the database's thread:
        BEGIN, every statement, COMMIT (or ROLLBACK if it raises). A transaction through
        `transaction()` hops between the loop and the thread once per statement, and those hops,
        not SQLite, were most of a transfer's time (bench/sqlite_ledger.py). So `body` may await
        nothing but its transaction's statements (else RuntimeError), and should touch nothing
        the event loop's code changes meanwhile: it runs on another thread."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await self._call(lambda c: _whole(c, body))  # type: ignore[no-any-return]

    async def setup(self, ddl: list[str]) -> None:
        async with self.transaction() as tx:
            for stmt in ddl:
                await tx.execute(stmt)

    async def close(self) -> None:
        conn = self._conn

        def shut() -> None:
            if conn is not None:
                conn.close()

        if self._closed:
            return
        self._closed = True  # later statements are refused; one in flight finishes or fails
        # the connection is closed on its thread, after the statement running there (the
        # sqlite3 connection is not closed under it); given up after close_timeout
        shutting = asyncio.ensure_future(self._exec.run(shut))
        try:
            await asyncio.wait_for(asyncio.shield(shutting), self.close_timeout)
        except TimeoutError:
            shutting.add_done_callback(consume)  # (shutdown below drops it: never run, its error unread)
            log.warning(
                "sqlite_close_abandoned",
                path=str(self.path),
                waited_s=self.close_timeout,
                msg="a statement on the database's thread did not return (a hung disk?): closed without waiting for it",
            )
        finally:
            self._conn = None
            self._exec.shutdown()
