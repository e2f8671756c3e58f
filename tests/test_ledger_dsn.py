"""A PostgreSQL DSN that asyncpg cannot use, and a connection the server refuses before a
transaction's body runs (found by the service author's walk-through).

- A DSN in libpq's keyword form (`host=/dir port=5432 user=…`, what psql takes), another
  scheme, a port out of range or a bad `sslmode` passed `hsbd --check-config` and the start,
  then held every message for ever as "database unreachable: ClientConfigurationError". Now the
  check and the start refuse it in one line naming the URL form; `hsbterm load --books-dsn`
  says it before the run, not after it.
- A query parameter asyncpg does not know (libpq's `connect_timeout`) is sent to the server as
  a setting, which refuses the connection (42704). In a service of one's own the error came
  out of `ExactlyOnce.run` as the application's, so every valid message was answered
  `error: UndefinedObjectError` and discarded; in the ledger it was said as "the database role
  must own … the tables". An error before the body ran is never the request's: the message
  waits, the reason names the DSN.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hsb.service.api import ServiceError, ServiceUnavailable, load_service
from hsb.service.db import PostgresDatabase, dsn_problem, open_database
from hsb.service.ledger import LedgerService
from hsb.service.once import ExactlyOnce
from tests.support.pg import PgServer, fresh
from tests.support.pgfakes import FakePool

pytestmark = pytest.mark.timeout(60)

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg (a dependency of hsb) is not installed")

BAD = [
    ("host=/run/postgresql port=5432 user=hsb dbname=hsb", "libpq's keyword form, which asyncpg does not read: write it as a URL"),
    ("mysql://db.example/hsb", 'scheme is expected to be either "postgresql" or "postgres"'),
    ("postgresql://db.example:99999/hsb", "port 99999 is not a port (1..65535)"),
    (
        "postgresql://hsb@db.example/hsb?sslmode=sometimes",
        "sslmode 'sometimes' is not one of disable, allow, prefer, require, verify-ca, verify-full",
    ),
]
GOOD = [
    "postgresql://hsb@db.example/hsb",
    "postgres://u:p@h1:5432,h2:5433/db",
    "postgresql://hsb@/hsb?host=/run/postgresql&port=5432",
    # files are the hsbd user's, read when it connects: not looked for by whoever runs the check
    # (root here, whose ~/.postgresql/root.crt does not exist)
    "postgresql://hsb@db.example/hsb?sslmode=verify-full",
    "postgresql://hsb@db.example/hsb?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
    "postgresql://hsb@db.example/hsb?sslmode=require&sslcert=/nonexistent/c.pem&sslkey=/nonexistent/k.pem",
]


@pytest.mark.parametrize(("dsn", "says"), BAD)
def test_a_dsn_asyncpg_cannot_use_is_the_configs_error_naming_the_url_form(dsn: str, says: str) -> None:
    assert says in dsn_problem(dsn)
    with pytest.raises(ServiceError) as exc:
        load_service("ledger", "a", {"dsn": dsn})
    text = str(exc.value)
    assert text.startswith("service 'ledger': bad [service_options]: dsn") and says in text, text
    assert "postgresql://USER@/DATABASE?host=/DIR&port=PORT" in text and "\n" not in text
    # a service of one's own that opens it (docs/ledger.md's example) is refused at its build too
    with pytest.raises(ValueError, match="postgresql://USER"):
        open_database(dsn)


def test_the_refusal_does_not_quote_the_dsn_which_may_hold_a_password() -> None:
    assert "s3cret" not in dsn_problem("host=db user=hsb password=s3cret")
    assert "s3cret" not in dsn_problem("postgresql://hsb:s3cret@db:70000/hsb")


@pytest.mark.parametrize("dsn", GOOD)
def test_a_dsn_asyncpg_takes_is_taken(dsn: str) -> None:
    assert dsn_problem(dsn) == ""
    assert isinstance(load_service("ledger", "a", {"dsn": dsn}), LedgerService)


def test_a_parser_not_the_one_written_against_checks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncpg's parser is private: one that refuses every DSN (a new required argument, another
    meaning) must not stop every hsbd from starting; the connect says what is wrong, as before."""
    from asyncpg import connect_utils

    def refuses_all(**kw: object) -> None:
        raise ValueError("a parser of another asyncpg")

    monkeypatch.setattr(connect_utils, "_parse_connect_dsn_and_args", refuses_all)
    assert dsn_problem("postgresql://hsb@db.example/hsb") == ""
    assert dsn_problem("postgresql://db.example:99999/hsb") == ""  # (nothing checked: not refused either)


def test_hsbd_check_config_refuses_a_keyword_dsn_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x" * 64)
    (tmp_path / "secret").chmod(0o600)
    cfg = tmp_path / "host.toml"
    cfg.write_text(
        '[host]\nname = "a"\npeer = "127.0.0.1:7102"\npeer_listen = "127.0.0.1:7101"\ncp = "127.0.0.1:7100"\n'
        'admin_listen = "127.0.0.1:7103"\nsecret_file = "secret"\nservice = "ledger"\n'
        '[takeover]\npath = "t.dat"\nrecords = 64\n'
        '[service_options]\ndsn = "host=/run/postgresql port=5432 user=hsb dbname=hsb"\n'
    )
    r = subprocess.run([sys.executable, "-m", "hsb.host", "--config", str(cfg), "--check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 78 and "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if "dsn" in line]
    assert len(lines) == 1 and "libpq's keyword form" in lines[0] and "write it as a URL" in lines[0], r.stderr


def test_hsbterm_load_refuses_a_books_dsn_it_cannot_use_before_the_run() -> None:
    from hsb.term.main import main

    r = CliRunner().invoke(
        main,
        [
            "load",
            "--cp",
            "127.0.0.1:1",
            "-n",
            "1",
            "--rate",
            "1",
            "--duration",
            "1",
            "--connect-timeout",
            "1",
            "--workload",
            "ledger",
            "--books-dsn",
            "host=/x port=5",
        ],
    )
    assert r.exit_code == 2 and "--books-dsn" in r.output and "libpq's keyword form" in r.output, r.output


async def test_a_connection_refused_before_the_body_ran_holds_the_message() -> None:
    """A server setting refused at connect (42704), said by a pool that never hands a connection
    over: the body never ran, so it is not the request's error."""
    db = PostgresDatabase("postgresql://unused")
    db._pool = FakePool(acquire_fails=asyncpg.exceptions.UndefinedObjectError('unrecognized configuration parameter "connect_timeout"'))
    ran = False
    with pytest.raises(ServiceUnavailable) as exc:
        async with db.transaction():
            ran = True
    assert not ran
    assert "no transaction could begin" in str(exc.value) and "[service_options] dsn" in str(exc.value)
    assert "connect_timeout, to the server as a setting: remove it" in str(exc.value)


async def test_a_connection_refused_otherwise_holds_the_message_without_the_dsn_parameter_hint() -> None:
    """Failing for another reason before the body (the driver's own ValueError, as its pool may
    raise): held all the same, and not said to be a query parameter of the DSN."""
    db = PostgresDatabase("postgresql://unused")
    db._pool = FakePool(acquire_fails=ValueError("a setting the driver refuses"))
    with pytest.raises(ServiceUnavailable) as exc:
        async with db.transaction():
            pass
    assert "no transaction could begin" in str(exc.value) and "a setting the driver refuses" in str(exc.value), exc.value
    assert "connect_timeout" not in str(exc.value), exc.value


async def test_a_dsn_query_parameter_the_server_refuses_holds_messages_not_error_replies(pg: PgServer) -> None:
    """On a real server: a service of one's own (ExactlyOnce, as docs/ledger.md's example) and
    the ledger, both with libpq's `connect_timeout` in the DSN, which asyncpg sends on as a
    server setting: the message waits (ServiceUnavailable) with the DSN named, nothing applied."""
    base = fresh(pg)
    dsn = base + ("&" if "?" in base else "?") + "connect_timeout=10"
    db = open_database(dsn)
    once = ExactlyOnce(db)
    applied: list[Any] = []

    async def effect(tx: Any) -> str:
        applied.append(tx)
        return "done"

    try:
        with pytest.raises(ServiceUnavailable, match=r"connect_timeout.*\[service_options\] dsn"):
            await once.run("T1", 1, False, effect)
    finally:
        await db.close()
    assert applied == []
    ledger = LedgerService("a", dsn=dsn)
    try:
        with pytest.raises(ServiceUnavailable) as exc:
            await ledger.handle("T1", 1, '{"op":"balance","account":"alice"}', False)
        assert "[service_options] dsn" in str(exc.value) and "must own" not in str(exc.value), exc.value
    finally:
        await ledger.close()
