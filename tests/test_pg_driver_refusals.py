"""A call asyncpg refuses on a connection that is still open (hsb.service.db.classify_pg) is the
service's own bug: an error reply, as the same bug gets on SQLite. It was held as "database
unreachable", retried for ever, every later message of its terminal waiting behind it and
status blaming the database. An InterfaceError on a connection that is gone stays unavailable.
On a real, throwaway PostgreSQL server (tests/support/pg.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from hsb.host.delivery import Delivery
from hsb.service.api import ServiceUnavailable
from hsb.service.db import Database, Tx, open_database
from hsb.service.once import ExactlyOnce
from tests.support import pg as pgsupport

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def db(pg: pgsupport.PgServer) -> AsyncIterator[Database]:
    d = open_database(pg.createdb(f"refusals{os.getpid()}_{time.monotonic_ns()}"))
    yield d
    await d.close()


class OneEffect:
    """A service whose every message runs `effect` exactly once (hsb.service.once)."""

    def __init__(self, db: Database, effect: Callable[[Tx], Awaitable[str]]) -> None:
        self.once = ExactlyOnce(db)
        self.effect = effect
        self.calls = 0

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        self.calls += 1
        return await self.once.run(terminal, message_id, redelivered, self.effect)


async def _reply(svc: OneEffect) -> tuple[str, Delivery]:
    sent: list[dict[str, Any]] = []
    d = Delivery(svc, lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 1, "x", False)
    deadline = time.monotonic() + 20
    while not sent:
        assert time.monotonic() < deadline, f"no reply: the message is held ({d.health.as_dict()})"
        await asyncio.sleep(0.01)
    d.cancel()
    return str(sent[0]["data"]), d


async def too_few_arguments(tx: Tx) -> str:
    return str(await tx.fetchval("SELECT $1::int + $2::int", 1))


async def two_statements_at_once(tx: Tx) -> str:
    await asyncio.gather(tx.fetchval("SELECT pg_sleep(0.05)"), tx.fetchval("SELECT 1"))
    return "never"


@pytest.mark.parametrize("effect", [too_few_arguments, two_statements_at_once])
async def test_a_call_the_driver_refuses_on_an_open_connection_gets_an_error_reply(db: Database, effect: Any) -> None:
    svc = OneEffect(db, effect)
    await svc.once.setup()
    reply, d = await _reply(svc)
    assert reply == "error: InterfaceError", reply
    assert svc.calls == 1 and d.health.state == "ok" and d.health.retries == 0
    async with db.transaction() as tx:  # the database and the pool are fine afterwards
        assert await tx.fetchval("SELECT $1::int + $2::int", 1, 2) == 3


async def test_a_statement_on_a_connection_that_is_gone_is_still_unavailable(db: Database) -> None:
    """The server ended the connection under the transaction (a restart, an administrator's
    pg_terminate_backend): the next statement's InterfaceError ("connection is closed") is the
    database's, held and retried, not an error reply."""
    once = ExactlyOnce(db)
    await once.setup()

    async def cut_off(tx: Tx) -> str:
        pid = await tx.fetchval("SELECT pg_backend_pid()")
        async with db.transaction() as other:
            await other.fetchval("SELECT pg_terminate_backend($1)", pid)
        with contextlib.suppress(Exception):  # (the connection closing under it: an InternalClientError)
            await tx.fetchval("SELECT 1")
        return str(await tx.fetchval("SELECT 1"))  # closed (or its proxy let go of it) now: InterfaceError

    with pytest.raises(ServiceUnavailable, match=r"unreachable: InterfaceError: .*(connection is closed|released back to the pool)"):
        await once.run("T1", 1, False, cut_off)
