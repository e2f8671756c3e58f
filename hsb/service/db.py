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
locks do not hold across NFS, and a second machine could not reach the file anyway. Its side is
hsb.service.db_sqlite (`SqliteDatabase`, re-exported here).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

# (RetryTransaction lives in the plug-in interface, as the host acts on it; services import it from here)
from hsb.service.api import RetryTransaction as RetryTransaction
from hsb.service.api import ServiceUnavailable
from hsb.service.db_sqlite import SqliteDatabase as SqliteDatabase  # (one machine's database: its own module)

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
