"""The ledger's row locks on PostgreSQL (hsb.service.ledger): withdrawals from one account at once
each read the balance the one before left (SELECT ... FOR UPDATE), so no two are told the same
balance, none overdraws, and each refusal is for the balance then. PostgreSQL's behaviour: on
SQLite one transaction runs at a time."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from hsb.service.ledger import LedgerService
from tests.support import pg as pgsupport

pytestmark = pytest.mark.timeout(120)


async def test_withdrawals_from_one_account_at_once_each_see_the_last_ones_balance(pg: pgsupport.PgServer) -> None:
    s = LedgerService("host-a", dsn=pg.createdb(f"locks{os.getpid()}"), pool_size=20)
    try:
        await s.handle("setup", 1, '{"op":"open","account":"a"}', False)
        await s.handle("setup", 2, '{"op":"deposit","account":"a","amount":100}', False)
        withdraw = '{"op":"withdraw","account":"a","amount":10}'
        replies = [json.loads(r) for r in await asyncio.gather(*(s.handle(f"T{i}", 1, withdraw, False) for i in range(20)))]
        told = sorted(r["balance"] for r in replies if r["ok"])
        assert told == list(range(0, 100, 10)), replies  # each its own balance: none read it stale
        assert [r for r in replies if not r["ok"]] == [{"ok": False, "error": "insufficient_funds", "balance": 0}] * 10
        assert json.loads(await s.handle("setup", 3, '{"op":"balance","account":"a"}', False))["balance"] == 0
    finally:
        await s.close()
