"""One small async interface over PostgreSQL (asyncpg) and SQLite, for services.

A service runs its statements inside `async with db.transaction() as tx:`, or hands the whole
transaction over as `await db.run(body)` (`body(tx)` an async function: on SQLite it then runs
in one call on the database's thread, see `SqliteDatabase.run`), and writes SQL once, with
`$1, $2, …` placeholders (SQLite gets them as `?1, ?2, …`). What can go wrong is
sorted here, once, into three kinds, because the host treats them differently:

- `RetryTransaction`: a serialization failure or deadlock (PostgreSQL): the transaction is
  rolled back and may simply run again (`ExactlyOnce.run` does; raised out of a service's
  `handle`, the host hands the message over again, up to 20 times in a row, then holds it as
  for the next kind);
- `ServiceUnavailable` (hsb.service.api): the database cannot be reached or is shutting
  down or out of resources, refuses the service a right or lacks one of its tables (PostgreSQL:
  a grant revoked, a restore that left a table out), or (SQLite) it stayed locked past
  `busy_timeout` (the other host stopped inside a transaction, say): the host keeps the message, retries it with backoff, and
  shows the service as failing (the message stays held at the CP, nothing is lost);
- anything else is the application's error (a bug): it becomes the message's error reply;
  so is a call asyncpg refuses while the connection is still open (an `InterfaceError`: the
  wrong number of arguments, two statements at once), as the same bug is on SQLite.
  Except on our side of a PostgreSQL transaction's end: a failure of the COMMIT, the ROLLBACK
  or handing the connection back that the server did not answer leaves it unknown whether the
  effect committed, and is `ServiceUnavailable` (an error the server answered the COMMIT with,
  a deferred constraint say, means it rolled back; a SQLite commit fails or succeeds on the
  spot).

PostgreSQL is the database for two machines. SQLite is for one machine only (the sandbox and
the demo): both hosts open the same file, which is safe only on a local disk, since SQLite's
locks do not hold across NFS, and a second machine could not reach the file anyway.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

# (RetryTransaction lives in the plug-in interface, as the host acts on it; services import it from here)
from hsb.service.api import RetryTransaction as RetryTransaction
from hsb.service.api import ServiceError, ServiceUnavailable
from hsb.worker import Worker, consume

log = structlog.get_logger("hsb.service")


class Tx(Protocol):
    """A transaction: statements with `$n` placeholders; rows come back as tuples."""

    for_update: str  # " FOR UPDATE" where row locks exist (PostgreSQL), "" where the whole database is locked

    async def execute(self, sql: str, *args: Any) -> int: ...  # the rows an INSERT/UPDATE/DELETE changed

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None: ...

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...


T = TypeVar("T")


class Database(Protocol):
    kind: str

    def transaction(self) -> Any: ...  # an async context manager giving a Tx

    async def run(self, body: Callable[[Any], Coroutine[Any, Any, T]]) -> T: ...  # body(tx) in one transaction

    async def setup(self, ddl: list[str]) -> None: ...

    async def close(self) -> None: ...


def open_database(dsn: str | None = None, sqlite: str | None = None, **opts: Any) -> Database:
    """PostgreSQL for a `postgresql://…` DSN (the URL form only: asyncpg does not read libpq's
    `host=… port=…` keywords; a DSN it cannot use raises ValueError, naming the fix), else
    SQLite at `sqlite`."""
    if dsn:
        return PostgresDatabase(dsn, **opts)
    if sqlite:
        return SqliteDatabase(sqlite, **{k: v for k, v in opts.items() if k in ("busy_timeout",)})
    raise ValueError("a database is needed: dsn = 'postgresql://…' or sqlite = 'PATH'")


# --------------------------------------------------------------------------- PostgreSQL

DSN_FORM = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE (a Unix socket: postgresql://USER@/DATABASE?host=/DIR&port=PORT)"


# the DSN's parameters that name files (or make asyncpg look for its default root certificate):
# read by hsbd's own user when it connects, not by whoever runs the check, so left out of it
_FILE_PARAMS = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "sslpassword", "passfile")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def dsn_problem(dsn: str) -> str:
    """Why asyncpg cannot use `dsn`, said with the fix ("" when it can), read as asyncpg reads it
    when it connects: a DSN it refuses there (libpq's keyword form, another scheme, a bad port or
    `sslmode`) passed the config check and then held every message for ever as "database
    unreachable". Nothing is connected to and no file it names is read (`_FILE_PARAMS`: those
    are the hsbd user's, whose files the operator running the check may not see). The DSN itself
    is not quoted: it may hold a password. Only what asyncpg's parser refuses as configuration
    is a problem: a parser that is not the one this was written against (asyncpg's private
    `_parse_connect_dsn_and_args`, which must take a plain DSN) checks nothing."""
    if not isinstance(dsn, str) or not dsn.strip():
        return f"dsn must name a PostgreSQL database: {DSN_FORM}"
    if "://" not in dsn and "=" in dsn:
        return f"dsn is in libpq's keyword form, which asyncpg does not read: write it as a URL, {DSN_FORM}"
    try:
        parts = urlsplit(dsn)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        query, parts = [], None
    mode = next((v for k, v in reversed(query) if k == "sslmode"), None)
    if mode is not None and mode not in _SSLMODES:
        return f"dsn: sslmode {mode[:20]!r} is not one of {', '.join(_SSLMODES)}: {DSN_FORM}"
    if parts is not None and query:
        kept = [(k, "require" if k == "sslmode" and v in ("verify-ca", "verify-full") else v) for k, v in query if k not in _FILE_PARAMS]
        dsn = urlunsplit(parts._replace(query=urlencode(kept)))
    try:
        from asyncpg import connect_utils

        parse = connect_utils._parse_connect_dsn_and_args
        kw = dict.fromkeys((p for p in inspect.signature(parse).parameters if p != "dsn"), None)
        parse(dsn="postgresql://hsb@localhost:5432/hsb", **kw)  # (a parser that refuses this one checks nothing)
    except Exception:  # noqa: BLE001 - another asyncpg, its parser not this one: the connect says it, as before
        return ""
    try:
        addrs, _ = parse(dsn=dsn, **kw)
    except ValueError as exc:  # (asyncpg's ClientConfigurationError is one: its own words for what it refuses)
        return f"dsn is not one asyncpg can use ({type(exc).__name__}: {exc}): {DSN_FORM}"
    except Exception:  # noqa: BLE001 - not a refusal of the configuration: the connect says it
        return ""
    for addr in addrs:
        if isinstance(addr, tuple) and not 1 <= int(addr[1]) <= 65535:
            return f"dsn: port {addr[1]} is not a port (1..65535): {DSN_FORM}"
    return ""


# SQLSTATE classes that mean "the database is not there for us now", not "the request is bad"
_UNAVAILABLE_PREFIXES = ("08", "53", "57P", "58")
# query cancelled (our command_timeout); a read-only transaction (the DSN reached a hot standby
# during the database's own failover); our idle-in-transaction timeout (a stall of this process);
# the database missing (being restored); authentication refused (being fixed); a lock not had
# within the role's lock_timeout (a row held by another session: a stopped old active's, say):
# damaged data or index (XX001, XX002: the server's, as SQLite's CORRUPT): none is the request's
_UNAVAILABLE_STATES = {"57014", "25006", "25P03", "3D000", "28000", "28P01", "55P03", "XX001", "XX002"}
_RETRY_STATES = {"40001", "40P01"}  # serialization failure, deadlock
# the deployment's, not the request's: a right revoked (on a table, its sequence, the schema), a
# table or schema missing (a restore that left it out). Told by the code alone (the server's
# words may be another language): messages wait, as for SQLite's READONLY, PERM and CANTOPEN,
# and the reason names the fix. In a user's own service a statement that names a table never
# made waits too, failing with its name: nothing is answered with an error and discarded
DEPLOYMENT_STATES = {
    "42501": "grant the service's database role its rights again (docs/ledger.md, 'Rights')",
    "42P01": "restore the missing table (from a backup: made anew, empty, it would lose what it recorded), or fix the statement that names it",
    "3F000": "restore the missing schema, or set the role's search_path to it",
}
# where the server raised them for the request's own sake (the same codes): a row-level security
# policy's WITH CHECK, a PL/pgSQL RAISE with one of these codes: the application's, an error reply
_REQUEST_SOURCES = frozenset({"ExecWithCheckOptions", "exec_stmt_raise"})


def classify_pg(exc: BaseException, conn_open: bool = False) -> BaseException | None:
    """The kind of an asyncpg error (see the module docstring); None: the application's.
    `conn_open`: the transaction's body raised it while its connection was still open."""
    import asyncpg

    state = getattr(exc, "sqlstate", None)
    # a prepared statement the server no longer takes (a table altered while we ran): asyncpg has
    # dropped its cache, and the same transaction run again prepares it anew
    if state in _RETRY_STATES or isinstance(exc, asyncpg.InvalidCachedStatementError):
        return RetryTransaction(str(exc))
    if state in DEPLOYMENT_STATES and getattr(exc, "server_source_function", None) not in _REQUEST_SOURCES:
        return ServiceUnavailable(f"database: {type(exc).__name__}: {exc}: {DEPLOYMENT_STATES[state]}")
    if state and (state in _UNAVAILABLE_STATES or state.startswith(_UNAVAILABLE_PREFIXES)):
        return ServiceUnavailable(f"database unavailable: {type(exc).__name__}: {exc}")
    # the driver's own DataError, an InterfaceError too: a value this code gave that it cannot
    # encode, nothing sent, a bug that an error reply names rather than a retry for ever
    if isinstance(exc, asyncpg.exceptions._base.DataError):
        return None
    # the driver refusing a call on a connection that is still open (the wrong number of
    # arguments, two statements at once on one transaction, a transaction used after its end):
    # the body's own bug, an error reply; held, it would stall the terminal for ever and blame
    # the database. On a closed connection ("connection is closed") it is the connection's
    if conn_open and isinstance(exc, asyncpg.InterfaceError):
        return None
    # InternalClientError: the driver's connection in a state it did not expect (seen while the
    # server restarted): the connection's fault, not the request's
    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)):
        return ServiceUnavailable(f"database unreachable: {type(exc).__name__}: {exc}".rstrip(": "))
    return None


def _still_open(conn: Any) -> bool:
    try:
        return not conn.is_closed()
    except Exception:  # noqa: BLE001 - a pool's proxy whose connection was terminated (released): not open
        return False


class _PgTx:
    for_update = " FOR UPDATE"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        tag = await self.conn.execute(sql, *args)  # the command tag: "DELETE 2", "INSERT 0 1", "CREATE TABLE"
        last = str(tag).rpartition(" ")[2]
        return int(last) if last.isdigit() else 0

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.conn.fetchval(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        r = await self.conn.fetchrow(sql, *args)
        return None if r is None else tuple(r)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.conn.fetch(sql, *args)]


class PostgresDatabase:
    """An asyncpg pool, opened on first use (a standby never needs it; a database that is
    down at start is only a failing service, not a failed start)."""

    kind = "postgresql"

    def __init__(
        self,
        dsn: str,
        pool_size: int = 10,
        command_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        tx_idle_timeout: float = 1.0,
    ) -> None:
        problem = dsn_problem(dsn)
        if problem:
            raise ValueError(problem)
        self.dsn = dsn
        # the server ends a transaction of ours left idle this long: a host stopped (SIGSTOP, a
        # hung VM) in the middle of one must not hold its row locks against the new active
        self.tx_idle_timeout = float(tx_idle_timeout)
        self.pool_size = int(pool_size)
        self.command_timeout = float(command_timeout)
        self.connect_timeout = float(connect_timeout)
        self._pool: Any = None
        self._creating: asyncio.Lock | None = None
        self._closed = False  # close() ran: no pool is made again (its connections would outlive the host's stop)

    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise ServiceUnavailable("database: the service is stopping (its connections are closed)")
        import asyncpg

        if self._creating is None:
            self._creating = asyncio.Lock()
        async with self._creating:
            if self._pool is None and not self._closed:
                # min_size 0: no connection is made here, so a database that is down does not
                # fail this; each acquire connects, and a dead connection is replaced
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=0,
                    max_size=self.pool_size,
                    command_timeout=self.command_timeout,
                    timeout=self.connect_timeout,
                    max_inactive_connection_lifetime=60.0,
                    server_settings={
                        "idle_in_transaction_session_timeout": str(int(self.tx_idle_timeout * 1000)),
                        # a commit durable before its reply goes, whatever the server, the database or
                        # the role say (off would lose answered commits in a crash): given at connect,
                        # it outranks them and a reload, and it is what the pool's RESET ALL restores
                        "synchronous_commit": "on",
                    },
                )
        if self._pool is None:
            raise ServiceUnavailable("database: the service is stopping (its connections are closed)")
        return self._pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgTx]:
        entered = False  # the body ran: an error after this point may follow a commit
        own: BaseException | None = None  # what the body itself raised, if anything
        own_open = False  # its connection was still open when it raised that
        try:
            pool = await self._get_pool()
            async with pool.acquire(timeout=self.connect_timeout) as conn, conn.transaction():
                entered = True
                try:
                    yield _PgTx(conn)
                except BaseException as exc:
                    own, own_open = exc, _still_open(conn)
                    raise
        except (RetryTransaction, ServiceUnavailable):
            raise
        except Exception as exc:
            if own is not None and exc is not own:
                # the body raised (or was cancelled) and its ROLLBACK (or handing the connection
                # back) failed too: nothing was committed, so what the body raised is what
                # happened (a statement still running on the connection, the body's bug, fails
                # that ROLLBACK as well; a cancelled call stays cancelled)
                if isinstance(own, (RetryTransaction, ServiceUnavailable)):
                    raise own from None
                kind = classify_pg(own, conn_open=own_open)
                if kind is None:
                    raise own from None
                raise kind from own
            kind = classify_pg(exc, conn_open=exc is own and own_open)
            if not entered and isinstance(exc, TimeoutError) and self._pool_busy():
                # no connection free within the wait, every one of the pool's in use: the
                # database answers, it is slow or the pool small (not "unreachable")
                kind = ServiceUnavailable(
                    f"database busy: all {self.pool_size} pool connections in use for {self.connect_timeout:g} s"
                    " (the database is slow, or raise [service_options] pool_size)"
                )
            if kind is None and not entered:
                # connecting or BEGIN failed, before the body ran: nothing of the request's was
                # sent, so it is never the request's error (an error reply would discard a valid
                # message). A server setting it refuses at connect (42704) came from the DSN:
                # asyncpg sends a query parameter it does not know itself as one
                why = "check the database and [service_options] dsn"
                if getattr(exc, "sqlstate", None) == "42704":  # (a setting the server does not know: the DSN's)
                    why += (
                        " (asyncpg sends a query parameter it does not know, such as libpq's connect_timeout, to the server as a setting: remove it)"
                    )
                kind = ServiceUnavailable(f"database: no transaction could begin ({type(exc).__name__}: {exc}): not the request's; {why}")
            if kind is None and entered and exc is not own and getattr(exc, "sqlstate", None) is None:
                # not the body's error, and not one the server answered with (it has a SQLSTATE: a
                # deferred constraint at COMMIT, rolled back, a known outcome): the COMMIT, the ROLLBACK
                # or handing the connection back failed on our side, and whether the effect
                # committed is not known. So no error reply: the message is tried again, and
                # its idempotency record (hsb.service.once) makes the second try find the first
                kind = ServiceUnavailable(f"database: {type(exc).__name__} ending the transaction, whether it committed unknown: {exc}")
            if kind is None:
                raise
            raise kind from exc

    def _pool_busy(self) -> bool:
        """Every connection the pool may open is open and handed out."""
        p = self._pool
        return p is not None and p.get_size() >= self.pool_size and p.get_idle_size() == 0

    async def run(self, body: Callable[[Any], Awaitable[T]]) -> T:
        """`body(tx)` in one transaction (as `transaction()`); what it returns."""
        async with self.transaction() as tx:
            return await body(tx)

    async def setup(self, ddl: list[str]) -> None:
        async with self.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(7147)")  # both hosts may start at once
            for stmt in ddl:
                await tx.execute(stmt)

    async def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, Exception):  # noqa: BLE001 - closing: a dead server must not hang the stop
                pool.terminate()


# --------------------------------------------------------------------------- SQLite

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
