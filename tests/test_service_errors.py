"""What the service layer makes of a configuration or a statement that cannot work: a clear
start error for idempotency records kept too briefly, and an error reply (not a retry for ever,
which would stall the terminal's later messages behind it) for SQL that cannot run on SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hsb.service.api import ServiceError, ServiceUnavailable, load_service
from hsb.service.db import open_database

pytestmark = pytest.mark.timeout(30)


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
