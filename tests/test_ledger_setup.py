"""The ledger's table setup at the first messages of a new active (hsb.service.ledger): one run
shared by every message that comes while it runs. Each terminal's first message after a
failover ran the whole setup again (four transactions; on PostgreSQL a pool connection and the
advisory lock each, so a thousand terminals hit the pool's 5 s wait and said "database busy").
A setup that fails is tried again by the next message (the database may be down at first)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from hsb.service.api import RetryTransaction, ServiceUnavailable
from hsb.service.ledger import LedgerService
from tests.support import pg as pgsupport

pytestmark = pytest.mark.timeout(120)


def counted(svc: LedgerService) -> list[int]:
    """How many times `svc` ran its setup (one entry per run)."""
    runs: list[int] = []
    real = svc._setup

    async def setup() -> None:
        runs.append(1)
        await real()

    svc._setup = setup  # type: ignore[method-assign]
    return runs


async def first_burst(svc: LedgerService, n: int) -> None:
    runs = counted(svc)
    replies = await asyncio.wait_for(
        asyncio.gather(*(svc.handle(f"T{i}", 1, json.dumps({"op": "open", "account": f"a{i}"}), False) for i in range(n))), 60
    )
    assert len(runs) == 1, f"the setup ran {len(runs)} times for {n} first messages"
    assert [json.loads(r) for r in replies] == [{"ok": True, "balance": 0}] * n
    assert svc.ready
    # and every account is there, each once
    replies = await asyncio.gather(*(svc.handle(f"T{i}", 2, json.dumps({"op": "balance", "account": f"a{i}"}), False) for i in range(n)))
    assert [json.loads(r) for r in replies] == [{"ok": True, "balance": 0}] * n and len(runs) == 1


async def test_the_first_messages_of_many_terminals_share_one_setup_on_sqlite(tmp_path: Path) -> None:
    svc = LedgerService("host-b", sqlite=str(tmp_path / "books.sqlite"))
    try:
        await first_burst(svc, 300)
    finally:
        await svc.close()


async def test_the_first_messages_of_many_terminals_share_one_setup_on_postgresql(pg: pgsupport.PgServer) -> None:
    svc = LedgerService("host-b", dsn=pg.createdb(f"setup{os.getpid()}_{time.monotonic_ns()}"))
    try:
        await first_burst(svc, 200)
    finally:
        await svc.close()


async def test_a_setup_that_failed_is_tried_again_by_the_next_message(tmp_path: Path) -> None:
    """The database not there at the first burst: every message waiting for that one setup is
    held (ServiceUnavailable, retried by the host), and the next message sets up anew."""
    svc = LedgerService("host-b", sqlite=str(tmp_path / "books.sqlite"))
    runs = counted(svc)
    real = svc.db.setup
    calls = 0

    async def down_at_first(ddl: list[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ServiceUnavailable("database unavailable: not there yet")
        await real(ddl)

    svc.db.setup = down_at_first  # type: ignore[method-assign]
    try:
        msgs = [svc.handle(f"T{i}", 1, json.dumps({"op": "open", "account": f"a{i}"}), False) for i in range(20)]
        results = await asyncio.wait_for(asyncio.gather(*msgs, return_exceptions=True), 30)
        assert all(isinstance(r, ServiceUnavailable) for r in results), results
        assert len(runs) == 1 and not svc.ready
        # the host hands them over again (marked redelivered): one new setup, for all of them
        replies = await asyncio.wait_for(
            asyncio.gather(*(svc.handle(f"T{i}", 1, json.dumps({"op": "open", "account": f"a{i}"}), True) for i in range(20))), 30
        )
        assert [json.loads(r) for r in replies] == [{"ok": True, "balance": 0}] * 20
        assert len(runs) == 2 and svc.ready
    finally:
        await svc.close()


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (RetryTransaction("deadlock detected"), "database busy while setting up"),
        (PermissionError("the role may not create tables"), "the database role must own, or be able to create and alter"),
        (ServiceUnavailable("database unavailable: not there yet"), "not there yet"),
    ],
)
async def test_a_setup_that_fails_holds_the_message_and_says_what_to_do(tmp_path: Path, failure: Exception, said: str) -> None:
    """Another host's transaction in the way is busy, not a role lacking rights (that fix would
    send the operator the wrong way); a database not there is said as it is; none is an error reply."""
    svc = LedgerService("host-b", sqlite=str(tmp_path / "books.sqlite"))

    async def fails(ddl: list[str]) -> None:
        raise failure

    svc.db.setup = fails  # type: ignore[method-assign]
    try:
        with pytest.raises(ServiceUnavailable) as exc:
            await svc.handle("T1", 1, '{"op":"open","account":"a"}', False)
        assert said in str(exc.value), exc.value
        if not isinstance(failure, RetryTransaction):
            assert "busy" not in str(exc.value)
    finally:
        await svc.close()
