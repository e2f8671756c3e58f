"""The ledger's bounds, exactly at them (hsb.service.ledger, in process on SQLite): the longest
account name and the largest amount are taken and one past refused, a withdrawal or transfer of
the whole balance goes through, a credit up to the balance limit goes through; and the options'
kinds and bounds are checked, each wrong one said with its key."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hsb.service.ledger import MAX_ACCOUNT, MAX_AMOUNT, MAX_BALANCE, BadRequest, LedgerService, option_problems, parse

pytestmark = pytest.mark.timeout(30)


def test_requests_exactly_at_the_bounds_are_taken_and_one_past_refused() -> None:
    assert parse(json.dumps({"op": "open", "account": "x" * MAX_ACCOUNT})).account == "x" * MAX_ACCOUNT
    with pytest.raises(BadRequest, match="longer than"):
        parse(json.dumps({"op": "open", "account": "x" * (MAX_ACCOUNT + 1)}))
    assert parse(json.dumps({"op": "deposit", "account": "a", "amount": MAX_AMOUNT})).amount == MAX_AMOUNT
    assert parse(json.dumps({"op": "deposit", "account": "a", "amount": 1})).amount == 1
    for amount in (MAX_AMOUNT + 1, 0):
        with pytest.raises(BadRequest, match="amount"):
            parse(json.dumps({"op": "withdraw", "account": "a", "amount": amount}))
    assert parse(b'{"op":"balance","account":"a"}').op == "balance"  # (bytes: UTF-8 text)
    with pytest.raises(BadRequest, match="unknown op") as exc:  # echoed back cut short
        parse(json.dumps({"op": "x" * 100}))
    assert len(str(exc.value)) < 150, exc.value


async def test_the_whole_balance_moves_and_a_credit_reaches_the_limit_exactly(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    s = LedgerService("host-a", sqlite=str(path))
    ids = iter(range(1, 100))

    async def call(req: dict[str, Any]) -> dict[str, Any]:
        return json.loads(await s.handle("T1", next(ids), json.dumps(req), False))  # type: ignore[no-any-return]

    try:
        for name in ("a", "b", "c"):
            await call({"op": "open", "account": name})
        await call({"op": "deposit", "account": "a", "amount": 50})
        assert await call({"op": "withdraw", "account": "a", "amount": 20}) == {"ok": True, "balance": 30}
        assert await call({"op": "transfer", "from": "a", "to": "b", "amount": 30}) == {"ok": True}
        assert await call({"op": "withdraw", "account": "b", "amount": 30}) == {"ok": True, "balance": 0}
        await call({"op": "deposit", "account": "b", "amount": 10})
        with sqlite3.connect(path, isolation_level=None) as c:
            c.execute("UPDATE ledger_accounts SET balance = ? WHERE account = 'c'", (MAX_BALANCE - 10,))
        assert await call({"op": "transfer", "from": "b", "to": "c", "amount": 10}) == {"ok": True}
        assert await call({"op": "balance", "account": "c"}) == {"ok": True, "balance": MAX_BALANCE}
        assert await call({"op": "transfer", "from": "nobody", "to": "c", "amount": 1}) == {"ok": False, "error": "no_such_account"}
    finally:
        await s.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("pool_size", 0),
        ("pool_size", True),
        ("pool_size", 2.0),
        ("command_timeout", 0),
        ("tx_idle_timeout", float("nan")),
        ("busy_timeout", -1),
        ("busy_timeout", float("inf")),
        ("keep_hours", float("nan")),
        ("keep_last", "256"),
        ("idempotency", "no"),
        ("dsn", 5),
    ],
)
def test_an_option_of_the_wrong_kind_is_said_with_its_key(option: str, value: Any) -> None:
    assert [p.split(" ")[0] for p in option_problems({option: value})] == [option]


def test_options_at_their_bounds_are_taken(tmp_path: Path) -> None:
    assert option_problems({"pool_size": 1, "command_timeout": 0.001, "busy_timeout": 0, "logon_ms": 0, "keep_last": -1, "idempotency": False}) == []
    s = LedgerService("host-a", sqlite=str(tmp_path / "l.sqlite"), keep_hours=1, keep_last=1)
    assert s.once.keep == 3600.0 and s.once.keep_last == 1  # (hours: the idempotency records' seconds)
    with pytest.raises(TypeError, match="keep_hours must be at least 1"):
        LedgerService("host-a", sqlite=str(tmp_path / "l.sqlite"), keep_hours=0.99)


async def test_without_idempotency_records_a_repeat_is_applied_again(tmp_path: Path) -> None:
    """`idempotency = false` (measurement only) really runs effects alone: what it measures."""
    s = LedgerService("host-a", sqlite=str(tmp_path / "l.sqlite"), idempotency=False)
    try:
        await s.handle("T1", 1, '{"op":"open","account":"a"}', False)
        deposit = '{"op":"deposit","account":"a","amount":5}'
        assert json.loads(await s.handle("T1", 2, deposit, False))["balance"] == 5
        assert json.loads(await s.handle("T1", 2, deposit, True))["balance"] == 10
    finally:
        await s.close()
