"""What the service layer makes of a configuration or a statement that cannot work: a clear
start error for idempotency records kept too briefly or a SQLite library too old, and an error reply (not a retry for ever,
which would stall the terminal's later messages behind it) for SQL that cannot run on SQLite."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hsb.service.api import ServiceError, ServiceUnavailable, load_service
from hsb.service.db import open_database

pytestmark = pytest.mark.timeout(30)


def test_a_sqlite_library_too_old_for_the_statements_is_refused_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RETURNING needs SQLite 3.35: on an older library every message was answered with an
    error. The database is refused where it is opened, in one line naming the version found, the
    version needed and the fix."""
    from hsb.host.main import service_problems

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(ServiceError, match=r"SQLite 3\.31\.1 is too old: .* need SQLite 3\.35\.0 or later .*use PostgreSQL .*newer SQLite"):
        open_database(None, str(tmp_path / "l.db"))
    problems = service_problems("ledger", "host-a", {"sqlite": str(tmp_path / "l.db")})
    assert len(problems) == 1 and problems[0].startswith("host.service: SQLite 3.31.1 is too old") and "\n" not in problems[0], problems
    assert not (tmp_path / "l.db").exists()
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 35, 0))
    assert service_problems("ledger", "host-a", {"sqlite": str(tmp_path / "l.db")}) == []


def test_idempotency_records_kept_less_than_an_hour_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match=r"bad \[service_options\]: keep_hours must be at least 1 .*not 0"):
        load_service("ledger", "host-a", {"sqlite": str(tmp_path / "l.db"), "keep_hours": 0})
    svc = load_service("ledger", "host-a", {"sqlite": str(tmp_path / "l.db"), "keep_hours": 1})
    assert svc is not None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM no_such_table",
        "SELECT no_such_column FROM t",
        "SELEC 1",
        "INSERT INTO t (b) VALUES (1)",
    ],
)
async def test_a_statement_sqlite_cannot_run_is_the_applications_error_not_unavailable(tmp_path: Path, sql: str) -> None:
    db = open_database(None, str(tmp_path / "l.db"))
    try:
        await db.setup(["CREATE TABLE t (a INTEGER)"])
        with pytest.raises(sqlite3.OperationalError):
            async with db.transaction() as tx:
                await tx.execute(sql)
        async with db.transaction() as tx:  # the database itself is fine
            await tx.execute("INSERT INTO t (a) VALUES (1)")
            assert await tx.fetchval("SELECT count(*) FROM t") == 1
    finally:
        await db.close()


async def test_a_database_sqlite_cannot_open_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    db = open_database(None, str(tmp_path / "d"))  # a directory, not a database file
    try:
        with pytest.raises(ServiceUnavailable):
            async with db.transaction() as tx:
                await tx.execute("SELECT 1")
    finally:
        await db.close()


async def test_a_busy_database_at_the_first_message_makes_it_wait_not_an_error_reply(tmp_path: Path) -> None:
    """The new active's first message sets the ledger up; another host's transaction holding the
    SQLite file (a stalled old active) makes that wait (ServiceUnavailable: the message is held
    and retried), not a final `error: RetryTransaction` reply for a request never applied."""
    from hsb.service.ledger import LedgerService

    path = tmp_path / "l.db"
    s = LedgerService("host-b", sqlite=str(path))
    s.db.busy_timeout = 0.1  # type: ignore[attr-defined]
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ServiceUnavailable):
            await s.handle("T1", 1, '{"op":"open","account":"a"}', False)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert json.loads(await s.handle("T1", 1, '{"op":"open","account":"a"}', True))["ok"] is True
    await s.close()


async def test_a_balance_never_passes_the_64_bit_limit(tmp_path: Path) -> None:
    """SQLite turns an integer past 64 bits into a float (money made and lost silently): a deposit
    or transfer that would pass the ledger's limit is refused, and the balance stays an integer."""
    from hsb.service.ledger import MAX_BALANCE, LedgerService

    path = tmp_path / "l.db"
    s = LedgerService("host-a", sqlite=str(path))
    await s.handle("T1", 1, '{"op":"open","account":"a"}', False)
    await s.handle("T1", 2, '{"op":"open","account":"b"}', False)
    await s.handle("T1", 3, '{"op":"deposit","account":"b","amount":10}', False)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("UPDATE ledger_accounts SET balance = ? WHERE account = 'a'", (MAX_BALANCE - 5,))
    assert '"balance_limit"' in await s.handle("T1", 4, '{"op":"deposit","account":"a","amount":10}', False)
    assert '"balance_limit"' in await s.handle("T1", 5, '{"op":"transfer","from":"b","to":"a","amount":10}', False)
    assert '"ok":true' in await s.handle("T1", 6, '{"op":"deposit","account":"a","amount":5}', False)
    assert c.execute("SELECT typeof(balance), balance FROM ledger_accounts WHERE account = 'a'").fetchone() == ("integer", MAX_BALANCE)
    c.close()
    await s.close()


@pytest.mark.parametrize("data", ["[" * 100_000, '{"op":"balance","account":"\\ud800"}', '{"op":"balance","account":"a\\u0000"}'])
def test_requests_no_database_can_take_are_bad_requests(data: str) -> None:
    from hsb.service.ledger import BadRequest, parse

    with pytest.raises(BadRequest):
        parse(data)


def test_postgresql_states_of_a_database_not_there_for_us_are_unavailable() -> None:
    """A read-only transaction (a hot standby reached during the database's failover), our own
    idle-in-transaction timeout, a database missing or refusing our login: the message waits."""
    asyncpg = pytest.importorskip("asyncpg", reason="asyncpg (a dependency of hsb) is not installed")
    from hsb.service.db import classify_pg

    for exc in (
        asyncpg.exceptions.ReadOnlySQLTransactionError("x"),
        asyncpg.exceptions.IdleInTransactionSessionTimeoutError("x"),
        asyncpg.exceptions.InvalidCatalogNameError("x"),
        asyncpg.exceptions.InvalidPasswordError("x"),
        asyncpg.exceptions.LockNotAvailableError("x"),  # lock_timeout: a row another session holds
    ):
        assert isinstance(classify_pg(exc), ServiceUnavailable), exc


def test_postgresql_a_right_revoked_or_a_table_missing_is_the_deployments_and_names_the_fix() -> None:
    """A grant revoked (on a table, its sequence, the schema) or a restore that left a table or
    schema out: every message would get an error reply and be discarded, the service shown ok.
    The message waits, with the fix, told by the code alone (the server's words may be another
    language); other class-42 errors (a column, the syntax) stay the application's."""
    asyncpg = pytest.importorskip("asyncpg", reason="asyncpg (a dependency of hsb) is not installed")
    from hsb.service.db import classify_pg

    for exc, fix in (
        (asyncpg.exceptions.InsufficientPrivilegeError("permission denied for table ledger_entries"), "grant"),
        (asyncpg.exceptions.InsufficientPrivilegeError("permission denied for sequence ledger_entries_seq_seq"), "grant"),
        (asyncpg.exceptions.InsufficientPrivilegeError("Keine Berechtigung für Schema public"), "grant"),
        (asyncpg.exceptions.UndefinedTableError('relation "ledger_entries" does not exist'), "restore the missing table"),
        (asyncpg.exceptions.InvalidSchemaNameError('schema "app" does not exist'), "restore the missing schema"),
    ):
        kind = classify_pg(exc)
        assert isinstance(kind, ServiceUnavailable) and str(exc) in str(kind) and fix in str(kind), (exc, kind)
    assert classify_pg(asyncpg.exceptions.UndefinedColumnError("x")) is None
    assert classify_pg(asyncpg.exceptions.PostgresSyntaxError("x")) is None
    # the same code raised for the request's own sake (as PostgreSQL 15 says where): a row-level
    # security policy's WITH CHECK, a PL/pgSQL RAISE: the application's, its error reply
    for source in ("ExecWithCheckOptions", "exec_stmt_raise"):
        exc = asyncpg.exceptions.InsufficientPrivilegeError('new row violates row-level security policy for table "t"')
        exc.server_source_function = source
        assert classify_pg(exc) is None, source
    denied = asyncpg.exceptions.InsufficientPrivilegeError("permission denied for table u")
    denied.server_source_function = "aclcheck_error"
    assert isinstance(classify_pg(denied), ServiceUnavailable)


def test_a_postgresql_statement_cache_gone_stale_is_run_again_not_answered_with_an_error() -> None:
    """A table altered while the host ran: asyncpg raises InvalidCachedStatementError (0A000, a
    "feature not supported") and drops its cache; the transaction runs again, not an error reply.
    Other 0A000 errors are the application's."""
    asyncpg = pytest.importorskip("asyncpg", reason="asyncpg (a dependency of hsb) is not installed")
    from hsb.service.db import RetryTransaction, classify_pg

    assert isinstance(classify_pg(asyncpg.InvalidCachedStatementError("cached statement plan is invalid")), RetryTransaction)
    assert classify_pg(asyncpg.exceptions.FeatureNotSupportedError("x")) is None


async def test_the_journal_service_holds_messages_it_cannot_write_and_leaves_no_torn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from hsb.service.builtin import JournalService

    j = JournalService("host-a", journal=str(tmp_path / "j.log"))
    await j.handle("T1", 1, "x", False)
    real_write, real_fsync = os.write, os.fsync

    def half(fd: int, data: bytes) -> int:  # half the line reaches the file, then the disk is full
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half)
    with pytest.raises(ServiceUnavailable, match="No space left"):
        await j.handle("T1", 2, "x", False)
    monkeypatch.setattr(os, "write", real_write)
    monkeypatch.setattr(os, "fsync", real_fsync)
    await j.handle("T1", 2, "x", True)
    await j.close()
    assert (tmp_path / "j.log").read_text() == "host-a T1 1 0\nhost-a T1 2 1\n"


async def test_the_journal_services_writer_survives_a_failure_that_is_not_an_os_error(tmp_path: Path) -> None:
    """A write that fails with anything else (a bug, its worker gone) answers that batch as
    unavailable (retried) and the writer goes on: it must not die and leave every later message
    waiting for ever."""
    from hsb.service.builtin import JournalService

    j = JournalService("host-a", journal=str(tmp_path / "j.log"))
    real = j._append
    calls = 0

    def once_broken(blob: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        real(blob)

    j._append = once_broken  # type: ignore[method-assign]
    try:
        with pytest.raises(ServiceUnavailable, match="RuntimeError: a bug"):
            await asyncio.wait_for(j.handle("T1", 1, "x", False), 5)
        assert await asyncio.wait_for(j.handle("T1", 1, "x", True), 5) == "x"
    finally:
        await j.close()
    assert (tmp_path / "j.log").read_text() == "host-a T1 1 1\n"


async def test_a_services_own_status_cannot_hide_the_hosts_view_of_its_health(tmp_path: Path) -> None:
    """A service's `status()` is shown beside the host's view of it; a key of the same name
    (`state`, `retries`) overrode the host's, so a failing service could show healthy and keep
    hsb_service_healthy, and its alert, quiet."""
    from hsb.service.builtin import EchoService
    from tests.support.inproc import pair_in_hot_standby

    class Says(EchoService):
        def status(self) -> dict[str, object]:
            return {"state": "fine", "retries": 0, "mine": 1}

    async with pair_in_hot_standby(tmp_path, Says) as (cp, a, b, tasks):
        a.delivery.health.state = "failing"  # (as after a ServiceUnavailable)
        st = a.service_status()
        assert st["state"] == "failing" and st["mine"] == 1, st


async def test_the_journal_service_cuts_a_line_torn_by_a_kill_before_it_appends(tmp_path: Path) -> None:
    """A host killed in the middle of a batch's write leaves a last line without its newline
    (never answered); the host started again must not glue its first line to it."""
    from hsb.service.builtin import JournalService

    p = tmp_path / "j.log"
    p.write_text("host-a T1 1 0\nhost-a T1 2")
    j = JournalService("host-a", journal=str(p))
    try:
        await asyncio.wait_for(j.handle("T1", 2, "x", True), 5)
    finally:
        await j.close()
    assert p.read_text() == "host-a T1 1 0\nhost-a T1 2 1\n"
    p.write_text("host-a T1")  # the first line torn: nothing whole to keep
    j = JournalService("host-a", journal=str(p))
    try:
        await asyncio.wait_for(j.handle("T1", 1, "x", False), 5)
    finally:
        await j.close()
    assert p.read_text() == "host-a T1 1 0\n"


def _check_journal_config(tmp_path: Path, journal: Path) -> subprocess.CompletedProcess[str]:
    """hsbd --check-config (a real process) on a config with the journal service at `journal`."""
    from tests.support.procs import host_config

    cfg = host_config(
        tmp_path,
        "a",
        cp="127.0.0.1:2",
        peer_listen="127.0.0.1:3",
        peer="127.0.0.1:4",
        takeover=tmp_path / "t.dat",
        records=64,
        service="journal",
        service_options={"journal": str(journal)},
    )
    return subprocess.run([sys.executable, "-m", "hsb.host", "--config", str(cfg), "--check-config"], capture_output=True, text=True, timeout=60)


def test_a_config_check_leaves_a_journal_with_a_torn_line_as_it_is(tmp_path: Path) -> None:
    """hsbd --check-config builds the service to check it, and the journal service cut a torn
    last line in its constructor: a check changed the file. The line is cut at the first append
    now (above); the check leaves every byte."""
    p = tmp_path / "j.log"
    torn = b"host-a T1 1 0\nhost-a T1 2"
    p.write_bytes(torn)
    r = _check_journal_config(tmp_path, p)
    assert r.returncode == 0 and "config OK" in r.stdout, r.stderr
    assert p.read_bytes() == torn


async def test_a_services_status_that_raises_leaves_health_metrics_and_status_answering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service's `status()` that raises took /health, /active and /standby down with a 500,
    /metrics and the admin status with them. It is shown as the service's `status_error`, beside
    the host's own view of it, and logged once per change, not at every scrape."""
    from hsb.host import delivery
    from hsb.service.builtin import EchoService
    from tests.support.inproc import pair_in_hot_standby
    from tests.support.logrec import RecordingLog

    broken = True

    class Broken(EchoService):
        def status(self) -> dict[str, object]:
            if broken:
                raise KeyError("pool")
            return {"mine": 1}

    logs = RecordingLog()
    monkeypatch.setattr(delivery, "log", logs)
    async with pair_in_hot_standby(tmp_path, Broken) as (cp, a, b, tasks):
        routes = a.routes()
        for path in ("/health", "/active", "/health"):
            code, _, body = routes[path]()
            assert code == 200, (path, body)
            sv = json.loads(body)["service"]
            assert sv["status_error"] == "KeyError: 'pool'" and sv["state"] == "ok" and sv["name"] == "echo", sv  # (the configured name)
        assert json.loads(b.routes()["/standby"]()[2])["service"]["status_error"] == "KeyError: 'pool'"
        code, _, text = routes["/metrics"]()
        assert code == 200 and b"hsb_service_healthy 1.0" in text and b"hsb_serving 1.0" in text
        a.delivery.health.state = "failing"  # (as after a ServiceUnavailable): still shown
        assert b"hsb_service_healthy 0.0" in routes["/metrics"]()[2]
        assert a.status()["service"]["state"] == "failing"
        said = [e for e in logs.events("service_status_failed") if e["error"] == "KeyError: 'pool'"]
        assert len(said) == 2, logs.entries  # once by each host, not once per call
        broken = False
        assert a.status()["service"]["mine"] == 1 and "status_error" not in a.status()["service"]
        assert len(logs.events("service_status_recovered")) == 1


def test_a_config_check_makes_neither_the_journal_nor_its_folder(tmp_path: Path) -> None:
    """hsbd --check-config built the journal service to check it, and the build made the journal's
    folder and file: a check (the unit's ExecStartPre, an operator trying a config) changed the
    disk. It looks now: a journal not there yet is a warning saying the start makes it, one the
    start could not make an error naming the key; nothing is made either way."""

    def check(journal: Path) -> subprocess.CompletedProcess[str]:
        return _check_journal_config(tmp_path, journal)

    journal = tmp_path / "jdir" / "sub" / "j.log"
    r = check(journal)
    assert r.returncode == 0 and "config OK" in r.stdout, r.stderr
    assert not (tmp_path / "jdir").exists()
    assert f"config warning: service_options.journal: {journal} does not exist; the start makes it" in r.stderr, r.stderr
    assert f"and its folder {tmp_path / 'jdir'}" in r.stderr, r.stderr
    (tmp_path / "afile").write_text("not a folder")
    r = check(tmp_path / "afile" / "j.log")
    assert r.returncode == 78 and "config error: service_options.journal:" in r.stderr and "cannot be made" in r.stderr, r.stderr
    assert (tmp_path / "afile").read_text() == "not a folder"
    journal = tmp_path / "j.log"  # (there already: no warning, and left as it is)
    journal.write_bytes(b"host-a T1 1 0\n")
    r = check(journal)
    assert r.returncode == 0 and "service_options.journal" not in r.stderr, r.stderr
    assert journal.read_bytes() == b"host-a T1 1 0\n"
